"""Stage train@<run>: the LoRA (or QLoRA, with models.<model>.load_in_4bit) adapter of one training run
of params `training`.

    python stages/train.py RUN        e.g. `lora-shortlist-smollm2-135m`

Reads the run's entry (its model, the prompts it trains on, the `recipe` keys that replace params
`train`'s), the eval keys its checkpoint choice decodes with, `data.input`, `retrieval` and
`models.<model>`, and only the training and validation splits: the test split is no input of training.
Every prompt is built as the evaluation of a system with the run's prompt builds it (for shortlist
prompts, a training row's list comes from the other training rows, never itself or a copy of its
text). The kept adapter goes to models/adapters/<run> (the other `train.seeds`' adapters in its seeds/
folder), its curves to dvclive/<run>, its metrics to metrics/train/<run>.json. The checkpoint kept is
the one with the highest validation exact match, decoded at every evaluation as the predict@ stages
decode (train.select_by; `loss` keeps the lowest validation loss). Checkpoints live in
.resume/train/<run>: an interrupted run resumes from the last one and ends with the adapter an
uninterrupted run would have written, byte for byte. Finished seeds wait in .resume/train-done/: an
interrupted stage never retrains them.

With train.num_processes > 1 the stage re-runs itself under `accelerate launch` (one process per
GPU, or per CPU with gloo) and the Trainer trains data-parallel.
"""
import argparse
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

from icdstudy.core import systems
from icdstudy.core.io import read_json, read_jsonl, replace_tree, write_json
from icdstudy.core.params import ParamError, load_params, model_entry, section, train_config

DONE_ROOT = Path(".resume/train-done")  # dvc repro deletes a stage's outputs before it reruns: finished seeds wait here
SEED_KEYS = ("train_loss", "eval_loss", "best_step", "best_val_exact_match", "steps", "epochs", "wall_s")


class StageError(Exception):
    pass


def load_run(run: str, params: dict, data: Path) -> dict:
    """The run's settings and prompt rows, checked before any model loads."""
    from icdstudy.inference.evaluation import Decoding
    from icdstudy.inference.prompt_styles import generation_settings, prompt_rows, style

    spec = systems.run_entry(params, run)
    prompt, retrieved = spec["prompt"], spec.get("retrieved") or 0
    style(prompt).check(retrieved, f"training.{run}")
    if not style(prompt).trainable:
        raise StageError(f"training.{run}.prompt: training on {prompt!r} prompts is not implemented")
    cfg = train_config(params, run)
    train_rows = shots_from = read_jsonl(data / "train.jsonl")
    val_rows = read_jsonl(data / "val.jsonl")[:cfg.get("max_val_samples") or None]
    retrieval, recall = section(params, "retrieval"), {}
    if style(prompt).uses_retriever:
        from icdstudy.neighbours.retrieval import Retriever
        from icdstudy.neighbours.shortlist import candidate_recall

        retriever = Retriever.from_params(train_rows, retrieval)
        train_rows, val_rows = (prompt_rows(prompt, train_rows, rows, retrieved, retrieval, retriever)
                                for rows in (train_rows, val_rows))
        recall = {"candidates": retrieved, "candidate_recall_train": candidate_recall(train_rows),
                  "candidate_recall_val": candidate_recall(val_rows)}
        print(f"train: {run}: {retrieved} candidates per prompt; candidate recall "
              f"{recall['candidate_recall_train']:.3f} train, {recall['candidate_recall_val']:.3f} val")
    # the validation rows are decoded as a system of this run without its own `decoding` keys decodes them
    settings = generation_settings(section(params, "eval"), {}, prompt, retrieved)
    decoding = Decoding(tuple(read_json(data / "labels.json")), settings, tuple(shots_from), retrieval)
    return {"model": spec["model"], "entry": model_entry(params, spec["model"]), "cfg": cfg,
            "max_input_tokens": settings.max_input_tokens, "input_kind": section(params, "data")["input"],
            "train_rows": train_rows, "val_rows": val_rows, "decoding": decoding, "recall": recall}


def train_seed(run: str, tag: str, seed: int, job: dict) -> dict | None:
    """One seed's adapter into .resume/train-done/<tag>/ (None on every process but the first)."""
    from icdstudy.inference.evaluation import model_fingerprint
    from icdstudy.models.modeling import ModelError, is_oom, oom_message
    from icdstudy.finetune.training import PreflightError, TrainingSanityError, fine_tune

    base_dir, cfg = Path("models/base") / job["model"], job["cfg"]
    try:
        return fine_tune(base_dir, job["entry"], job["train_rows"], job["val_rows"], {**cfg, "seed": seed},
                         job["input_kind"], job["max_input_tokens"], adapter_dir=DONE_ROOT / tag / "adapter",
                         work_dir=Path(".resume/train") / tag, live_dir=DONE_ROOT / tag / "dvclive",
                         model_fingerprint=model_fingerprint(base_dir), done_file=DONE_ROOT / f"{tag}.json",
                         decoding=job["decoding"])
    except (PreflightError, TrainingSanityError, ModelError) as exc:
        raise StageError(str(exc)) from None
    except Exception as exc:
        if not is_oom(exc):
            raise
        raise StageError(oom_message(f"train@{run}", "train.batch_size (raising train.grad_accum keeps the effective "
                                     "batch), set train.gradient_checkpointing: true, or lower eval.max_input_tokens; "
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a training run under `training` in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    args = parser.parse_args(argv)
    try:
        job = load_run(args.run, load_params(args.params), Path(args.data))
    except (ParamError, ValueError, StageError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 1
    cfg, run = job["cfg"], args.run
    processes = cfg.get("num_processes", 1)
    if processes > 1 and "LOCAL_RANK" not in os.environ:
        return subprocess.call([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                                "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
                                "--dynamo_backend", "no", __file__, *(sys.argv[1:] if argv is None else argv)])
    warnings.filterwarnings("ignore", category=FutureWarning)
    seeds = cfg["seeds"]
    print(f"train: {run}: {len(job['train_rows'])} train / {len(job['val_rows'])} val examples, LoRA r={cfg['lora_r']}, "
          f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
          + (f", process {os.environ['RANK']} of {processes}" if processes > 1 else ""))
    tags = {seed: run if i == 0 else f"{run}-seed{seed}" for i, seed in enumerate(seeds)}
    by_seed = {}
    for seed, tag in tags.items():
        try:
            result = train_seed(run, tag, seed, job)
        except StageError as exc:
            print(f"train: error: {exc}", file=sys.stderr)
            return 1
        if result is not None:  # None: not the first of several processes, which writes nothing
            by_seed[seed] = result
    if not by_seed:
        return 0
    result = write_outputs(run, tags, by_seed, job)
    print(f"train: {run}: train loss {result['train_loss']}; kept step {result['best_step']} of {result['steps']} "
          f"by {result['select_by']} (val exact {result['best_val_exact_match']}, val loss {result['eval_loss']}); "
          f"{result['train_tokens_per_s']} tokens/s, {result['wall_s']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
