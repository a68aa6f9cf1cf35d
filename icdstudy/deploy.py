"""Selective coding: the encounters a system codes without human review at an agreed precision, and the cost.

Every prediction gets a confidence from one of SIGNALS. Which signal a system uses is chosen on the
validation split (the one whose risk-coverage curve has the smallest area there); so is, for each
target precision, the threshold: the lowest confidence at which the validation predictions at or
above it are at least that precise, i.e. the most coverage the target allows. The test split is then
scored at that threshold: the share of test encounters coded without review (coverage), and how
precise those codes are. Test labels never move a threshold.
"""
from __future__ import annotations

import numpy as np

# Confidence signals: f(prediction, the retriever's first candidate for that row) -> a number, higher = surer.
SIGNALS = {
    "top1": lambda p, first: _top(p, 0),                         # the top candidate's probability
    "margin": lambda p, first: _top(p, 0) - _top(p, 1),          # its lead over the second
    # agreeing with the TF-IDF retriever's first code ranks above any disagreeing row, then by probability
    "retriever_agreement": lambda p, first: float(p["pred"] is not None and p["pred"] == first) + _top(p, 0),
}


def _top(p: dict, i: int) -> float:
    if i == 0 and p.get("confidence") is not None:
        return float(p["confidence"])
    ranked = p.get("candidates") or []
    return float(ranked[i]["score"]) if len(ranked) > i and p.get("pred") is not None else 0.0


def key(target: float) -> str:
    """The suffix of a target's metrics keys: 0.95 -> p95."""
    return "p" + f"{100 * target:g}".replace(".", "_")


def confidences(predictions: list[dict], signal: str, first: dict[str, str | None]) -> list[float]:
    fn = SIGNALS[signal]
    return [fn(p, first.get(p["id"])) if p.get("pred") is not None else float("-inf") for p in predictions]


def correctness(predictions: list[dict]) -> list[bool]:
    return [p["pred"] is not None and p["pred"] == p["gold"] for p in predictions]


def risk_coverage(conf, correct) -> list[tuple[float, float, float]]:
    """(threshold, coverage, risk) at every distinct confidence, most confident first: coding every row
    whose confidence is at least the threshold covers that share of rows with that share of errors."""
    conf, correct = np.asarray(conf, float), np.asarray(correct, bool)
    n = conf.size
    if n == 0:
        return []
    order = np.argsort(-conf, kind="stable")
    conf, correct = conf[order], correct[order]
    errors = np.cumsum(~correct)
    ends = np.flatnonzero(np.append(conf[1:] != conf[:-1], True))  # last row of each group of equal confidence
    return [(float(conf[i]), (i + 1) / n, float(errors[i]) / (i + 1)) for i in ends]


def aurc(conf, correct) -> float | None:
    """Area under the risk-coverage curve (a step function over groups of equal confidence): the mean
    error rate a coder meets over all coverage levels; lower is better. Equal to the mean over k of the
    error rate of the k most confident rows when no two confidences tie."""
    curve = risk_coverage(conf, correct)
    if not curve:
        return None
    area, last = 0.0, 0.0
    for _, coverage, risk in curve:
        area += risk * (coverage - last)
        last = coverage
    return round(float(area), 4)


def choose_signal(val: list[dict], first: dict[str, str | None]) -> tuple[str, dict[str, float | None]]:
    """The signal with the smallest validation AURC (ties: the first of SIGNALS), and every signal's AURC."""
    correct = correctness(val)
    areas = {name: aurc(confidences(val, name, first), correct) for name in SIGNALS}
    best = min(SIGNALS, key=lambda n: (areas[n] if areas[n] is not None else 1.0, list(SIGNALS).index(n)))
    return best, areas


def choose_threshold(conf, correct, target: float) -> tuple[float | None, str | None]:
    """The lowest confidence whose rows at or above it are at least ``target`` precise (most coverage);
    (None, why) where no threshold reaches it."""
    curve = [(t, c, r) for t, c, r in risk_coverage(conf, correct) if np.isfinite(t)]
    ok = [(t, c) for t, c, r in curve if 1 - r >= target - 1e-12]
    if ok:
        return max(ok, key=lambda x: x[1])[0], None
    if not curve:
        return None, "no validation prediction has a confidence"
    best = min(curve, key=lambda x: (x[2], -x[1]))
    if best[2] >= 1:
        return None, "no validation prediction is right"
    return None, (f"validation precision never reaches {100 * target:g}% (at best {100 * (1 - best[2]):.1f}%, on the "
                  f"{100 * best[1]:.1f}% most confident rows)")


def wilson(k: int, n: int) -> list[float] | None:
    if n == 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return [round(float(ci.low), 4), round(float(ci.high), 4)]


def at_threshold(conf, correct, threshold: float | None) -> dict:
    """Coverage and precision of coding every row at or above ``threshold``, with Wilson 95% CIs."""
    if threshold is None:
        return {"coverage": None, "coverage_ci95": None, "precision": None, "precision_ci95": None, "coded": None}
    coded = np.asarray(conf, float) >= threshold
    right = np.asarray(correct, bool)
    n, k = coded.size, int(coded.sum())
    hits = int((coded & right).sum())
    return {"coverage": round(k / n, 4) if n else None, "coverage_ci95": wilson(k, n),
            "precision": round(hits / k, 4) if k else None, "precision_ci95": wilson(hits, k), "coded": k}


def usd_per_1k(samples_per_s: float | None, usd_per_hour: float) -> float | None:
    """Dollars per 1,000 encounters at a measured throughput and an hourly price."""
    if not samples_per_s:
        return None
    return round(1000 / samples_per_s / 3600 * usd_per_hour, 4)


def price(device: str, cfg: dict) -> float:
    return cfg["usd_per_hour"] if device == "cuda" else cfg["cpu_usd_per_hour"]


def thresholds(val: list[dict], first: dict[str, str | None], targets) -> dict:
    """Everything chosen on validation: the signal, its AURC per signal, and one threshold per target."""
    signal, areas = choose_signal(val, first)
    conf, correct = confidences(val, signal, first), correctness(val)
    chosen = {t: choose_threshold(conf, correct, t) for t in targets}
    return {"signal": signal, "signal_aurc_val": areas, "thresholds": chosen}


def view(predictions: list[dict], first: dict[str, str | None], chosen: dict, samples_per_s: float | None,
         device: str, cfg: dict) -> dict:
    """The deployment keys of one split, at thresholds chosen on validation (``chosen``, from ``thresholds``)."""
    conf, correct = confidences(predictions, chosen["signal"], first), correctness(predictions)
    cost = usd_per_1k(samples_per_s, price(device, cfg))
    out = {"confidence_signal": chosen["signal"], "aurc": aurc(conf, correct), "usd_per_1k": cost,
           "usd_per_hour": price(device, cfg), "cost_device": device}
    for target, (threshold, why) in chosen["thresholds"].items():
        k, at = key(target), at_threshold(conf, correct, threshold)
        out[f"threshold_at_{k}"] = None if threshold is None else round(threshold, 6)
        out[f"coverage_at_{k}"], out[f"coverage_at_{k}_ci95"] = at["coverage"], at["coverage_ci95"]
        out[f"precision_at_{k}"], out[f"precision_at_{k}_ci95"] = at["precision"], at["precision_ci95"]
        out[f"usd_per_1k_coded_at_{k}"] = round(cost / at["coverage"], 4) if cost and at["coverage"] else None
        if why:
            out[f"threshold_at_{k}_reason"] = why
    return out


def coded(predictions: list[dict], first: dict[str, str | None], signal: str, threshold: float | None) -> list[bool]:
    """Per row: coded without review at this threshold (never, where there is no threshold)."""
    if threshold is None:
        return [False] * len(predictions)
    return [c >= threshold for c in confidences(predictions, signal, first)]
