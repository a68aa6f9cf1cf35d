"""Stage `train@<model>`: LoRA (or QLoRA, with models.<model>.load_in_4bit) fine-tuning.

Reads params `train`, `eval.max_input_tokens`, `data.input` and `models.<model>`; writes the
best adapter (by validation loss) to models/adapters/<model>, training curves to
dvclive/<model>, and metrics/train/<model>.json. Checkpoints live in .resume/train/<model>:
an interrupted run resumes from the last one.

With train.num_processes > 1 the stage re-runs itself under `accelerate launch` (one process per
GPU, or per CPU with gloo) and the Trainer trains data-parallel.
"""
import argparse
import os
import subprocess
import sys
import warnings
from pathlib import Path

from icdstudy.io import read_jsonl, write_json
from icdstudy.params import ParamError, load_params, model_entry, section


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a key under models: in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    args = parser.parse_args()
    try:
        params = load_params(args.params)
        entry = model_entry(params, args.model)
        cfg = section(params, "train")
        max_input_tokens = section(params, "eval")["max_input_tokens"]
        input_kind = section(params, "data")["input"]
    except ParamError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 1

    processes = cfg.get("num_processes", 1)
    if processes > 1 and "LOCAL_RANK" not in os.environ:
        return subprocess.call([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                                "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
                                "--dynamo_backend", "no", __file__, *sys.argv[1:]])
    warnings.filterwarnings("ignore", category=FutureWarning)
    from icdstudy.evaluation import model_fingerprint
    from icdstudy.training import PreflightError, TrainingSanityError, fine_tune

    base_dir = Path("models/base") / args.model
    train_rows = read_jsonl(Path(args.data) / "train.jsonl")
    val_rows = read_jsonl(Path(args.data) / "val.jsonl")
    print(f"train: {args.model}: {len(train_rows)} train / {len(val_rows)} val examples, LoRA r={cfg['lora_r']}"
          + (f", process {os.environ['RANK']} of {processes}" if processes > 1 else ""))
    try:
        result = fine_tune(base_dir, entry, train_rows, val_rows, cfg, input_kind, max_input_tokens,
                           adapter_dir=Path("models/adapters") / args.model,
                           work_dir=Path(".resume/train") / args.model, live_dir=Path("dvclive") / args.model,
                           model_fingerprint=model_fingerprint(base_dir))
    except (PreflightError, TrainingSanityError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from icdstudy.modeling import is_oom, oom_message

        if not is_oom(exc):
            raise
        print("train: error: " + oom_message(f"train@{args.model}", "train.batch_size (raising train.grad_accum keeps "
              "the effective batch), set train.gradient_checkpointing: true, or lower eval.max_input_tokens; checkpoints "
              f"in .resume/train/{args.model} are kept"), file=sys.stderr)
        return 1
    if result is None:  # not the first of several processes: it writes nothing
        return 0
    result["model"] = args.model
    write_json(Path("metrics/train") / f"{args.model}.json", result)
    print(f"train: {args.model}: train loss {result['train_loss']}, best val loss {result['eval_loss']}, "
          f"{result['steps']} steps, {result['train_tokens_per_s']} tokens/s, {result['wall_s']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
