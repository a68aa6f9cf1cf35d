"""The retrieval floor: each input gets the codes of its `retrieval.neighbours` nearest training inputs (TF-IDF
cosine: the retriever that picks the few-shot examples and the shortlists' codes), ranked by summed similarity.
Each row keeps its neighbours; its first candidate is stage `score`'s retriever-agreement signal.
"""
from __future__ import annotations

import time

from icdstudy.neighbours.retrieval import Retriever, knn_candidates


def predict(train_rows: list[dict], splits: list[list[dict]], cfg: dict, retrieval: dict, top_k: int = 5):
    """(per-sample predictions of each of ``splits``, the index's stored entries, fit seconds, record extras);
    its only settings are ``retrieval``'s."""
    t0 = time.time()
    retriever = Retriever.from_params(train_rows, retrieval)
    fit_s = time.time() - t0
    predictions = [_predict(retriever, rows, retrieval["neighbours"], top_k) for rows in splits]
    return predictions, int(retriever.matrix.nnz), fit_s, {"neighbours": retrieval["neighbours"]}


def _predict(retriever, rows: list[dict], neighbours: int, top_k: int) -> list[dict]:
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
