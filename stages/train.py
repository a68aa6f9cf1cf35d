"""Stage `train@<model>`: LoRA (or QLoRA, with models.<model>.load_in_4bit) fine-tuning.

Reads params `train`, `eval.max_input_tokens`, `data.input` and `models.<model>`; writes the
best adapter (by validation loss) to models/adapters/<model>, training curves to
dvclive/<model>, and metrics/train/<model>.json. Checkpoints live in .resume/train/<model>:
an interrupted run resumes from the last one and ends with the adapter an uninterrupted run
would have written, byte for byte.

With several `train.seeds` the first seed's adapter is the one above (system lora-<model>);
each other seed trains after it, in .resume/train/<model>-seed<n>, and lands with its curves in
models/seeds/<model>/seed-<n>/ once all are done. Finished seeds wait in .resume/train-done/:
an interrupted stage never retrains them.
models/seeds/<model>/seeds.json lists the seeds; metrics/train/<model>.json has each one's losses.

With --shortlist (stage `train-shortlist@<model>`) every prompt lists the `eval.candidates` codes the
TF-IDF retriever ranks highest, with their descriptions: a training row's list comes from the other
training rows (never itself or a copy of its text), as a test row's does. Its run is named
shortlist-<model> in every path above (models/adapters/shortlist-<model>, ...), and its recipe is
`train` with the keys of `train_shortlist` replaced.

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

from icdstudy.io import read_jsonl, replace_tree, write_json
from icdstudy.params import ParamError, load_params, model_entry, section, train_config
from icdstudy.systems import SHORTLIST_RUN


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a key under models: in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    parser.add_argument("--shortlist", action="store_true",
                        help="train on prompts with eval.candidates retrieved codes (run shortlist-<model>)")
    args = parser.parse_args()
    try:
        params = load_params(args.params)
        entry = model_entry(params, args.model)
        cfg = train_config(params, args.shortlist)
        max_input_tokens = section(params, "eval")["max_input_tokens"]
        candidates = section(params, "eval")["candidates"]
        input_kind = section(params, "data")["input"]
        retrieval = section(params, "retrieval")
    except ParamError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 1
    if args.shortlist and not candidates:
        print("train: error: --shortlist needs eval.candidates >= 1 in params.yaml", file=sys.stderr)
        return 1
    run_name = f"{SHORTLIST_RUN}{args.model}" if args.shortlist else args.model

    processes = cfg.get("num_processes", 1)
    if processes > 1 and "LOCAL_RANK" not in os.environ:
        return subprocess.call([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                                "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
                                "--dynamo_backend", "no", __file__, *sys.argv[1:]])
    warnings.filterwarnings("ignore", category=FutureWarning)
    from icdstudy.evaluation import model_fingerprint
    from icdstudy.modeling import ModelError
    from icdstudy.training import PreflightError, TrainingSanityError, fine_tune

    base_dir = Path("models/base") / args.model
    train_rows = read_jsonl(Path(args.data) / "train.jsonl")
    val_rows = read_jsonl(Path(args.data) / "val.jsonl")[:cfg.get("max_val_samples") or None]
    if args.shortlist:
        from icdstudy.retrieval import Retriever
        from icdstudy.shortlist import candidate_recall, with_shortlists

        retriever = Retriever.from_params(train_rows, retrieval)
        train_rows, val_rows = (with_shortlists(train_rows, rows, candidates, retrieval, retriever)
                                for rows in (train_rows, val_rows))
        print(f"train: {run_name}: {candidates} candidates per prompt; candidate recall "
              f"{candidate_recall(train_rows):.3f} train, {candidate_recall(val_rows):.3f} val")
    seeds = cfg["seeds"]
    print(f"train: {run_name}: {len(train_rows)} train / {len(val_rows)} val examples, LoRA r={cfg['lora_r']}, "
          f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
          + (f", process {os.environ['RANK']} of {processes}" if processes > 1 else ""))
    # Every seed trains into .resume/train-done/<tag>/ (dvc repro deletes the stage's outputs before
    # it reruns, so a finished seed must live elsewhere); outputs are written once all are done.
    done_root = Path(".resume/train-done")
    tags = {seed: run_name if i == 0 else f"{run_name}-seed{seed}" for i, seed in enumerate(seeds)}
    by_seed = {}
    for seed, tag in tags.items():
        try:
            run = fine_tune(base_dir, entry, train_rows, val_rows, {**cfg, "seed": seed}, input_kind, max_input_tokens,
                            adapter_dir=done_root / tag / "adapter", work_dir=Path(".resume/train") / tag,
                            live_dir=done_root / tag / "dvclive", model_fingerprint=model_fingerprint(base_dir),
                            done_file=done_root / f"{tag}.json")
        except (PreflightError, TrainingSanityError, ModelError) as exc:
            print(f"train: error: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:
            from icdstudy.modeling import is_oom, oom_message

            if not is_oom(exc):
                raise
            stage = f"{'train-shortlist' if args.shortlist else 'train'}@{args.model}"
            print("train: error: " + oom_message(stage, "train.batch_size (raising train.grad_accum keeps "
                  "the effective batch), set train.gradient_checkpointing: true, or lower eval.max_input_tokens; checkpoints "
                  f"in .resume/train/{tag} are kept"), file=sys.stderr)
            return 1
        if run is None:  # not the first of several processes: it writes nothing
            continue
        by_seed[seed] = run
    if not by_seed:
        return 0
    result = dict(by_seed[seeds[0]])
    result["seeds"] = seeds
    if len(seeds) > 1:
        result["by_seed"] = {str(s): {k: r[k] for k in ("train_loss", "eval_loss", "steps", "epochs", "wall_s")}
                             for s, r in by_seed.items()}
    first = done_root / tags[seeds[0]]
    replace_tree(first / "adapter", Path("models/adapters") / run_name)
    if (first / "dvclive").exists():  # absent where DVCLive is not installed (a bare CUDA image)
        replace_tree(first / "dvclive", Path("dvclive") / run_name)
    seed_dir = Path("models/seeds") / run_name
    shutil.rmtree(seed_dir, ignore_errors=True)
    seed_dir.mkdir(parents=True)
    for seed in seeds[1:]:
        shutil.copytree(done_root / tags[seed] / "adapter", seed_dir / f"seed-{seed}")
        if (done_root / tags[seed] / "dvclive").exists():
            shutil.copytree(done_root / tags[seed] / "dvclive", seed_dir / f"seed-{seed}" / "dvclive")
    write_json(seed_dir / "seeds.json", {"seeds": seeds, "first_seed_adapter": f"models/adapters/{run_name}"})
    result["model"] = args.model
    if args.shortlist:
        result.update({"candidates": candidates, "candidate_recall_train": candidate_recall(train_rows),
                       "candidate_recall_val": candidate_recall(val_rows)})
    write_json(Path("metrics/train") / f"{run_name}.json", result)
    for tag in tags.values():  # all written: nothing left to resume
        shutil.rmtree(done_root / tag, ignore_errors=True)
        (done_root / f"{tag}.json").unlink(missing_ok=True)
    print(f"train: {run_name}: train loss {result['train_loss']}, best val loss {result['eval_loss']}, "
          f"{result['steps']} steps, {result['train_tokens_per_s']} tokens/s, {result['wall_s']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
