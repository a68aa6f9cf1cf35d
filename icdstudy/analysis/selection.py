"""Which systems lead the Answer, chosen from validation numbers alone.

The report's Answer names the best fine-tuned system, the best large prompted system and the best floor, and
its primary family of tests compares them. Each is ranked by what a coding team would deploy, measured on
validation only: the share of validation encounters a threshold fitted on validation codes at the target
precision (``val_fitted_coverage_at_<p>``: the Learn-then-Test threshold computed on the validation rows
themselves), then validation exact match, then the id. The calibration rows are read by no choice: they only
certify the thresholds of systems already chosen. Ranking by a calibration-certified threshold instead would let a
lucky calibration draw choose its own system and void the guarantee (among 8 equally good systems, the chosen
one's certificate failed 14% of the time at delta 0.1; tests/test_selection.py simulates both rules).
"""
from __future__ import annotations

from icdstudy.analysis import thresholds

def rank(m: dict | None, k: str) -> tuple[float, float]:
    """A system's validation standing at target key ``k``: fitted-threshold coverage, then exact match."""
    m = m or {}
    return m.get(f"val_fitted_coverage_at_{k}") or 0.0, m.get("exact_match") or 0.0


def best(candidates: list[str], vals: dict, target: float) -> str | None:
    k = thresholds.key(target)
    return max(candidates, key=lambda s: (*rank(vals.get(s), k), s), default=None)


def headline_pair(sel: dict, vals: dict, target: float) -> tuple[str | None, str | None, str]:
    """The best fine-tuned system and the best large prompted one; a note where every prompted model is also
    fine-tuned (the best prompted system stands in). ``sel``: the selected systems by id; ``vals``: their
    validation metrics."""
    chosen = [s for s in sel.values() if s.id in vals]
    fine_models = {s.model for s in chosen if s.fine_tuned}
    prompted = [s for s in chosen if not s.fine_tuned and not s.floor]
    large, note = [s.id for s in prompted if s.model not in fine_models], ""
    if not large:
        large = [s.id for s in prompted]
        note = " (every prompted model here is also a fine-tuned one: the best prompted system stands in)"
    return best([s.id for s in chosen if s.fine_tuned], vals, target), best(large, vals, target), note


def best_floor(sel: dict, vals: dict, target: float) -> str | None:
    return best([s.id for s in sel.values() if s.floor and s.id in vals], vals, target)


def primary_pairs(sel: dict, vals: dict, target: float, declared) -> dict[tuple[str, str], str]:
    """The declared primary comparisons, as {(A, B): role}: `headline`, `floor` (both A the best fine-tuned system)
    and `adds` (each system against the one its entry changes by one thing)."""
    out: dict[tuple[str, str], str] = {}
    tuned, large, _ = headline_pair(sel, vals, target)
    if "headline" in declared and tuned and large:
        out[(tuned, large)] = "headline"
    floor = best_floor(sel, vals, target)
    if "floor" in declared and tuned and floor:
        out.setdefault((tuned, floor), "floor")
    if "adds" in declared:
        for s in sel.values():
            if s.adds and s.id in vals and s.adds[0] in vals:
                out.setdefault((s.id, s.adds[0]), "adds")
    return out
