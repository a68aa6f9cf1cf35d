"""The stage that trains a fine-tuned system's LoRA (or QLoRA, with models.<model>.load_in_4bit)
adapter: train@<model> (system lora-<model>), train-shortlist@<model> (lora-shortlist-<model>), and the
training stage of any fine-tuned kind added to icdstudy/systems.py.

    python stages/train.py KIND MODEL        e.g. `lora-shortlist smollm2-135m`

Reads the kind's recipe (params `train`, with the keys of the kind's own section, such as
`train_shortlist`, replaced), `eval.max_input_tokens`, the evaluation settings its checkpoint choice
decodes with, `data.input` and `models.<model>`, and only the training and validation splits: the
test split is no input of training. Every prompt is built as the kind's evaluation builds it (for
shortlist prompts, a training row's list comes from the other training rows, never itself or a copy
of its text). The run is named after its system: the kept adapter goes to models/adapters/<system>,
its curves to dvclive/<system>, its metrics to metrics/train/<system>.json. The checkpoint kept is the
one with the highest validation exact match, decoded at every evaluation as the evaluation stages
decode (train.select_by; `loss` keeps the lowest validation loss). Checkpoints live in
.resume/train/<system>: an interrupted run resumes from the last one and ends with the adapter an
uninterrupted run would have written, byte for byte.

With several `train.seeds` the first seed's adapter is the one above; each other seed trains after it,
in .resume/train/<system>-seed<n>, and lands with its curves in models/seeds/<system>/seed-<n>/ once all
are done. Finished seeds wait in .resume/train-done/: an interrupted stage never retrains them.
models/seeds/<system>/seeds.json lists the seeds; metrics/train/<system>.json has each one's losses.

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

from icdstudy import systems
from icdstudy.io import read_json, read_jsonl, replace_tree, write_json
from icdstudy.params import ParamError, load_params, model_entry, section, train_config


def main(argv=None) -> int:
    tuned = [k.name for k in systems.KINDS if k.fine_tuned]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=tuned, metavar="KIND", help=f"a fine-tuned kind of system: {', '.join(tuned)}")
    parser.add_argument("model", help="a key under models: in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    args = parser.parse_args(argv)
    kind = systems.kind_named(args.kind)
    system = systems.system(kind, args.model)
    try:
        params = load_params(args.params)
        entry = model_entry(params, args.model)
        cfg = train_config(params, kind.recipe)
        ecfg = section(params, "eval")
        input_kind = section(params, "data")["input"]
        retrieval = section(params, "retrieval")
    except ParamError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 1
    if kind.prompt == "candidates" and not ecfg["candidates"]:
        print(f"train: error: {system.id} lists candidate codes; it needs eval.candidates >= 1 in params.yaml",
              file=sys.stderr)
        return 1
    if kind.prompt not in ("plain", "candidates"):
        print(f"train: error: kind {kind.name}: training on {kind.prompt!r} prompts is not implemented", file=sys.stderr)
        return 1
    run_name, max_input_tokens = system.run, ecfg["max_input_tokens"]
    for old in systems.old_run_paths(system):
        print(f"train: note: {old} is this run's old name (runs are named after their system now); nothing reads it, "
              "delete it")

    processes = cfg.get("num_processes", 1)
    if processes > 1 and "LOCAL_RANK" not in os.environ:
        return subprocess.call([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                                "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
                                "--dynamo_backend", "no", __file__, *(sys.argv[1:] if argv is None else argv)])
    warnings.filterwarnings("ignore", category=FutureWarning)
    from icdstudy.evaluation import model_fingerprint, prompt_rows
    from icdstudy.modeling import ModelError
    from icdstudy.training import PreflightError, TrainingSanityError, fine_tune, probe_settings

    base_dir = Path("models/base") / args.model
    data = Path(args.data)
    train_rows = read_jsonl(data / "train.jsonl")
    val_rows = read_jsonl(data / "val.jsonl")[:cfg.get("max_val_samples") or None]
    labels = read_json(data / "labels.json")
    if kind.prompt == "candidates":
        from icdstudy.retrieval import Retriever
        from icdstudy.shortlist import candidate_recall

        retriever = Retriever.from_params(train_rows, retrieval)
        train_rows, val_rows = (prompt_rows(kind.prompt, train_rows, rows, ecfg, retrieval, retriever)
                                for rows in (train_rows, val_rows))
        print(f"train: {run_name}: {ecfg['candidates']} candidates per prompt; candidate recall "
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
                            done_file=done_root / f"{tag}.json", labels=labels,
                            generation=probe_settings(ecfg, cfg))
        except (PreflightError, TrainingSanityError, ModelError) as exc:
            print(f"train: error: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:
            from icdstudy.modeling import is_oom, oom_message

            if not is_oom(exc):
                raise
            print("train: error: " + oom_message(system.train_stage, "train.batch_size (raising train.grad_accum keeps "
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
        result["by_seed"] = {str(s): {k: r[k] for k in ("train_loss", "eval_loss", "best_step", "best_val_exact_match",
                                                        "steps", "epochs", "wall_s")}
                             for s, r in by_seed.items()}
    first = done_root / tags[seeds[0]]
    replace_tree(first / "adapter", system.adapter)
    if (first / "dvclive").exists():  # absent where DVCLive is not installed (a bare CUDA image)
        replace_tree(first / "dvclive", Path("dvclive") / run_name)
    seed_dir = system.seed_adapters
    shutil.rmtree(seed_dir, ignore_errors=True)
    seed_dir.mkdir(parents=True)
    for seed in seeds[1:]:
        shutil.copytree(done_root / tags[seed] / "adapter", seed_dir / f"seed-{seed}")
        if (done_root / tags[seed] / "dvclive").exists():
            shutil.copytree(done_root / tags[seed] / "dvclive", seed_dir / f"seed-{seed}" / "dvclive")
    write_json(seed_dir / "seeds.json", {"seeds": seeds, "first_seed_adapter": str(system.adapter)})
    result["model"] = args.model
    if kind.prompt == "candidates":
        result.update({"candidates": ecfg["candidates"], "candidate_recall_train": candidate_recall(train_rows),
                       "candidate_recall_val": candidate_recall(val_rows)})
    write_json(Path("metrics/train") / f"{run_name}.json", result)
    for tag in tags.values():  # all written: nothing left to resume
        shutil.rmtree(done_root / tag, ignore_errors=True)
        (done_root / f"{tag}.json").unlink(missing_ok=True)
    print(f"train: {run_name}: train loss {result['train_loss']}; kept step {result['best_step']} of {result['steps']} "
          f"by {result['select_by']} (val exact {result['best_val_exact_match']}, val loss {result['eval_loss']}); "
          f"{result['train_tokens_per_s']} tokens/s, {result['wall_s']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
