"""Stages `zeroshot@<model>`, `fewshot@<model>`, `shortlist@<model>`, `evaluate@<model>` and
`evaluate-shortlist@<model>`: score a system on the test split.

Without options the base model is evaluated zero-shot (system `zeroshot-<model>`, with
`eval.few_shot` examples drawn by `eval.few_shot_strategy`). With --fewshot each test input is
preceded by its `eval.retrieval_k` nearest training examples (TF-IDF, params `retrieval`; system
`fewshot-<model>`). With --shortlist the prompt lists the `eval.candidates` codes the TF-IDF
retriever ranks highest, each with its description and score (system `shortlist-<model>`). With
--adapter the LoRA adapter is merged in first (system `lora-<model>`, or `lora-shortlist-<model>`
with --shortlist for an adapter trained on shortlist prompts); --seed-adapters also evaluates the
adapters of the other `train.seeds` and adds their spread to the metrics. All use the same prompts,
generation and metrics. Writes predictions/<system>.jsonl and metrics/eval/<system>.json. An
interrupted run resumes from .resume/<system>.jsonl.
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
    parser.add_argument("--seed-adapters", help="folder written by train@<model> with the other seeds' adapters "
                        "(seed-<n>/); their predictions go to predictions/seeds/lora-<model>/")
    parser.add_argument("--fewshot", action="store_true",
                        help="show each input's eval.retrieval_k nearest training examples (evaluates fewshot-<model>)")
    parser.add_argument("--shortlist", action="store_true",
                        help="list each input's eval.candidates retrieved codes with their descriptions in the prompt "
                             "(evaluates shortlist-<model>, or lora-shortlist-<model> with --adapter)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()

    try:
        params = load_params(args.params)
        entry = model_entry(params, args.model)
        ecfg = section(params, "eval")
        input_kind = section(params, "data")["input"]
        retrieval = section(params, "retrieval")
    except ParamError as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 1
    if args.fewshot and (args.adapter or args.shortlist):
        parser.error("--fewshot evaluates a base model with examples; it does not combine with --adapter or --shortlist")
    if args.seed_adapters and not args.adapter:
        parser.error("--seed-adapters needs --adapter (the first seed's adapter)")
    if args.shortlist and not ecfg["candidates"]:
        print("evaluate: error: --shortlist needs eval.candidates >= 1 in params.yaml", file=sys.stderr)
        return 1
    kind = ("lora-shortlist" if args.shortlist else "lora") if args.adapter else \
        "fewshot" if args.fewshot else "shortlist" if args.shortlist else "zeroshot"
    system = f"{kind}-{args.model}"
    if args.fewshot:
        ecfg = {**ecfg, "few_shot": ecfg["retrieval_k"], "few_shot_strategy": "nearest",
                "batch_size": ecfg["fewshot_batch_size"] or ecfg["batch_size"]}

    # Heavy imports after argument parsing keep --help instant.
    import torch

    from icdstudy import metrics
    from icdstudy.evaluation import evaluate, model_fingerprint
    from icdstudy.metrics import seed_summary
    from icdstudy.shortlist import shortlist_metrics
    from icdstudy.generation import GenerationSettings
    from icdstudy.modeling import ModelError, count_parameters, is_oom, load_for_inference, oom_message

    test_rows = read_jsonl(Path(args.data) / f"{args.split}.jsonl")
    if ecfg.get("max_samples"):
        test_rows = test_rows[: ecfg["max_samples"]]
    if not test_rows:
        print(f"evaluate: error: {args.data}/{args.split}.jsonl has no samples; rerun `dvc repro prepare` "
              "(it refuses empty splits)", file=sys.stderr)
        return 1
    train_rows = read_jsonl(Path(args.data) / "train.jsonl")
    labels = read_json(Path(args.data) / "labels.json")
    split_fingerprint = metrics.split_fingerprint(test_rows)
    if args.shortlist:
        from icdstudy.shortlist import with_shortlists

        test_rows = with_shortlists(train_rows, test_rows, ecfg["candidates"], retrieval)
    settings = GenerationSettings.from_params(ecfg)
    base_dir = Path(f"models/base/{args.model}")

    def run(name: str, adapter):
        """Load, evaluate and describe one system; None after printing the error."""
        torch.manual_seed(ecfg.get("seed", 42))
        t_start = time.time()
        try:
            tokenizer, model = load_for_inference(base_dir, entry, adapter)
        except (ModelError, OSError) as exc:
            print(f"evaluate: error: {exc}", file=sys.stderr)
            return None
        load_s = time.time() - t_start
        print(f"evaluate: {name} on {len(test_rows)} {args.split} samples, {len(labels)} labels, "
              f"{'constrained top-' + str(settings.top_k) if settings.constrained else 'free text'}"
              + (f", {settings.few_shot} {settings.few_shot_strategy} examples each" if settings.few_shot else "")
              + f", load {load_s:.1f}s")
        try:
            predictions, result = evaluate(
                model, tokenizer, test_rows, labels, settings, input_kind, train_rows,
                fingerprint_parts={"model": model_fingerprint(base_dir, adapter)},
                resume_file=Path(".resume") / f"{name}.jsonl", retrieval=retrieval,
            )
        except ModelError as exc:
            print(f"evaluate: error: {exc}", file=sys.stderr)
            return None
        except Exception as exc:
            if not is_oom(exc):
                raise
            print(f"evaluate: error: {oom_message(name, 'eval.batch_size, eval.top_k / eval.num_beams or eval.max_input_tokens')}",
                  file=sys.stderr)
            return None
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
            "few_shot_strategy": settings.few_shot_strategy if settings.few_shot else None,
            "split_fingerprint": split_fingerprint,
        })
        if args.shortlist:
            result.update(shortlist_metrics(test_rows, predictions))
        print(f"evaluate: {name}: exact {result['exact_match']:.3f} {result['exact_match_ci95']}, "
              f"category {result['category_match']:.3f}, valid {result['valid_rate']:.3f}, "
              f"top5 {result['top5_match']}, {result['samples_per_s']} samples/s")
        del model
        return predictions, result

    done = run(system, args.adapter)
    if done is None:
        return 1
    predictions, result = done
    if args.seed_adapters:
        seed_dir = Path(args.seed_adapters)
        manifest = read_json(seed_dir / "seeds.json")
        by_seed = {manifest["seeds"][0]: result}
        out_dir = Path("predictions/seeds") / system
        for seed in manifest["seeds"][1:]:
            extra = run(f"{system}-seed{seed}", seed_dir / f"seed-{seed}")
            if extra is None:
                return 1
            write_jsonl(out_dir / f"seed-{seed}.jsonl", extra[0])
            by_seed[seed] = extra[1]
        result["seeds"] = seed_summary(by_seed)
        write_json(out_dir / "seeds.json", result["seeds"])
    write_jsonl(f"predictions/{system}.jsonl", predictions)
    write_json(f"metrics/eval/{system}.json", result)
    for name in [system] + [f"{system}-seed{s}" for s in result.get("seeds", {}).get("seeds", [])[1:]]:
        Path(".resume", f"{name}.jsonl").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
