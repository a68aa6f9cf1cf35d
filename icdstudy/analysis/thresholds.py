"""Selective coding: the encounters a system codes without human review at a guaranteed precision, and the cost.

Every prediction gets a confidence from one of SIGNALS. Which signal a system uses is chosen on the
validation split (the one whose risk-coverage curve has the smallest area there). For each target
precision the threshold is certified on the calibration split, rows no choice has read, by
Learn-then-Test with fixed-sequence testing from the highest threshold down: with probability at least
1 - delta, the encounters coded without review (confidence >= threshold) are at least that precise, for
encounters exchangeable with the calibration rows. Its p-value at each threshold is the exact binomial
tail P(X <= errors), X ~ Bin(accepted, 1 - target). MAPIE's BinaryClassificationController (risk
`precision`, fixed_sequence) implements the same procedure, but its p-value counts ceil(accepted x error rate)
errors, with the error rate computed as 1 - precision in floating point: 70 x (1 - 68/70) = 2.000000000000001
errors become 3, and at 90% precision its p-value is 0.068 instead of the exact 0.024, which can stop the
sequence early and reports p-values the counts do not give; tests/test_scoring.py holds this
implementation to MAPIE's decisions wherever that rounding does not arise. Where nothing certifies, the threshold is None and every encounter goes to review. The
test split is then scored at that threshold: the share coded without review (coverage), the precision
reached, and what coding 1,000 encounters costs with the review of the rest. Test labels never move a
threshold; the stored threshold is the exact value every reader applies, with the same comparison.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import binom, binomtest

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


def error_free_rows_needed(target: float, delta: float) -> int:
    """The fewest accepted rows, all right, that certify ``target`` precision at ``delta``: target ** n <= delta."""
    return math.ceil(math.log(delta) / math.log(target))


CERTIFICATE = ("delta", "calibration_rows", "accepted", "errors", "p_value", "error_free_rows_needed", "stopped_at")


def certify(conf, correct, target: float, delta: float) -> dict:
    """The lowest threshold certified at ``target`` precision on these (calibration) rows by Learn-then-Test with
    fixed-sequence testing: thresholds are tested from the highest down, each by the exact binomial p-value
    P(X <= errors), X ~ Bin(accepted, 1 - target), and the sequence stops at the first that fails; the last one
    that held is kept (the most coverage with the guarantee). Only thresholds accepting at least
    ``error_free_rows_needed`` rows are tested (fewer can never certify), which depends on the confidences alone,
    never on the labels.

    Returns the counts that let anyone check it: threshold, delta, calibration_rows, error_free_rows_needed;
    accepted, errors and p_value of the certified threshold, or, where nothing certifies (threshold None, with a
    `reason`), of the test that failed: the first one tested, or, with too few rows to test any, of coding every
    row that has a confidence; and ``stopped_at``, the test that ended the sequence (threshold, accepted, errors,
    p_value; None where every threshold held)."""

    conf, correct = np.asarray(conf, float), np.asarray(correct, bool)
    need = error_free_rows_needed(target, delta)
    order = np.argsort(-conf, kind="stable")
    ranked, wrong = conf[order], np.cumsum(~correct[order])
    finite = int(np.isfinite(ranked).sum())
    out = {"threshold": None, "delta": delta, "calibration_rows": int(conf.size), "error_free_rows_needed": need}
    if finite < need:
        errors = int(wrong[finite - 1]) if finite else 0
        return {**out, "accepted": finite, "errors": errors, "p_value": float(binom.cdf(errors, finite, 1 - target)) if finite else 1.0,
                "stopped_at": None,
                "reason": f"{finite} calibration rows with a confidence: {100 * target:g}% precision needs at least "
                          f"{need} accepted rows, all right, to certify at delta {delta:g}"}
    tested = np.unique(ranked[need - 1:finite])[::-1]                       # the fixed sequence, highest first
    accepted = np.searchsorted(-ranked, -tested, side="right")             # rows with confidence >= threshold
    errors = wrong[accepted - 1]
    p_values = binom.cdf(errors, accepted, 1 - target)
    failed = np.flatnonzero(p_values > delta)
    stop = int(failed[0]) if failed.size else len(tested)

    def test(i: int) -> dict:
        return {"threshold": float(tested[i]), "accepted": int(accepted[i]), "errors": int(errors[i]),
                "p_value": float(p_values[i])}

    stopped = test(stop) if stop < len(tested) else None
    if stop == 0:
        return {**out, **{k: v for k, v in stopped.items() if k != "threshold"}, "stopped_at": stopped,
                "reason": f"no threshold certifies {100 * target:g}% precision at delta {delta:g} on {conf.size} "
                          f"calibration rows: the first tested accepts {stopped['accepted']} with {stopped['errors']} "
                          f"errors (p = {stopped['p_value']:.3g})"}
    return {**out, **test(stop - 1), "stopped_at": stopped}


def wilson(k: int, n: int) -> list[float] | None:
    if n == 0:
        return None

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


def _sig(x: float, digits: int = 3) -> float:
    """``x`` to ``digits`` significant figures: a floor's fraction of a cent stays what was measured, not 0."""
    return float(f"{x:.{digits}g}")


def usd_per_1k(samples_per_s: float | None, usd_per_hour: float) -> float | None:
    """Dollars per 1,000 encounters at a measured throughput and an hourly price."""
    if not samples_per_s:
        return None
    return _sig(1000 / samples_per_s / 3600 * usd_per_hour)


def with_review(inference_usd_per_1k: float | None, coverage: float | None, review_usd_per_chart: float) -> dict:
    """What coding 1,000 encounters costs when every one not coded automatically is reviewed by a coder, and the
    saving against reviewing all 1,000. Both keep the inference cost to 3 significant figures, however small
    beside the review: a floor's $0.0000227 stays in its total (2010.0000227) and in its saving (-0.0000227)."""
    if inference_usd_per_1k is None:
        return {"usd_per_1k_with_review": None, "review_saving_usd_per_1k": None}
    total = inference_usd_per_1k + (1 - (coverage or 0.0)) * 1000 * review_usd_per_chart
    digits = max(4, 2 - math.floor(math.log10(inference_usd_per_1k))) if inference_usd_per_1k > 0 else 4
    return {"usd_per_1k_with_review": round(total, digits),
            "review_saving_usd_per_1k": round(1000 * review_usd_per_chart - total, digits)}


def price(device: str, cfg: dict) -> float:
    return cfg["usd_per_hour"] if device == "cuda" else cfg["cpu_usd_per_hour"]


def certified_thresholds(val: list[dict], calibration: list[dict], first: dict[str, str | None], targets, delta: float) -> dict:
    """The signal chosen on validation (its AURC per signal), one certified threshold per target on the
    calibration rows (``first``: every row's retriever first code, both splits), and, per target, the
    threshold the same procedure fits on the validation rows with the share of them it codes: what choices
    rank systems by (icdstudy.analysis.selection), so no choice reads a calibration row."""
    signal, areas = choose_signal(val, first)
    conf, correct = confidences(calibration, signal, first), correctness(calibration)
    val_conf, val_correct = confidences(val, signal, first), correctness(val)
    fitted = {}
    for t in targets:
        threshold = certify(val_conf, val_correct, t, delta)["threshold"]
        fitted[t] = {"threshold": threshold, "coverage": at_threshold(val_conf, val_correct, threshold)["coverage"] or 0.0}
    return {"signal": signal, "signal_aurc_val": areas, "delta": delta,
            "certified": {t: certify(conf, correct, t, delta) for t in targets}, "fitted_on_val": fitted}


def view(predictions: list[dict], first: dict[str, str | None], chosen: dict, samples_per_s: float | None,
         device: str, cfg: dict) -> dict:
    """The deployment keys of one split, at the thresholds certified on calibration (``chosen``, from
    ``certified_thresholds``)."""
    conf, correct = confidences(predictions, chosen["signal"], first), correctness(predictions)
    cost = usd_per_1k(samples_per_s, price(device, cfg))
    out = {"confidence_signal": chosen["signal"], "aurc": aurc(conf, correct), "usd_per_1k": cost,
           "usd_per_hour": price(device, cfg), "cost_device": device, "review_usd_per_chart": cfg["review_usd_per_chart"]}
    for target, cert in chosen["certified"].items():
        k, threshold = key(target), cert["threshold"]
        at = at_threshold(conf, correct, threshold)
        out[f"threshold_at_{k}"] = threshold  # exact: score, the report and predict apply this very value
        out[f"certified_at_{k}"] = {name: cert[name] for name in CERTIFICATE}
        coverage = at["coverage"] or 0.0  # nothing certified: every encounter is reviewed
        out[f"coverage_at_{k}"], out[f"coverage_at_{k}_ci95"] = at["coverage"], at["coverage_ci95"]
        out[f"precision_at_{k}"], out[f"precision_at_{k}_ci95"] = at["precision"], at["precision_ci95"]
        out[f"precision_ci_at_{k}"] = at["precision_ci95"]
        out[f"usd_per_1k_coded_at_{k}"] = _sig(cost / coverage) if cost and coverage else None
        review = with_review(cost, coverage, cfg["review_usd_per_chart"])
        out[f"usd_per_1k_with_review_at_{k}"] = review["usd_per_1k_with_review"]
        if cert.get("reason"):
            out[f"threshold_at_{k}_reason"] = cert["reason"]
    headline = key(max(chosen["certified"]))
    out["usd_per_1k_with_review"] = out[f"usd_per_1k_with_review_at_{headline}"]
    out["review_saving_usd_per_1k"] = with_review(cost, out[f"coverage_at_{headline}"] or 0.0,
                                                  cfg["review_usd_per_chart"])["review_saving_usd_per_1k"]
    return out


def coded(predictions: list[dict], first: dict[str, str | None], signal: str, threshold: float | None) -> list[bool]:
    """Per row: coded without review at this threshold (never, where there is no threshold)."""
    if threshold is None:
        return [False] * len(predictions)
    return [c >= threshold for c in confidences(predictions, signal, first)]
