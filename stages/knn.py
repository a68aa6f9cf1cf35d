"""Stage `knn`: the retrieval floor knn-tfidf. Each input gets the codes of its nearest training inputs
(TF-IDF cosine, the same retriever that picks the examples of fewshot@<model> and the codes of the
shortlist prompts), ranked by summed similarity. What an LLM scores above this, it adds beyond retrieval.

Reads params `retrieval`, `eval.top_k` and `eval.max_samples`; predicts the validation and test splits
(their first eval.max_samples rows). Writes predictions/val/knn-tfidf.jsonl, predictions/knn-tfidf.jsonl
(each row with its ranked neighbours and their similarities) and predictions/runs/knn-tfidf.json.
Its first candidate is every shortlist's first code, and the retriever-agreement confidence signal of
stage `score`.
"""
import argparse
import sys
import time

from icdstudy import metrics, systems
from icdstudy.io import read_splits, write_json, write_jsonl
from icdstudy.params import ParamError, load_params, section
from icdstudy.retrieval import Retriever, knn_candidates

SYSTEM = systems.system(systems.from_stage("knn")[1])


def predict(retriever: Retriever, rows: list[dict], neighbours: int, top_k: int) -> list[dict]:
    predictions = []
    for row in rows:
        t = time.perf_counter()
        found = retriever.search([row], neighbours)[0]
        candidates = knn_candidates(found, top_k)
        latency = time.perf_counter() - t
        predictions.append({"id": row["id"], "gold": row["code"], "raw": candidates[0]["code"],
                            "pred": candidates[0]["code"], "valid": True, "candidates": candidates,
                            "confidence": candidates[0]["score"], "latency_s": round(latency, 6),
                            "input_truncated": False,
                            "neighbours": [{"id": n.id, "code": n.code, "score": n.score} for n in found]})
    return predictions


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        cfg, ecfg = section(params, "retrieval"), section(params, "eval")
        t0 = time.time()
        train_rows, *scored = read_splits(args.data, "train", *systems.SPLITS)
    except (ParamError, ValueError) as exc:
        print(f"knn: error: {exc}", file=sys.stderr)
        return 1
    top_k = max(ecfg["top_k"], 5)
    retriever = Retriever.from_params(train_rows, cfg)
    fit_s = time.time() - t0
    predictions = [predict(retriever, rows[:ecfg["max_samples"] or None], cfg["neighbours"], top_k) for rows in scored]
    for split, rows in zip(systems.SPLITS, predictions):
        write_jsonl(SYSTEM.predictions(split), rows)
    write_json(SYSTEM.run_record, {"system": SYSTEM.id, "kind": SYSTEM.kind.name, "model": SYSTEM.id,
                                   "params_total": int(retriever.matrix.nnz), "peak_mem_mb": metrics.peak_memory_mb(),
                                   "load_s": round(fit_s, 2), "wall_s": round(time.time() - t0, 2), "device": "cpu",
                                   "constrained": True, "top_k": top_k, "few_shot": 0, "neighbours": cfg["neighbours"]})
    print(f"knn: {SYSTEM.id}: " + ", ".join(f"{split} exact {sum(p['pred'] == p['gold'] for p in rows)}/{len(rows)}"
                                            for split, rows in zip(systems.SPLITS, predictions))
          + f", {cfg['neighbours']} neighbours")
    return 0


if __name__ == "__main__":
    sys.exit(main())
