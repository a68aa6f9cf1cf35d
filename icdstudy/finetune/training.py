"""LoRA / QLoRA fine-tuning that checks its own training data before spending compute.

Examples come from the same prompt builder as evaluation. Labels are built from lengths, not
from the pad id: the loss covers the answer (dotted code + EOS) only, and EOS stays a label even
where pad == eos (SmolLM2, Llama-3), so the model learns to stop. ``preflight`` inspects the
first collated batch for each failure of the seed study's T5 diary (labels padded instead of
masked, prompt tokens in the loss, string columns in the data, a template never applied) and
stops with one message before the first optimizer step.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path

from icdstudy.inference import prompts
from icdstudy.core.io import replace_tree
from icdstudy.neighbours.shortlist import LISTED

IGNORE = -100
MODEL_COLUMNS = {"input_ids", "labels"}
# By train.sanity_steps the loss must be this much (relative) below its first logged value:
# batch-to-batch noise alone moves it by well under 1%.
SANITY_MIN_DROP = 0.02
# Non-reentrant activation checkpointing: works with frozen inputs (LoRA), with 4-bit weights and
# under DDP with ddp_find_unused_parameters=False, where the reentrant default fails with "Expected
# to mark a variable ready only once"; it is what torch, transformers and peft recommend.
NON_REENTRANT = {"use_reentrant": False}
# The DVCLive series the stage keeps as its training curves (dvc.yaml plots); the rest of what
# DVCLive writes (its summary, params, runtimes, FLOPs) stays in the work folder and goes with it.
CURVES = ("loss.tsv", "eval/loss.tsv", "eval/exact_match.tsv", "learning_rate.tsv", "grad_norm.tsv")
# What a checkpoint is kept by (train.select_by): the metric the Trainer compares, and whether higher is better.
SELECT_BY = {"exact_match": ("eval_exact_match", True), "loss": ("eval_loss", False)}


class PreflightError(Exception):
    """Training data would teach the wrong thing; the message says what and how to fix it."""


class TrainingSanityError(Exception):
    """Training diverged (NaN) or did not learn in its first steps."""


# --- examples ---------------------------------------------------------------------------
def build_example(tokenizer, row: dict, input_kind: str, max_input_tokens: int | None,
                  loss_on_prompt: bool = False, answer: list[int] | None = None) -> dict:
    """``answer``: the code's answer ids when already known (prompts.answer_ids otherwise)."""
    prompt, _ = prompts.prompt_for(tokenizer, row["input"], input_kind, max_input_tokens,
                                   candidates=row.get(LISTED))
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer = answer or prompts.answer_ids(tokenizer, row["code"])
    labels = (prompt_ids if loss_on_prompt else [IGNORE] * len(prompt_ids)) + answer
    return {"input_ids": prompt_ids + answer, "labels": list(labels)}


def build_dataset(tokenizer, rows: list[dict], input_kind: str, max_input_tokens: int | None,
                  loss_on_prompt: bool = False):
    """A datasets.Dataset holding token ids only: strings never reach the collator."""
    from datasets import Dataset

    codes = sorted({r["code"] for r in rows})
    answers = dict(zip(codes, prompts.answer_ids_batch(tokenizer, codes)))
    return Dataset.from_list([build_example(tokenizer, r, input_kind, max_input_tokens, loss_on_prompt, answers[r["code"]])
                              for r in rows])


class CausalCollator:
    """Dynamic padding to the longest example in the batch, on the left, labels padded with -100.

    Left padding puts every answer at the end of its row, so with ``answer_logits_only`` the
    batch asks the model for logits of the last K positions only (``logits_to_keep``), K being
    the longest answer + 1, and carries the labels of those positions. The loss is the same;
    the LM head and its logits (vocab x sequence x batch floats, several GB for a 128k vocab)
    shrink to the answer. Positions before K hold prompt tokens whose labels are all -100,
    because K is measured from the first supervised token.
    """

    def __init__(self, tokenizer, answer_logits_only: bool = True):
        self.pad_id = tokenizer.pad_token_id
        self.answer_logits_only = answer_logits_only

    def __call__(self, features: list[dict]) -> dict:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids, labels, mask = [], [], []
        for f in features:
            pad = width - len(f["input_ids"])
            ids.append([self.pad_id] * pad + list(f["input_ids"]))
            labels.append([IGNORE] * pad + list(f["labels"]))
            mask.append([0] * pad + [1] * len(f["input_ids"]))
        batch = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}
        batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        if self.answer_logits_only:
            supervised = batch["labels"] != IGNORE
            first = torch.where(supervised.any(-1), supervised.int().argmax(-1), torch.tensor(width))
            keep = int(width - first.min().item() + 1)
            if keep < width:
                batch["labels"] = batch["labels"][:, width - keep:]
                batch["logits_to_keep"] = keep
        return batch


def collator(tokenizer, answer_logits_only: bool = True) -> CausalCollator:
    return CausalCollator(tokenizer, answer_logits_only)


# --- preflight --------------------------------------------------------------------------
def preflight(batch: dict, codes: list[str], tokenizer, dataset_columns, loss_on_prompt: bool = False) -> None:
    """Raise PreflightError unless the first batch teaches exactly "code + EOS" after a templated prompt."""
    strings = [c for c in dataset_columns if c not in MODEL_COLUMNS | {"attention_mask"}]
    if strings:
        raise PreflightError(f"preflight: columns {strings} would reach the collator; keep only token ids "
                             "(input_ids, labels) in the training set (T5 diary: string columns in the data)")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None or pad is None:
        raise PreflightError(f"preflight: tokenizer has eos_token_id={eos}, pad_token_id={pad}; both must be set")
    _check_template_eos(tokenizer)
    gen_prompt = _generation_prompt(tokenizer)
    input_ids, labels = batch["input_ids"].tolist(), batch["labels"].tolist()
    attention = batch["attention_mask"].tolist()
    for i, (ids, labs, mask, code) in enumerate(zip(input_ids, labels, attention, codes)):
        labs = [IGNORE] * (len(ids) - len(labs)) + labs  # answer-only batches carry the last K labels
        pad_labels = sorted({l for l, m in zip(labs, mask) if not m and l != IGNORE})
        if pad_labels:
            raise PreflightError(f"preflight: example {i}: padding positions carry labels {pad_labels}; pad labels "
                                 "must be -100 (T5 diary: labels padded with the pad id, the model learns padding)")
        real_ids = [t for t, m in zip(ids, mask) if m]
        real_labs = [l for l, m in zip(labs, mask) if m]
        want = prompts.answer_ids(tokenizer, code)
        n_prompt = len(real_ids) - len(want)
        supervised = [l for l in real_labs if l != IGNORE]
        if loss_on_prompt:
            supervised = supervised[-len(want):]
        elif real_labs[:n_prompt] != [IGNORE] * n_prompt:
            raise PreflightError(f"preflight: example {i}: prompt tokens are in the loss; mask them with -100 or set "
                                 "train.loss_on_prompt: true on purpose (T5 diary: the model echoed its input)")
        if supervised != want:
            raise PreflightError(f"preflight: example {i}: labels decode to {tokenizer.decode(supervised)!r}, expected "
                                 f"{tokenizer.decode(want)!r} (the code, then EOS)")
        prompt_text = tokenizer.decode(real_ids[:n_prompt])
        if not prompt_text.endswith(gen_prompt) or prompts.SYSTEM not in prompt_text:
            raise PreflightError(f"preflight: example {i}: the prompt was not built with the chat template "
                                 f"(it should end with {gen_prompt!r})")


def _generation_prompt(tokenizer) -> str:
    msgs = [{"role": "user", "content": "x"}]
    with_gen = prompts.chat_text(tokenizer, msgs, add_generation_prompt=True)
    without = prompts.chat_text(tokenizer, msgs, add_generation_prompt=False)
    return with_gen[len(without):]


def _check_template_eos(tokenizer) -> None:
    """The chat template must close an assistant turn with the tokenizer's EOS, or the model
    learns to stop with a token that generation does not stop on."""
    text = prompts.chat_text(tokenizer, [{"role": "user", "content": "x"}, {"role": "assistant", "content": "E11.9"}],
                             add_generation_prompt=False)
    after = text[text.rindex("E11.9") + len("E11.9"):]
    if not after.lstrip(" ").startswith(tokenizer.eos_token):
        raise PreflightError(f"preflight: the chat template ends an assistant turn with {after.strip()[:20]!r}, not the "
                             f"tokenizer's eos_token {tokenizer.eos_token!r}; set eos_token to the turn-end token")


# --- training-time sanity ---------------------------------------------------------------
def sanity_callback(sanity_steps: int):
    from transformers import TrainerCallback

    class SanityCallback(TrainerCallback):
        """Stops a run whose loss is NaN, or has not fallen after ``sanity_steps`` steps."""

        def __init__(self):
            self.first = None
            self.ok = False

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is None:
                return
            if not math.isfinite(loss):
                raise TrainingSanityError(f"training: loss is {loss} at step {state.global_step}; lower "
                                          "train.learning_rate or check the data (preflight passed)")
            if self.first is None:
                self.first = loss
                self.ok = state.global_step > args.logging_steps  # resumed: the early steps were checked before
                return
            fell = loss < self.first * (1 - SANITY_MIN_DROP)
            if sanity_steps and state.global_step >= sanity_steps and not fell and not self.ok:
                raise TrainingSanityError(f"training: loss {loss:.4f} at step {state.global_step} has not fallen below "
                                          f"the first logged {self.first:.4f} (train.sanity_steps={sanity_steps}); "
                                          "check train.learning_rate and the labels")
            self.ok = self.ok or (sanity_steps and state.global_step >= sanity_steps and fell)

    return SanityCallback()


# --- the run ----------------------------------------------------------------------------
def _check_config(cfg: dict) -> None:
    if cfg["save_steps"] % cfg["eval_steps"]:
        raise PreflightError(f"params.yaml: train.save_steps ({cfg['save_steps']}) must be a multiple of "
                             f"train.eval_steps ({cfg['eval_steps']}), so the best checkpoint is one that was evaluated")


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _code_version() -> str:
    """Hash of the modules that decide what a training step and the checkpoint probe compute: checkpoints
    written by other code are not resumed."""
    library = Path(__file__).parent.parent
    return _fingerprint(*[(library / f).read_text() for f in (
        "finetune/training.py", "models/modeling.py", "inference/prompts.py", "inference/evaluation.py",
        "inference/generation.py")])


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


def exact_match_probe(tokenizer, rows: list[dict], decoding, input_kind: str, entry: dict):
    """model -> exact match on ``rows``, decoded as predict@ decodes the saved adapter: the same weights form
    (models.modeling.inference_form, on a copy; the model being trained is untouched), the same
    evaluation.Decoding (settings, batch, shown examples, listed codes), no autocast. What a checkpoint is kept
    by with train.select_by: exact_match, on a CPU and on a GPU alike. Real 4-bit weights cannot be copied: they
    are decoded in place with the adapter separate, as predict@ decodes them (the Trainer sets train mode again)."""
    import copy

    import torch

    from icdstudy.models.modeling import inference_form

    def probe(model) -> float:
        four_bit = getattr(model, "is_loaded_in_4bit", False)
        decoder = inference_form(model if four_bit else copy.deepcopy(model), entry)
        device = "cuda" if next(decoder.parameters()).is_cuda else "cpu"
        with torch.autocast(device_type=device, enabled=False):
            predictions = decoding.run(decoder, tokenizer, rows, input_kind, progress=False)
        del decoder
        return round(sum(p["pred"] == p["gold"] for p in predictions) / len(predictions), 4)

    return probe


def resumable_trainer(exact_match=None, **kwargs):
    """A Trainer whose run, killed after a checkpoint and resumed, computes what the uninterrupted run
    computes, and which adds ``eval_exact_match`` (``exact_match(model)``, the validation rows decoded as
    the predict@ stages decode them) to every evaluation, where the checkpoint is kept by it. The stock group_by_length sampler draws each epoch's order from the global RNG at the
    moment the epoch starts; a run resumed mid-epoch has that RNG in another state (the checkpoint's
    RNG is restored only after the first batch), so it would train on a different order. Here each
    epoch's length-grouped order comes from (data_seed, epoch) alone."""
    import torch
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

    class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
        def __init__(self, *args, seed: int, **kw):
            super().__init__(*args, **kw)
            self.seed, self.epoch = seed, 0

        def set_epoch(self, epoch: int) -> None:  # the Trainer (through accelerate) calls it every epoch
            self.epoch = epoch

        def __iter__(self):
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))

    class ResumableTrainer(Trainer):
        def evaluation_loop(self, *args, **kw):
            output = super().evaluation_loop(*args, **kw)
            prefix = kw.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
            if exact_match is not None:
                output.metrics[f"{prefix}_exact_match"] = exact_match(self.model)
            return output

        def _get_train_sampler(self, train_dataset=None):
            dataset = self.train_dataset if train_dataset is None else train_dataset
            return EpochSeededLengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps, dataset=dataset,
                lengths=[len(ids) for ids in dataset["input_ids"]], seed=self.args.data_seed)

    return ResumableTrainer(**kwargs)


def last_complete_checkpoint(work_dir: Path, delete_partial: bool) -> str | None:
    """The newest checkpoint the Trainer finished writing (trainer_state.json is the last file it
    writes). A checkpoint cut off by a kill is deleted (by the first process), never resumed from."""
    step = lambda p: p.name.removeprefix("checkpoint-")  # noqa: E731
    found = sorted((p for p in Path(work_dir).glob("checkpoint-*") if p.is_dir() and step(p).isdigit()),
                   key=lambda p: int(step(p)))
    for ckpt in reversed(found):
        if (ckpt / "trainer_state.json").exists():
            return str(ckpt)
        if delete_partial:
            print(f"training: {ckpt} was cut off while being written; removed")
            shutil.rmtree(ckpt)
    return None


def curves_callback(live: Path, resumed_step: int):
    """DVCLive's Trainer callback, logging into ``live``, with the optimizer step as every point's x
    (DVCLive's own counter counts log calls). A resumed run first drops the points logged after its
    checkpoint by the run that was killed, so its curves are those of an uninterrupted run."""
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    if resumed_step:
        for tsv in (live / "plots" / "metrics").rglob("*.tsv"):
            header, *rows = tsv.read_text().splitlines()
            kept = [r for r in rows if int(r.split("\t", 1)[0]) <= resumed_step]
            tsv.write_text("\n".join([header, *kept]) + "\n")

    class StepCurves(DVCLiveCallback):
        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            self.live.step = state.global_step
            super().on_log(args, state, control, model=model, logs=logs, **kwargs)

    return StepCurves(live=Live(dir=str(live), dvcyaml=False, save_dvc_exp=False, resume=bool(resumed_step), report=None))


def kept_evaluation(state) -> dict:
    """The evaluation of the checkpoint the Trainer kept (loaded at the end): its step, validation loss and,
    where decoded, validation exact match, from the run's log (a resumed run's log holds the earlier part)."""
    evals = [e for e in state.log_history if "eval_loss" in e]
    if not evals:
        raise TrainingSanityError("training: no evaluation ran; train.eval_steps is larger than the run's steps")
    name = Path(state.best_model_checkpoint or "").name
    step = int(name.removeprefix("checkpoint-")) if name.startswith("checkpoint-") else evals[-1]["step"]
    return next((e for e in evals if e["step"] == step), evals[-1])


def canonical_adapter_config(path: Path) -> None:
    """peft keeps target_modules as a set and writes it in the set's iteration order, which follows
    Python's per-process string hashing: the same adapter got a different adapter_config.json in
    every run, so DVC saw a new adapter and reran its evaluation. Rewritten sorted, in peft's format."""
    config = json.loads(path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def _check_decoding(decode: bool, decoding) -> None:
    if decode and (decoding is None or not decoding.labels):
        raise PreflightError("train.select_by: exact_match decodes the validation rows: pass a Decoding with the "
                             "label set and settings (the train stage does), or set train.select_by: loss")


def _run_id(cfg: dict, entry: dict, input_kind: str, max_input_tokens: int | None, model_fingerprint: str,
            train_rows: list[dict], val_rows: list[dict], decoding) -> str:
    """Everything that decides the adapter: a checkpoint or a finished run is only reused under the same id.
    ``decoding``: None where the run does not decode (select_by: loss)."""
    return _fingerprint(cfg, entry, input_kind, max_input_tokens, model_fingerprint, _code_version(),
                        decoding.fingerprint() if decoding else None,
                        [(r["id"], r["code"], r["input"], r.get(LISTED)) for r in train_rows],
                        [(r["id"], r.get(LISTED)) for r in val_rows])


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

    from icdstudy.models.modeling import load_model

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
    ratios = [loss / min(x for _, x in logged[:i]) for i, (step, loss) in enumerate(logged)
              if i and step > warmup_steps and min(x for _, x in logged[:i]) > 0]
    return round(max(ratios), 3) if ratios else None


def _run_metrics(trainer, output, kept: dict, cfg: dict, start: dict, train_ds, trainable: int, quantized,
                 t0: float) -> dict:
    """The run's metrics from the Trainer's state and ``output`` (what trainer.train returned)."""
    import torch

    from icdstudy import cpu_kernels
    from icdstudy.core.metrics import peak_memory_mb

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
        "peak_mem_mb": peak_memory_mb(),
        "quantized_4bit": bool(quantized),
        "num_processes": trainer.args.world_size,
        "loss_spike": loss_spike(state.log_history, cfg["warmup_steps"]),
        "cpu_kernels": None if torch.cuda.is_available() else cpu_kernels.describe(),
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
    ``accelerate launch`` (train.num_processes > 1) the Trainer runs data-parallel; only the
    first process writes files and gets the metrics, the others get None. With ``done_file``
    a finished run records its metrics there, and a rerun with the same settings whose adapter
    is still in place returns them without training (a multi-seed stage resumes per seed).
    ``extra_callbacks`` are TrainerCallbacks added to the run (tests record losses with them).
    """
    import torch

    from icdstudy.models.modeling import load_tokenizer, resolve_dtype

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
