"""Stages `zeroshot@<model>` and `evaluate@<model>`: score a system on the test split.

Without --adapter the base model is evaluated zero-shot (system `zeroshot-<model>`); with
--adapter the LoRA adapter is merged into it first (system `lora-<model>`). Both use the same
prompts, generation and metrics. Reads params `eval` and `models.<model>`; writes
predictions/<system>.jsonl and metrics/eval/<system>.json. An interrupted run resumes from
.resume/<system>.jsonl.
"""
import argparse
import sys
import time
from pathlib import Path

from icdstudy.io import read_json, read_jsonl, write_json, write_jsonl
from icdstudy.params import ParamError, load_params, model_entry, section


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a key under models: in params.yaml")
    parser.add_argument("--adapter", help="LoRA adapter folder (evaluates lora-<model>)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()

    try:
        params = load_params(args.params)
        entry = model_entry(params, args.model)
        ecfg = section(params, "eval")
        input_kind = section(params, "data")["input"]
    except ParamError as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 1
    system = f"{'lora' if args.adapter else 'zeroshot'}-{args.model}"

    # Heavy imports after argument parsing keep --help instant.
    import torch

    from icdstudy import metrics
    from icdstudy.evaluation import evaluate, model_fingerprint
    from icdstudy.generation import GenerationSettings
    from icdstudy.modeling import ModelError, count_parameters, is_oom, load_for_inference, oom_message

    torch.manual_seed(ecfg.get("seed", 42))
    t_start = time.time()
    base_dir = Path(f"models/base/{args.model}")
    try:
        tokenizer, model = load_for_inference(base_dir, entry, args.adapter)
    except (ModelError, OSError) as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 1
    load_s = time.time() - t_start

    test_rows = read_jsonl(Path(args.data) / f"{args.split}.jsonl")
    if ecfg.get("max_samples"):
        test_rows = test_rows[: ecfg["max_samples"]]
    if not test_rows:
        print(f"evaluate: error: {args.data}/{args.split}.jsonl has no samples; rerun `dvc repro prepare` "
              "(it refuses empty splits)", file=sys.stderr)
        return 1
    train_rows = read_jsonl(Path(args.data) / "train.jsonl")
    labels = read_json(Path(args.data) / "labels.json")
    settings = GenerationSettings.from_params(ecfg)
    print(f"evaluate: {system} on {len(test_rows)} {args.split} samples, {len(labels)} labels, "
          f"{'constrained top-' + str(settings.top_k) if settings.constrained else 'free text'}, load {load_s:.1f}s")

    try:
        predictions, result = evaluate(
            model, tokenizer, test_rows, labels, settings, input_kind, train_rows,
            fingerprint_parts={"model": model_fingerprint(base_dir, args.adapter)},
            resume_file=Path(".resume") / f"{system}.jsonl",
        )
    except Exception as exc:
        if not is_oom(exc):
            raise
        print(f"evaluate: error: {oom_message(system, 'eval.batch_size, eval.top_k / eval.num_beams or eval.max_input_tokens')}",
              file=sys.stderr)
        return 1
    result.update({
        "system": system,
        "model": args.model,
        "params_total": count_parameters(model),
        "peak_mem_mb": metrics.peak_memory_mb(),
        "load_s": round(load_s, 2),
        "wall_s": round(time.time() - t_start, 2),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "constrained": settings.constrained,
        "top_k": settings.top_k if settings.constrained else 1,
        "few_shot": settings.few_shot,
    })
    write_jsonl(f"predictions/{system}.jsonl", predictions)
    write_json(f"metrics/eval/{system}.json", result)
    Path(".resume", f"{system}.jsonl").unlink(missing_ok=True)
    print(f"evaluate: {system}: exact {result['exact_match']:.3f} {result['exact_match_ci95']}, "
          f"category {result['category_match']:.3f}, valid {result['valid_rate']:.3f}, "
          f"top5 {result['top5_match']}, {result['samples_per_s']} samples/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
