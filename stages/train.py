"""Stage train@<run>: the LoRA (or QLoRA, with models.<model>.load_in_4bit) adapter of one training run
of params `training`.

    python stages/train.py RUN        e.g. `lora-shortlist-smollm2-135m`

Reads the run's entry (its model, the prompts it trains on, the keys that replace params
`recipe`'s), the `decoding` keys its checkpoint choice decodes with, `data.input`, `retrieval` and
`models.<model>`, and only the training and validation splits: the test split is no input of training.
Every prompt is built as the evaluation of a system with the run's prompt builds it (for shortlist
prompts, a training row's list comes from the other training rows, never itself or a copy of its
text). The kept adapter goes to models/adapters/<run> (the other `recipe.seeds`' adapters in its seeds/
folder), its curves to dvclive/<run>, its metrics to metrics/train/<run>.json. The checkpoint kept is
the one with the highest validation exact match, decoded at every evaluation as the predict@ stages
decode (recipe.select_by; `loss` keeps the lowest validation loss). Checkpoints live in
.resume/train/<run>: an interrupted run resumes from the last one and ends with the adapter an
uninterrupted run would have written, byte for byte. Finished seeds wait in .resume/train-done/: an
interrupted stage never retrains them.

With recipe.num_processes > 1 the stage re-runs itself under `accelerate launch` (one process per
GPU, or per CPU with gloo) and the Trainer trains data-parallel.
"""
import argparse
import os
import sys
import warnings
from pathlib import Path

from icdstudy.core.params import ParamError, load_params
from icdstudy.finetune.runs import RunError, load_run, relaunch, train_run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a training run under `training` in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    args = parser.parse_args(argv)
    try:
        job = load_run(args.run, load_params(args.params), Path(args.data))
    except (ParamError, ValueError, RunError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 1
    cfg, run = job["cfg"], args.run
    processes = cfg.get("num_processes", 1)
    if processes > 1 and "LOCAL_RANK" not in os.environ:
        return relaunch([__file__, *(sys.argv[1:] if argv is None else argv)], processes)
    warnings.filterwarnings("ignore", category=FutureWarning)
    seeds = cfg["seeds"]
    print(f"train: {run}: {len(job['train_rows'])} train / {len(job['val_rows'])} val examples, LoRA r={cfg['lora_r']}, "
          f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
          + (f", process {os.environ['RANK']} of {processes}" if processes > 1 else ""))
    try:
        result = train_run(run, job)
    except RunError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 1
    if result is not None:
        print(f"train: {run}: train loss {result['train_loss']}; kept step {result['best_step']} of {result['steps']} "
              f"by {result['select_by']} (val exact {result['best_val_exact_match']}, val loss {result['eval_loss']}); "
              f"{result['train_tokens_per_s']} tokens/s, {result['wall_s']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
