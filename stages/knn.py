"""Stage `knn`: the retrieval floor `knn-tfidf`. Each test input gets the codes of its nearest
training inputs (TF-IDF cosine, the same retriever that picks the examples of fewshot@<model>),
ranked by summed similarity. What an LLM scores above this, it adds beyond retrieval.

Reads params `retrieval` and `eval.top_k`; writes metrics/eval/knn-tfidf.json and
predictions/knn-tfidf.jsonl (each row with its ranked neighbours and their similarities).
"""
import argparse
import sys
import time

from icdstudy import metrics
from icdstudy.io import read_splits, write_json, write_jsonl
from icdstudy.params import ParamError, load_params, section
from icdstudy.retrieval import Retriever, knn_candidates

SYSTEM = "knn-tfidf"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    args = parser.parse_args()
    try:
        params = load_params(args.params)
        cfg, top_k = section(params, "retrieval"), max(section(params, "eval")["top_k"], 5)
        max_samples = section(params, "eval")["max_samples"]
        t0 = time.time()
        train_rows, test_rows = read_splits(args.data, "train", "test")
        test_rows = test_rows[:max_samples] if max_samples else test_rows  # the rows the LLM systems score
    except (ParamError, ValueError) as exc:
        print(f"knn: error: {exc}", file=sys.stderr)
        return 1
    retriever = Retriever.from_params(train_rows, cfg)
    fit_s = time.time() - t0
    predictions = []
    for row in test_rows:
        t = time.perf_counter()
        found = retriever.search([row], cfg["neighbours"])[0]
        candidates = knn_candidates(found, top_k)
        latency = time.perf_counter() - t
        predictions.append({"id": row["id"], "gold": row["code"], "raw": candidates[0]["code"],
                            "pred": candidates[0]["code"], "valid": True, "candidates": candidates,
                            "confidence": candidates[0]["score"], "latency_s": round(latency, 6),
                            "input_truncated": False,
                            "neighbours": [{"id": n.id, "code": n.code, "score": n.score} for n in found]})
    result = metrics.quality(predictions)
    result.update(metrics.efficiency(predictions))
    result.update({"system": SYSTEM, "model": SYSTEM, "params_total": int(retriever.matrix.nnz),
                   "peak_mem_mb": metrics.peak_memory_mb(), "load_s": round(fit_s, 2),
                   "wall_s": round(time.time() - t0, 2), "device": "cpu", "constrained": True, "top_k": top_k,
                   "few_shot": 0, "split_fingerprint": metrics.split_fingerprint(test_rows),
                   "neighbours": cfg["neighbours"], "inputs_truncated": 0})
    write_jsonl(f"predictions/{SYSTEM}.jsonl", predictions)
    write_json(f"metrics/eval/{SYSTEM}.json", result)
    print(f"knn: {SYSTEM}: exact {result['exact_match']:.3f} {result['exact_match_ci95']}, "
          f"top5 {result['top5_match']}, ece {result['ece']}, {cfg['neighbours']} neighbours")
    return 0


if __name__ == "__main__":
    sys.exit(main())
