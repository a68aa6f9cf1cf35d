"""Paired comparisons of two systems on the same test rows, in two families corrected apart.

Every fine-tuned system is compared with every untrained one, and each system with the one its entry `adds` to
(``pairs``): exact match (paired bootstrap CI, McNemar's exact test), coverage at the headline precision where both
are certified, the cost with review, speed and memory, and how many training seeds agree. ``adjust`` corrects the
p-values by Holm within the primary family (the exact-match tests of the comparisons params `comparisons.primary`
declares before any result, icdstudy.analysis.selection) and within the exploratory one (every other test), and
reads each test's CI at its Holm step, so an interval printed beside an adjusted p-value is adjusted the same way.
"""
from __future__ import annotations

from icdstudy.analysis import thresholds
from icdstudy.analysis.stats import bootstrap_ci, holm, holm_levels, mcnemar_exact, paired_bootstrap_diff
from icdstudy import systems

ALPHA = 0.05


class PairingError(ValueError):
    """Two systems' predictions cannot be compared row by row."""


def paired(ca: list[bool], cb: list[bool]) -> dict:
    """A - B on paired 0/1 outcomes: the difference with its bootstrap CI, and McNemar's exact test."""
    return {"n": len(ca), **paired_bootstrap_diff(ca, cb), "mcnemar": mcnemar_exact(ca, cb)}


def aligned(rows_a: list[dict], rows_b: list[dict], a: str = "A", b: str = "B") -> list[str]:
    """The row ids both systems predicted, after checking they are the same rows with the same gold
    codes (anything else raises PairingError)."""
    pa = {r["id"]: r for r in rows_a}
    pb = {r["id"]: r for r in rows_b}
    if set(pa) != set(pb):
        only = sorted(set(pa) ^ set(pb))
        raise PairingError(f"{a} and {b} predicted different test rows ({len(only)} in one only, e.g. {only[0]}); "
                           "rerun both stages on the same split")
    for i in pa:
        if pa[i]["gold"] != pb[i]["gold"]:
            raise PairingError(f"test row {i} has gold code {pa[i]['gold']} in {a} but {pb[i]['gold']} in {b}: "
                               "their predictions come from different data; rerun both stages")
    return list(pa)


def compare_rows(rows_a: list[dict], rows_b: list[dict], a: str = "A", b: str = "B") -> dict:
    """Exact-match difference (A - B) with its bootstrap CI and McNemar's test on the same rows."""
    ids = aligned(rows_a, rows_b, a, b)
    pa, pb = ({r["id"]: r for r in rows} for rows in (rows_a, rows_b))
    return paired([pa[i]["pred"] == pa[i]["gold"] for i in ids], [pb[i]["pred"] == pb[i]["gold"] for i in ids])


def same_split(ma: dict, mb: dict) -> bool:
    """Both systems were scored on the same test rows (metrics' split_fingerprint, recorded for every system)."""
    return bool(ma.get("split_fingerprint")) and ma.get("split_fingerprint") == mb.get("split_fingerprint")


def coded_rows(system: str, evals: dict, preds: dict, first: dict, target: float) -> dict[str, bool]:
    """Per test row: coded without review by ``system`` at ``target`` (its signal, chosen on validation, and its
    threshold, certified on calibration, as its metrics record them)."""
    m, k = evals[system], thresholds.key(target)
    flags = thresholds.coded(preds[system], first, m.get("confidence_signal") or "top1", m.get(f"threshold_at_{k}"))
    return {r["id"]: f for r, f in zip(preds[system], flags)}


def compare(a: str, b: str, evals: dict, preds: dict, first: dict, target: float,
            seed_preds: dict | None = None) -> dict:
    """A vs B on the same test rows: exact match, coverage at ``target`` precision, cost ratios and (with several
    training seeds) in how many seeds the exact-match direction holds. Systems scored on different splits
    are not paired: the result says so (``unpaired``) and carries no numbers."""
    ma, mb = evals[a], evals[b]
    if not same_split(ma, mb):
        return {"a": a, "b": b, "unpaired": (ma.get("split_fingerprint"), mb.get("split_fingerprint"))}
    c = {"a": a, "b": b, **compare_rows(preds[a], preds[b], a, b)}
    ids = [r["id"] for r in preds[a]]
    k = thresholds.key(target)
    if ma.get(f"threshold_at_{k}") is not None and mb.get(f"threshold_at_{k}") is not None:
        ca, cb = coded_rows(a, evals, preds, first, target), coded_rows(b, evals, preds, first, target)
        c["coverage"] = paired([ca[i] for i in ids], [cb[i] for i in ids])
    else:  # a looser, uncertified rule must not win on coverage: both compared by what coding costs with review
        c["coverage"] = None
        c["not_certified"] = [s for s, m in ((a, ma), (b, mb)) if m.get(f"threshold_at_{k}") is None]
    c["with_review"] = (ma.get(f"usd_per_1k_with_review_at_{k}"), mb.get(f"usd_per_1k_with_review_at_{k}"))
    c["seeds"] = seed_agreement(a, b, c, seed_preds or {}, preds)
    return {**c, "speed_ratio": _ratio(ma.get("samples_per_s"), mb.get("samples_per_s")),
            "memory_ratio": _ratio(mb.get("peak_mem_mb"), ma.get("peak_mem_mb"))}


def _ratio(a, b) -> float | None:
    return (a / b) if a and b else None


def seed_agreement(a: str, b: str, first: dict, seed_preds: dict, preds: dict) -> dict | None:
    """In how many of A's training seeds the first seed's exact-match direction against B holds. None with
    a single seed."""
    runs = seed_preds.get(a) or {}
    if not runs:
        return None
    sign = (first["diff"] > 0) - (first["diff"] < 0)
    same = 1  # the first seed is the comparison itself
    for name, rows in runs.items():
        d = compare_rows(rows, preds[b], f"{a} ({name})", b)["diff"]
        same += ((d > 0) - (d < 0)) == sign
    return {"seeds": 1 + len(runs), "same_direction": same}


def pairs(selected: list[systems.System]) -> list[tuple[str, str]]:
    """Every fine-tuned system against every untrained one, then each system against the one it changes by one
    thing (its entry's `adds`), where both are selected."""
    ids = {s.id for s in selected}
    tuned = [s.id for s in selected if s.fine_tuned]
    others = [s.id for s in selected if not s.fine_tuned]
    out = [(a, b) for a in tuned for b in others]
    for s in selected:
        if s.adds:
            base = s.adds[0]
            if base in ids and (s.id, base) not in out:
                out.append((s.id, base))
    return out


def adjust(comparisons: dict, primary) -> None:
    """Holm-adjusted p-values within each family. The primary family is the exact-match test of each primary pair
    (declared before any result, the pairs chosen on validation): its size never depends on a calibration draw.
    The exploratory family holds every other pair's exact-match test and every coverage test (a coverage test
    exists only where both systems are certified, which the calibration rows decide). Each test also gets
    ``ci_adjusted``, its bootstrap CI at its Holm step's level (``ci_level``)."""
    done = {pair: c for pair, c in comparisons.items() if "unpaired" not in c}
    for pair, c in comparisons.items():
        c["family"] = "primary" if pair in primary else "exploratory"
    families = {"primary": [c for pair, c in done.items() if pair in primary],
                "exploratory": [c for pair, c in done.items() if pair not in primary]
                + [c["coverage"] for c in done.values() if c["coverage"] is not None]}
    for tests in families.values():
        p_values = [t["mcnemar"]["p_value"] for t in tests]
        for t, adjusted, level in zip(tests, holm(p_values), holm_levels(p_values, ALPHA)):
            t["p_holm"], t["significant"] = adjusted, adjusted < ALPHA
            t["ci_level"], t["ci_adjusted"] = level, bootstrap_ci(t["draws"], 1 - level)
