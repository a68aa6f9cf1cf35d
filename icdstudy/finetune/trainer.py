"""The Trainer of a LoRA run, made resumable and watched: an exact resume (each epoch's length-grouped order from
(data_seed, epoch) alone, the last complete checkpoint), the checkpoint probe that decodes validation rows as
predict@ does, the sanity stop on a loss that is NaN or does not fall, DVCLive's curves with the optimizer step
as x, and the kept evaluation.
"""
# DVCLive is optional (a bare CUDA image, the GPU check, trains without curves): imported where used.
from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from icdstudy.models.modeling import inference_form

# By recipe.sanity_steps the loss must be this much (relative) below its first logged value:
# batch-to-batch noise alone moves it by well under 1%.
SANITY_MIN_DROP = 0.02


class TrainingSanityError(Exception):
    """Training diverged (NaN) or did not learn in its first steps."""


def sanity_callback(sanity_steps: int):
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
                                          "recipe.learning_rate or check the data (preflight passed)")
            if self.first is None:
                self.first = loss
                self.ok = state.global_step > args.logging_steps  # resumed: the early steps were checked before
                return
            fell = loss < self.first * (1 - SANITY_MIN_DROP)
            if sanity_steps and state.global_step >= sanity_steps and not fell and not self.ok:
                raise TrainingSanityError(f"training: loss {loss:.4f} at step {state.global_step} has not fallen below "
                                          f"the first logged {self.first:.4f} (recipe.sanity_steps={sanity_steps}); "
                                          "check recipe.learning_rate and the labels")
            self.ok = self.ok or (sanity_steps and state.global_step >= sanity_steps and fell)

    return SanityCallback()


def exact_match_probe(tokenizer, rows: list[dict], decoding, input_kind: str, entry: dict):
    """model -> exact match on ``rows``, decoded as predict@ decodes the saved adapter: the same weights form
    (models.modeling.inference_form, on a copy; the model being trained is untouched), the same
    evaluation.Decoding (settings, batch, shown examples, listed codes), no autocast. What a checkpoint is kept
    by with recipe.select_by: exact_match, on a CPU and on a GPU alike. Real 4-bit weights cannot be copied: they
    are decoded in place with the adapter separate, as predict@ decodes them (the Trainer sets train mode again)."""
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
        raise TrainingSanityError("training: no evaluation ran; recipe.eval_steps is larger than the run's steps")
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


