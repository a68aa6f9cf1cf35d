"""Stage `baseline`: TF-IDF + logistic regression on the same splits and inputs as the LLMs.

Reads params `baseline` and `eval.top_k`; writes metrics/eval/tfidf-logreg.json and
predictions/tfidf-logreg.jsonl, scored by the same metrics code as every other system.
"""
import argparse
import sys
import time

from icdstudy import metrics
from icdstudy.baseline import train_and_predict
from icdstudy.io import read_splits, write_json, write_jsonl
from icdstudy.params import ParamError, load_params, section

SYSTEM = "tfidf-logreg"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    args = parser.parse_args()
    try:
        params = load_params(args.params)
        cfg, top_k = section(params, "baseline"), section(params, "eval")["top_k"]
        max_samples = section(params, "eval")["max_samples"]
        t0 = time.time()
        train_rows, test_rows = read_splits(args.data, "train", "test")
        test_rows = test_rows[:max_samples] if max_samples else test_rows  # the rows the LLM systems score
    except (ParamError, ValueError) as exc:
        print(f"baseline: error: {exc}", file=sys.stderr)
        return 1
    predictions, n_params, fit_s = train_and_predict(train_rows, test_rows, cfg, top_k=max(top_k, 5))
    result = metrics.quality(predictions)
    result.update(metrics.efficiency(predictions))
    result.update({"system": SYSTEM, "model": SYSTEM, "params_total": n_params, "peak_mem_mb": metrics.peak_memory_mb(),
                   "load_s": round(fit_s, 2), "wall_s": round(time.time() - t0, 2), "device": "cpu",
                   "constrained": True, "top_k": max(top_k, 5), "few_shot": 0,
                   "split_fingerprint": metrics.split_fingerprint(test_rows), "inputs_truncated": 0})
    write_jsonl(f"predictions/{SYSTEM}.jsonl", predictions)
    write_json(f"metrics/eval/{SYSTEM}.json", result)
    print(f"baseline: {SYSTEM}: exact {result['exact_match']:.3f} {result['exact_match_ci95']}, "
          f"top5 {result['top5_match']}, ece {result['ece']}, fit {fit_s:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
