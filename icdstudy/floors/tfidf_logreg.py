"""The classical floor: TF-IDF n-grams + multinomial logistic regression (scikit-learn).

Its predictions have the same shape as the LLMs' (ranked candidates with probabilities), so
the same metrics code scores it, with real top-k and calibration.
"""
from __future__ import annotations

import time

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline


def predict(train_rows: list[dict], splits: list[list[dict]], cfg: dict, retrieval: dict, top_k: int = 5):
    """Fits once on ``train_rows`` with the entry's own hyperparameters (``cfg``; ``retrieval`` is not its
    business); returns (per-sample predictions of each of ``splits``, n_parameters, fit seconds, record extras)."""
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, cfg["ngram_max"]), sublinear_tf=True, min_df=cfg["min_df"],
                        max_features=cfg["max_features"]),
        LogisticRegression(C=cfg["C"], max_iter=cfg["max_iter"], random_state=cfg["seed"]),
    )
    t0 = time.perf_counter()
    model.fit([r["input"] for r in train_rows], [r["code"] for r in train_rows])
    fit_s = time.perf_counter() - t0
    classes = model.classes_
    return [_predict(model, classes, rows, top_k) for rows in splits], _size(model), fit_s, {}


def _size(model) -> int:
    clf = model[-1]
    return int(clf.coef_.size + clf.intercept_.size)


def _predict(model, classes, rows: list[dict], top_k: int) -> list[dict]:
    predictions = []
    for row in rows:
        t = time.perf_counter()
        probs = model.predict_proba([row["input"]])[0]
        latency = time.perf_counter() - t
        order = np.argsort(-probs)[:top_k]
        candidates = [{"code": str(classes[i]), "score": round(float(probs[i]), 6)} for i in order]
        predictions.append({"id": row["id"], "gold": row["code"], "raw": candidates[0]["code"],
                            "pred": candidates[0]["code"], "valid": True, "candidates": candidates,
                            "confidence": candidates[0]["score"], "latency_s": round(latency, 6),
                            "input_truncated": False})
    return predictions
