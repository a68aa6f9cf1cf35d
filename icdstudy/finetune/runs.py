"""One training run of params `training`, as stage train@<run> runs it: the run's settings and prompt rows
(checked before any model loads), one adapter per `recipe.seeds` entry (each resumable: a finished seed waits in
.resume/train-done/ and is never retrained by an interrupted stage), and the outputs: the first seed's adapter
and curves, the other seeds' adapters in its seeds/ folder, metrics/train/<run>.json. With recipe.num_processes
> 1 the stage relaunches itself under `accelerate launch` (``relaunch``).
"""
# finetune.training (torch, transformers, peft: seconds to import) is imported where a seed trains: a run whose
# params are wrong fails before it, in about a second.
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from icdstudy import systems
from icdstudy.core.io import read_json, read_jsonl, replace_tree, write_json
from icdstudy.core.params import model_entry, section, run_recipe
from icdstudy.inference.evaluation import Decoding, model_fingerprint
from icdstudy.inference.prompt_styles import generation_settings, prompt_rows, style
from icdstudy.models.modeling import ModelError, is_oom, oom_message
from icdstudy.neighbours.retrieval import Retriever
from icdstudy.neighbours.shortlist import candidate_recall

DONE_ROOT = Path(".resume/train-done")  # dvc repro deletes a stage's outputs before it reruns: finished seeds wait here
SEED_KEYS = ("train_loss", "eval_loss", "best_step", "best_val_exact_match", "steps", "epochs", "wall_s")


class RunError(Exception):
    """A run that cannot train as configured; the message says what to change."""


def load_run(run: str, params: dict, data: Path) -> dict:
    """The run's settings and prompt rows, checked before any model loads."""
    spec = systems.run_entry(params, run)
    prompt, retrieved = spec["prompt"], spec.get("retrieved") or 0
    style(prompt).check(retrieved, f"training.{run}")
    if not style(prompt).trainable:
        raise RunError(f"training.{run}.prompt: training on {prompt!r} prompts is not implemented")
    cfg = run_recipe(params, run)
    train_rows = shots_from = read_jsonl(data / "train.jsonl")
    val_rows = read_jsonl(data / "val.jsonl")[:cfg.get("max_val_samples") or None]
    retrieval, recall = section(params, "retrieval"), {}
    if style(prompt).uses_retriever:
        retriever = Retriever.from_params(train_rows, retrieval)
        train_rows, val_rows = (prompt_rows(prompt, train_rows, rows, retrieved, retrieval, retriever)
                                for rows in (train_rows, val_rows))
        recall = {"candidates": retrieved, "candidate_recall_train": candidate_recall(train_rows),
                  "candidate_recall_val": candidate_recall(val_rows)}
        print(f"train: {run}: {retrieved} candidates per prompt; candidate recall "
              f"{recall['candidate_recall_train']:.3f} train, {recall['candidate_recall_val']:.3f} val")
    # the validation rows are decoded as a system of this run without its own `decoding` keys decodes them
    settings = generation_settings(section(params, "decoding"), {}, prompt, retrieved)
    decoding = Decoding(tuple(read_json(data / "labels.json")), settings, tuple(shots_from), retrieval)
    return {"model": spec["model"], "entry": model_entry(params, spec["model"]), "cfg": cfg,
            "max_input_tokens": settings.max_input_tokens, "input_kind": section(params, "data")["input"],
            "train_rows": train_rows, "val_rows": val_rows, "decoding": decoding, "recall": recall}


def train_seed(run: str, tag: str, seed: int, job: dict) -> dict | None:
    """One seed's adapter into .resume/train-done/<tag>/ (None on every process but the first)."""
    from icdstudy.finetune.training import PreflightError, TrainingSanityError, fine_tune

    base_dir, cfg = Path("models/base") / job["model"], job["cfg"]
    try:
        return fine_tune(base_dir, job["entry"], job["train_rows"], job["val_rows"], {**cfg, "seed": seed},
                         job["input_kind"], job["max_input_tokens"], adapter_dir=DONE_ROOT / tag / "adapter",
                         work_dir=Path(".resume/train") / tag, live_dir=DONE_ROOT / tag / "dvclive",
                         model_fingerprint=model_fingerprint(base_dir), done_file=DONE_ROOT / f"{tag}.json",
                         decoding=job["decoding"])
    except (PreflightError, TrainingSanityError, ModelError) as exc:
        raise RunError(str(exc)) from None
    except Exception as exc:
        if not is_oom(exc):
            raise
        raise RunError(oom_message(f"train@{run}", "recipe.batch_size (raising recipe.grad_accum keeps the effective "
                                     "batch), set recipe.gradient_checkpointing: true, or lower decoding.max_input_tokens; "
                                     f"checkpoints in .resume/train/{tag} are kept")) from None


def write_outputs(run: str, tags: dict, by_seed: dict, job: dict) -> dict:
    """The first seed's adapter and curves, the other seeds' adapters inside it, metrics/train/<run>.json."""
    seeds = list(tags)
    result = {**by_seed[seeds[0]], "seeds": seeds, "model": job["model"], **job["recall"]}
    if len(seeds) > 1:
        result["by_seed"] = {str(s): {k: r[k] for k in SEED_KEYS} for s, r in by_seed.items()}
    adapter = Path("models/adapters") / run
    first = DONE_ROOT / tags[seeds[0]]
    replace_tree(first / "adapter", adapter)
    if (first / "dvclive").exists():  # absent where DVCLive is not installed (a bare CUDA image)
        replace_tree(first / "dvclive", Path("dvclive") / run)
    seed_dir = adapter / "seeds"
    seed_dir.mkdir()
    for seed in seeds[1:]:
        shutil.copytree(DONE_ROOT / tags[seed] / "adapter", seed_dir / f"seed-{seed}")
        if (DONE_ROOT / tags[seed] / "dvclive").exists():
            shutil.copytree(DONE_ROOT / tags[seed] / "dvclive", seed_dir / f"seed-{seed}" / "dvclive")
    write_json(seed_dir / "seeds.json", {"seeds": seeds, "first_seed_adapter": str(adapter)})
    write_json(Path("metrics/train") / f"{run}.json", result)
    for tag in tags.values():  # all written: nothing left to resume
        shutil.rmtree(DONE_ROOT / tag, ignore_errors=True)
        (DONE_ROOT / f"{tag}.json").unlink(missing_ok=True)
    return result




def relaunch(argv: list[str], processes: int) -> int:
    """The stage again under `accelerate launch`, one process per GPU (or per CPU with gloo)."""
    return subprocess.call([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                            str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                            *argv])


def train_run(run: str, job: dict) -> dict | None:
    """Every seed of the run, then its outputs: the metrics written (None on every process but the first)."""
    seeds = job["cfg"]["seeds"]
    tags = {seed: run if i == 0 else f"{run}-seed{seed}" for i, seed in enumerate(seeds)}
    by_seed = {}
    for seed, tag in tags.items():
        result = train_seed(run, tag, seed, job)
        if result is not None:  # None: not the first of several processes, which writes nothing
            by_seed[seed] = result
    return write_outputs(run, tags, by_seed, job) if by_seed else None
