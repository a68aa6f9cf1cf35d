"""Quality metrics with confidence intervals, and the paired statistics the report uses.

Every function takes plain lists, so the math is testable on hand-built cases.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
from sklearn.metrics import f1_score

from icdstudy import icd10


def split_fingerprint(rows: list[dict]) -> str:
    """What a system was scored on: a hash of the evaluated rows' ids, gold codes and inputs, in order.
    Two systems are paired row by row only when theirs are equal."""
    rows = [[r["id"], r["code"], r["input"]] for r in rows]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:16]


def bootstrap_ci(hits, n_boot: int = 2000, seed: int = 42, alpha: float = 0.05) -> list[float]:
    """Percentile bootstrap CI of a mean of 0/1 outcomes."""
    hits = np.asarray(hits, dtype=float)
    if hits.size == 0:
        return [0.0, 0.0]
    rng = np.random.default_rng(seed)
    means = hits[rng.integers(0, hits.size, size=(n_boot, hits.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return [round(float(lo), 4), round(float(hi), 4)]


def reliability_bins(confidences, correct, n_bins: int = 10) -> list[dict]:
    """Equal-width confidence bins (the first one closed at 0) with their mean confidence and accuracy."""
    conf = np.asarray(confidences, dtype=float)
    corr = np.asarray(correct, dtype=float)
    edges = np.linspace(0, 1, n_bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if in_bin.any():
            out.append({"lo": float(lo), "hi": float(hi), "n": int(in_bin.sum()),
                        "confidence": float(conf[in_bin].mean()), "accuracy": float(corr[in_bin].mean())})
    return out


def expected_calibration_error(confidences, correct, n_bins: int = 10) -> float:
    bins = reliability_bins(confidences, correct, n_bins)
    total = sum(b["n"] for b in bins)
    return round(float(sum(b["n"] / total * abs(b["confidence"] - b["accuracy"]) for b in bins)), 4) if total else 0.0


def macro_f1(gold: list[str], pred: list[str | None]) -> float:
    """Macro-F1 over the gold labels of the test set (a missing prediction counts as wrong)."""

    labels = sorted(set(gold))
    pred = [p if p is not None else "<none>" for p in pred]
    return round(float(f1_score(gold, pred, labels=labels, average="macro", zero_division=0)), 4)


def quality(rows: list[dict], seed: int = 42) -> dict:
    """rows: per-sample predictions with ``gold``, ``pred``, ``valid`` and (if ranked) ``candidates``."""
    gold = [r["gold"] for r in rows]
    pred = [r["pred"] for r in rows]
    exact = [p == g for p, g in zip(pred, gold)]
    cat = [p is not None and icd10.category(p) == icd10.category(g) for p, g in zip(pred, gold)]
    chap = [p is not None and icd10.chapter(p) is not None and icd10.chapter(p) == icd10.chapter(g)
            for p, g in zip(pred, gold)]
    ranked = bool(rows) and all(r.get("candidates") for r in rows)

    def top(k):
        if not ranked:
            return None
        return round(float(np.mean([r["gold"] in [c["code"] for c in r["candidates"][:k]] for r in rows])), 4)

    confident = [r.get("confidence") for r in rows]
    has_conf = bool(rows) and all(c is not None for c in confident)
    n = len(rows)
    return {
        "n": n,
        "exact_match": round(float(np.mean(exact)), 4) if n else 0.0,
        "exact_match_ci95": bootstrap_ci(exact, seed=seed),
        "category_match": round(float(np.mean(cat)), 4) if n else 0.0,
        "chapter_match": round(float(np.mean(chap)), 4) if n else 0.0,
        "valid_rate": round(float(np.mean([r["valid"] for r in rows])), 4) if n else 0.0,
        "macro_f1": macro_f1(gold, pred) if n else 0.0,
        "top3_match": top(3),
        "top5_match": top(5),
        "ece": expected_calibration_error(confident, exact) if has_conf else None,
    }


def efficiency(rows: list[dict]) -> dict:
    """Speed from the per-sample latencies recorded around generation only."""
    lat = np.asarray([r["latency_s"] for r in rows], dtype=float)
    gen_s = float(lat.sum())
    return {
        "samples_per_s": round(len(rows) / gen_s, 3) if gen_s > 0 else None,
        "latency_p50_s": round(float(np.quantile(lat, 0.5)), 4) if lat.size else None,
        "latency_p95_s": round(float(np.quantile(lat, 0.95)), 4) if lat.size else None,
        "generate_s": round(gen_s, 2),
    }


def seed_summary(by_seed: dict) -> dict:
    """Spread of one fine-tuned model's exact match over training seeds (first seed first).
    SD is the sample SD (n - 1); None with a single seed, where there is no spread to report."""
    seeds = list(by_seed)
    em = np.asarray([by_seed[s]["exact_match"] for s in seeds], dtype=float)
    return {
        "seeds": seeds,
        "exact_match_by_seed": {str(s): float(v) for s, v in zip(seeds, em)},
        "exact_match_mean": round(float(em.mean()), 4),
        "exact_match_sd": round(float(em.std(ddof=1)), 4) if em.size > 1 else None,
        "exact_match_min": float(em.min()),
        "exact_match_max": float(em.max()),
    }
