"""LoRA / QLoRA fine-tuning that checks its own training data before spending compute (finetune.examples), trains
with an exactly resumable Trainer (finetune.trainer), keeps the checkpoint that is best on validation and writes
the adapter with its metrics.
"""
# torch, transformers and peft are imported where used (seconds each): tests and the plan read this
# module's helpers without loading them.
from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import time
from pathlib import Path

from icdstudy.core import machine
from icdstudy.core.io import replace_tree
from icdstudy.finetune.examples import PreflightError, build_dataset, collator, preflight
from icdstudy.finetune.trainer import (TrainingSanityError, canonical_adapter_config, curves_callback,
                                       exact_match_probe, kept_evaluation, last_complete_checkpoint,
                                       resumable_trainer, sanity_callback)
from icdstudy.models.modeling import load_model, load_tokenizer, resolve_dtype
from icdstudy.neighbours.shortlist import SHORTLIST

__all__ = ["PreflightError", "TrainingSanityError", "fine_tune"]
# Non-reentrant activation checkpointing: works with frozen inputs (LoRA), with 4-bit weights and
# under DDP with ddp_find_unused_parameters=False, where the reentrant default fails with "Expected
# to mark a variable ready only once"; it is what torch, transformers and peft recommend.
NON_REENTRANT = {"use_reentrant": False}
# The DVCLive series the stage keeps as its training curves (dvc.yaml plots); the rest of what
# DVCLive writes (its summary, params, runtimes, FLOPs) stays in the work folder and goes with it.
CURVES = ("loss.tsv", "eval/loss.tsv", "eval/exact_match.tsv", "learning_rate.tsv", "grad_norm.tsv")
# What a checkpoint is kept by (recipe.select_by): the metric the Trainer compares, and whether higher is better.
SELECT_BY = {"exact_match": ("eval_exact_match", True), "loss": ("eval_loss", False)}


# --- the run ----------------------------------------------------------------------------
def _check_config(cfg: dict) -> None:
    if cfg["save_steps"] % cfg["eval_steps"]:
        raise PreflightError(f"params.yaml: recipe.save_steps ({cfg['save_steps']}) must be a multiple of "
                             f"recipe.eval_steps ({cfg['eval_steps']}), so the best checkpoint is one that was evaluated")


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _code_version() -> str:
    """Hash of the modules that decide what a training step and the checkpoint probe compute: checkpoints
    written by other code are not resumed."""
    library = Path(__file__).parent.parent
    return _fingerprint(*[(library / f).read_text() for f in (
        "finetune/training.py", "finetune/examples.py", "finetune/trainer.py", "models/modeling.py",
        "inference/prompts.py", "inference/evaluation.py", "inference/generation.py")])


def _training_args(cfg: dict, work_dir: Path, bf16: bool, cuda: bool):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(work_dir), per_device_train_batch_size=cfg["batch_size"],
        per_device_eval_batch_size=cfg.get("eval_batch_size") or cfg["batch_size"],
        gradient_accumulation_steps=cfg["grad_accum"], learning_rate=cfg["learning_rate"],
        num_train_epochs=cfg["num_epochs"], max_steps=cfg.get("max_steps") or -1, warmup_steps=cfg["warmup_steps"], weight_decay=cfg["weight_decay"],
        max_grad_norm=cfg["max_grad_norm"], lr_scheduler_type=cfg["lr_scheduler"], logging_steps=cfg["logging_steps"],
        eval_strategy="steps", eval_steps=cfg["eval_steps"], save_strategy="steps", save_steps=cfg["save_steps"],
        save_total_limit=cfg["save_total_limit"], load_best_model_at_end=True,
        metric_for_best_model=SELECT_BY[cfg["select_by"]][0], greater_is_better=SELECT_BY[cfg["select_by"]][1], bf16=bf16, tf32=cuda or None, seed=cfg["seed"], data_seed=cfg["seed"],
        train_sampling_strategy="group_by_length", gradient_checkpointing=cfg["gradient_checkpointing"],
        gradient_checkpointing_kwargs=NON_REENTRANT,
        report_to="none", remove_unused_columns=False, use_cpu=not cuda, dataloader_num_workers=0,
        disable_tqdm=False, ddp_find_unused_parameters=False,
        restore_callback_states_from_checkpoint=True,  # early stopping's patience counter survives a resume
    )


def _check_decoding(decode: bool, decoding) -> None:
    if decode and (decoding is None or not decoding.labels):
        raise PreflightError("recipe.select_by: exact_match decodes the validation rows: pass a Decoding with the "
                             "label set and settings (the train stage does), or set recipe.select_by: loss")


def _run_id(cfg: dict, entry: dict, input_kind: str, max_input_tokens: int | None, model_fingerprint: str,
            train_rows: list[dict], val_rows: list[dict], decoding) -> str:
    """Everything that decides the adapter: a checkpoint or a finished run is only reused under the same id.
    ``decoding``: None where the run does not decode (select_by: loss)."""
    return _fingerprint(cfg, entry, input_kind, max_input_tokens, model_fingerprint, _code_version(),
                        decoding.fingerprint() if decoding else None,
                        [(r["id"], r["code"], r["input"], r.get(SHORTLIST)) for r in train_rows],
                        [(r["id"], r.get(SHORTLIST)) for r in val_rows])


def _finished_run(done_file, adapter_dir: Path, run_id: str) -> dict | None:
    """What ``done_file`` recorded for a finished run with this id whose adapter is still in place."""
    if done_file and Path(done_file).exists() and (adapter_dir / "adapter_config.json").exists():
        done = json.loads(Path(done_file).read_text())
        if done.get("run") == run_id:
            return done
    return None


def _resume_point(args, work_dir: Path, run_id: str, main: bool) -> tuple[str | None, dict]:
    """The checkpoint to resume from (None: train afresh) and its trainer state. ``work_dir`` is emptied
    first where its checkpoints were written by a run with other settings."""
    stamp = work_dir / "run.json"
    with args.main_process_first(local=False, desc="checkpoint check"):
        if main and stamp.exists() and json.loads(stamp.read_text()).get("run") != run_id:
            shutil.rmtree(work_dir)
        if main:
            work_dir.mkdir(parents=True, exist_ok=True)
            stamp.write_text(json.dumps({"run": run_id}))
        last = last_complete_checkpoint(work_dir, delete_partial=main)
    start = {"epoch": 0.0, "global_step": 0}
    if last:
        start = json.loads((Path(last) / "trainer_state.json").read_text())
        print(f"training: resuming from {last} (epoch {start['epoch']:.2f})")
    return last, start


def _lora_model(base_dir, entry: dict, cfg: dict, allow_cpu_4bit: bool, cuda: bool):
    """The base model with fresh LoRA layers, and whether its weights are 4-bit."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training


    # On CPU, bf16 autocast over float32 weights is the fast mix: with bf16 weights the
    # element-wise ops (norms, activations, residuals) run in emulated bf16 (docs/benchmarks.md).
    model = load_model(base_dir, entry, allow_cpu_4bit=allow_cpu_4bit, dtype=None if cuda else torch.float32)
    quantized = getattr(model, "is_loaded_in_4bit", False)
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg["gradient_checkpointing"],
                                                gradient_checkpointing_kwargs=NON_REENTRANT)
    model = get_peft_model(model, LoraConfig(r=cfg["lora_r"], lora_alpha=cfg["lora_alpha"], lora_dropout=cfg["lora_dropout"],
                                             target_modules=list(cfg["target_modules"]), task_type="CAUSAL_LM"))
    return model, quantized


def _checked_datasets(tokenizer, train_rows: list[dict], val_rows: list[dict], input_kind: str,
                      max_input_tokens: int | None, cfg: dict):
    """The training and validation sets and their collator, once the first training batch passes preflight."""
    train_ds = build_dataset(tokenizer, train_rows, input_kind, max_input_tokens, cfg["loss_on_prompt"])
    val_ds = build_dataset(tokenizer, val_rows, input_kind, max_input_tokens, cfg["loss_on_prompt"])
    collate = collator(tokenizer, answer_logits_only=not cfg["loss_on_prompt"])
    k = min(cfg["batch_size"], len(train_ds))
    preflight(collate([train_ds[i] for i in range(k)]), [r["code"] for r in train_rows[:k]], tokenizer,
              train_ds.column_names, cfg["loss_on_prompt"])
    return train_ds, val_ds, collate


def _callbacks(cfg: dict, live: Path, live_dir, main: bool, resumed_step: int, extra_callbacks) -> list:
    from transformers import EarlyStoppingCallback

    callbacks = [EarlyStoppingCallback(cfg["early_stopping_patience"], cfg["early_stopping_threshold"]),
                 sanity_callback(cfg["sanity_steps"])]
    if live_dir and main:
        try:
            callbacks.append(curves_callback(live, resumed_step))
        except ImportError:  # a bare CUDA image (the GPU check) trains without curves
            print(f"training: DVCLive is not installed; no training curves in {live_dir}")
    return callbacks + list(extra_callbacks)


def _save_adapter(model, tokenizer, adapter_dir: Path) -> None:
    """Written next to ``adapter_dir`` and renamed into place: a kill leaves the old adapter or the new one."""
    adapter_tmp = adapter_dir.with_name(adapter_dir.name + ".tmp")
    shutil.rmtree(adapter_tmp, ignore_errors=True)
    model.save_pretrained(adapter_tmp)
    canonical_adapter_config(adapter_tmp / "adapter_config.json")
    tokenizer.save_pretrained(adapter_tmp)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    adapter_tmp.rename(adapter_dir)


def loss_spike(log_history: list[dict], warmup_steps: int) -> float | None:
    """The largest ratio of a logged training loss after warmup to the lowest logged before it: above 2, the run
    diverged for a while (the demo's recipe is held below it on every CPU kind). None with too few points."""
    logged = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    lowest = list(itertools.accumulate((loss for _, loss in logged), min))
    ratios = [loss / lowest[i - 1] for i, (step, loss) in enumerate(logged)
              if i and step > warmup_steps and lowest[i - 1] > 0]
    return round(max(ratios), 3) if ratios else None


def _run_metrics(trainer, output, kept: dict, cfg: dict, start: dict, train_ds, trainable: int, quantized,
                 t0: float) -> dict:
    """The run's metrics from the Trainer's state and ``output`` (what trainer.train returned)."""
    import torch


    state = trainer.state
    epochs = state.epoch or 0.0
    tokens_per_epoch = sum(len(x) for x in train_ds["input_ids"])
    runtime = output.metrics.get("train_runtime") or (time.time() - t0)
    logged = [e["loss"] for e in state.log_history if "loss" in e]  # the whole run, resumed or not
    return {
        "train_loss": round(float(sum(logged) / len(logged)), 4) if logged else round(float(output.training_loss), 4),
        "eval_loss": round(float(kept["eval_loss"]), 4),  # at the kept checkpoint
        "select_by": cfg["select_by"],
        "best_step": kept["step"],
        "best_val_exact_match": kept.get("eval_exact_match"),
        "best_checkpoint": Path(state.best_model_checkpoint or "").name or None,
        "steps": state.global_step,
        "resumed_from_step": start["global_step"],
        "epochs": round(float(epochs), 3),
        "trainable_params": trainable,
        "train_tokens_per_s": round(tokens_per_epoch * (epochs - start["epoch"]) / runtime, 1) if runtime else None,
        "peak_mem_mb": machine.peak_memory_mb(),
        "quantized_4bit": bool(quantized),
        "num_processes": trainer.args.world_size,
        "loss_spike": loss_spike(state.log_history, trainer.args.get_warmup_steps(state.max_steps)),  # a share too
        "cpu_kernels": None if torch.cuda.is_available() else machine.cpu_kernels(),
        "seed": cfg["seed"],
        "wall_s": round(time.time() - t0, 1),
    }


def fine_tune(base_dir, entry: dict, train_rows: list[dict], val_rows: list[dict], cfg: dict, input_kind: str,
              max_input_tokens: int | None, adapter_dir, work_dir, live_dir=None, allow_cpu_4bit: bool = False,
              model_fingerprint: str = "", done_file=None, extra_callbacks=(), decoding=None) -> dict:
    """Train a LoRA adapter on ``train_rows``, keep the checkpoint that is best on ``val_rows``, return metrics.

    ``cfg["select_by"]``: exact_match keeps the checkpoint with the highest validation exact match, the
    validation rows decoded at every evaluation as predict@ decodes them (``decoding``, an
    inference.evaluation.Decoding; exact_match_probe); loss keeps the lowest validation loss. Early stopping watches
    the same metric.

    Checkpoints go to ``work_dir``; a rerun with the same data, model and params resumes from
    the last one and ends with the same adapter bytes as an uninterrupted run (resumable_trainer).
    The best adapter and the tokenizer are saved to ``adapter_dir``; DVCLive logs into
    ``work_dir/live`` and the curves (CURVES) are copied to ``live_dir`` at the end. Under
    ``accelerate launch`` (recipe.num_processes > 1) the Trainer runs data-parallel; only the
    first process writes files and gets the metrics, the others get None. With ``done_file``
    a finished run records its metrics there, and a rerun with the same settings whose adapter
    is still in place returns them without training (a multi-seed stage resumes per seed).
    ``extra_callbacks`` are TrainerCallbacks added to the run (tests record losses with them).
    """
    import torch


    _check_config(cfg)
    t0 = time.time()
    work_dir, adapter_dir = Path(work_dir), Path(adapter_dir)
    cuda = torch.cuda.is_available()
    # bf16 autocast wherever the hardware has it; not over 4-bit weights on CPU (test-only path).
    bf16 = resolve_dtype(entry.get("dtype", "auto")) == torch.bfloat16 and (cuda or not entry.get("load_in_4bit"))
    args = _training_args(cfg, work_dir, bf16, cuda)
    main = args.process_index == 0  # under `accelerate launch`, one process of several writes files
    decode = cfg["select_by"] == "exact_match"
    _check_decoding(decode, decoding)
    run_id = _run_id(cfg, entry, input_kind, max_input_tokens, model_fingerprint, train_rows, val_rows,
                     decoding if decode else None)
    done = _finished_run(done_file, adapter_dir, run_id)
    if done is not None:
        print(f"training: {adapter_dir} was already trained with these settings; kept")
        return done["result"] if main else None
    last, start = _resume_point(args, work_dir, run_id, main)

    torch.manual_seed(cfg["seed"])
    tokenizer = load_tokenizer(base_dir, entry)
    model, quantized = _lora_model(base_dir, entry, cfg, allow_cpu_4bit, cuda)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    train_ds, val_ds, collate = _checked_datasets(tokenizer, train_rows, val_rows, input_kind, max_input_tokens, cfg)

    live = work_dir / "live"
    callbacks = _callbacks(cfg, live, live_dir, main, start["global_step"], extra_callbacks)
    probe = exact_match_probe(tokenizer, val_rows, decoding, input_kind, entry) if decode else None
    trainer = resumable_trainer(exact_match=probe, model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                                data_collator=collate, processing_class=tokenizer, callbacks=callbacks)
    output = trainer.train(resume_from_checkpoint=last)
    if not main:
        return None
    kept = kept_evaluation(trainer.state)
    _save_adapter(trainer.model, tokenizer, adapter_dir)
    if live_dir and live.exists():  # absent where DVCLive is not installed
        replace_tree(live, live_dir, only=[f"plots/metrics/{name}" for name in CURVES])
    shutil.rmtree(work_dir)  # checkpoints only serve an interrupted run; a forced rerun trains afresh

    result = _run_metrics(trainer, output, kept, cfg, start, train_ds, trainable, quantized, t0)
    if done_file:
        Path(done_file).write_text(json.dumps({"run": run_id, "result": result}))
    return result
