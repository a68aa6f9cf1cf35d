import pytest

from icdstudy.analysis import metrics
from icdstudy.inference.generation import length_sorted_batches, parse_code


@pytest.mark.parametrize("text,code", [
    ("The code is E11.9 (type 2 diabetes mellitus without complications).", "E119"),
    ("icd-10: e119", "E119"),
    ("1. I10\n2. E78.5\n3. E11.9", "I10"),
    ("Based on the dialogue, the patient most likely has a sprain: S83.512A", "S83512A"),
    ("I cannot determine a code from this conversation.", None),
    ("A 45-year-old woman with pain", None),
    ("Z99.89", "Z9989"),  # code-shaped outside the label set: parsed, then judged by validity
])
def test_parser_on_realistic_outputs(text, code):
    assert parse_code(text) == code


def _row(gold, pred, cands=None, conf=None, valid=True):
    return {"gold": gold, "pred": pred, "valid": valid, "confidence": conf,
            "candidates": [{"code": c, "score": s} for c, s in cands] if cands else None}


def test_topk_uses_the_ranking_not_exact_match():
    rows = [_row("E119", "I10", [("I10", .5), ("E119", .3), ("A047", .1)], .5),
            _row("I10", "E785", [("E785", .4), ("E039", .3), ("F411", .1), ("D509", .05), ("I10", .01)], .4),
            _row("A047", "A047", [("A047", .9)], .9)]
    q = metrics.quality(rows)
    assert q["exact_match"] == pytest.approx(1 / 3, abs=1e-4)
    assert q["top3_match"] == pytest.approx(2 / 3, abs=1e-4)
    assert q["top5_match"] == 1.0


def test_unranked_systems_report_null_topk_and_ece():
    q = metrics.quality([_row("E119", "E119"), _row("I10", None, valid=False)])
    assert q["top3_match"] is None and q["top5_match"] is None and q["ece"] is None
    assert q["valid_rate"] == 0.5


def test_hierarchy_across_chapters():
    rows = [_row("E119", "E118"),     # same category E11
            _row("E119", "E039"),     # same chapter 4, other category
            _row("D509", "D320"),     # D50 (chapter 3) vs D32 (chapter 2): same letter, different chapter
            _row("T814XXA", "S83512A"),  # retired code placed through T814: chapter 19 like S
            _row("I10", None, valid=False)]
    q = metrics.quality(rows)
    assert q["category_match"] == pytest.approx(1 / 5)
    assert q["chapter_match"] == pytest.approx(3 / 5)
    assert q["exact_match"] == 0


def test_bootstrap_ci_covers_the_point_estimate_and_is_seeded():
    hits = [1] * 30 + [0] * 70
    lo, hi = metrics.bootstrap_ci(hits, seed=1)
    assert lo < 0.3 < hi and 0.18 < lo and hi < 0.42
    assert metrics.bootstrap_ci(hits, seed=1) == [lo, hi]


def test_ece_on_hand_built_cases():
    assert metrics.expected_calibration_error([1.0, 1.0], [1, 1]) == 0.0
    assert metrics.expected_calibration_error([0.9, 0.9, 0.9, 0.9], [1, 0, 0, 0]) == pytest.approx(0.65)


def test_macro_f1_counts_missing_predictions_as_wrong():
    assert metrics.macro_f1(["A", "B"], ["A", None]) == pytest.approx(0.5)


def test_length_sorted_batches_cover_every_index_once():
    batches = length_sorted_batches([5, 50, 7, 49, 6], 2)
    assert batches == [[1, 3], [2, 4], [0]]
