"""Stage floor@<system>: the predictions of one classical floor of params `systems.floors`.

    python stages/floor.py SYSTEM        e.g. `knn-tfidf`

method tfidf-logreg: TF-IDF + logistic regression (the entry's hyperparameters), fitted on the training
split. method knn-tfidf: each input gets the codes of its retrieval.neighbours nearest training inputs (TF-IDF
cosine, params `retrieval`: the retriever that picks the few-shot examples and the shortlists' codes),
ranked by summed similarity; each row keeps its neighbours, and its first candidate is stage `score`'s
retriever-agreement signal. Both read eval.top_k and eval.max_samples, predict the validation, calibration
and test splits (their first eval.max_samples rows, as every system does) and write
predictions/{val,calibration}/<system>.jsonl, predictions/<system>.jsonl and predictions/runs/<system>.json.
What an LLM scores above them, it adds beyond classical text classification and retrieval.
"""
import argparse
import sys
import time

from icdstudy.core import metrics, systems
from icdstudy.core.io import read_splits, write_json, write_jsonl
from icdstudy.core.params import ParamError, load_params, section


def knn_predict(retriever, rows: list[dict], neighbours: int, top_k: int) -> list[dict]:
    from icdstudy.neighbours.retrieval import knn_candidates

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


def knn_tfidf(train_rows, scored, cfg: dict, params: dict, top_k: int):
    """(predictions per split, size, fit seconds, record extras)."""
    from icdstudy.neighbours.retrieval import Retriever

    t0 = time.time()
    retrieval = section(params, "retrieval")
    retriever = Retriever.from_params(train_rows, retrieval)
    fit_s = time.time() - t0
    predictions = [knn_predict(retriever, rows, retrieval["neighbours"], top_k) for rows in scored]
    return predictions, int(retriever.matrix.nnz), fit_s, {"neighbours": retrieval["neighbours"]}


def tfidf_logreg(train_rows, scored, cfg: dict, params: dict, top_k: int):
    from icdstudy.floors.baseline import train_and_predict

    predictions, n_params, fit_s = train_and_predict(train_rows, scored, cfg, top_k=top_k)
    return predictions, n_params, fit_s, {}


METHODS = {"knn-tfidf": knn_tfidf, "tfidf-logreg": tfidf_logreg}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("system", help="an id under systems.floors in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        system = systems.get(params, args.system)
        if not system.floor:
            raise ValueError(f"{system.id} is no floor: its stage is {system.stage}")
        ecfg = section(params, "eval")
        t0 = time.time()
        train_rows, *scored = read_splits(args.data, "train", *systems.SPLITS)
    except (ParamError, ValueError) as exc:
        print(f"floor: error: {exc}", file=sys.stderr)
        return 1
    top_k = max(ecfg["top_k"], 5)
    scored = [rows[:ecfg["max_samples"] or None] for rows in scored]
    predictions, size, fit_s, extra = METHODS[system.method](train_rows, scored, system.settings, params, top_k)
    for split, rows in zip(systems.SPLITS, predictions):
        write_jsonl(system.predictions(split), rows)
    write_json(system.run_record, {"system": system.id, "method": system.method, "model": system.id,
                                   "params_total": size, "peak_mem_mb": metrics.peak_memory_mb(),
                                   "load_s": round(fit_s, 2), "wall_s": round(time.time() - t0, 2), "device": "cpu",
                                   "constrained": True, "top_k": top_k, "few_shot": 0, **extra})
    val = predictions[0]
    print(f"floor: {system.id}: val exact {sum(p['pred'] == p['gold'] for p in val)}/{len(val)}, fit {fit_s:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
