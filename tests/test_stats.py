import pytest

from icdstudy.analysis.stats import bootstrap_ci, holm_levels, mcnemar_exact, paired_bootstrap_diff


def test_mcnemar_against_a_hand_computed_table():
    # 2x2 table: both right 5, only A 6, only B 1, both wrong 3.
    a = [1] * 5 + [1] * 6 + [0] * 1 + [0] * 3
    b = [1] * 5 + [0] * 6 + [1] * 1 + [0] * 3
    r = mcnemar_exact(a, b)
    assert (r["only_a"], r["only_b"]) == (6, 1)
    # two-sided binomial: 2 * P(X <= 1 | n=7, p=.5) = 2 * (1 + 7) / 128 = 0.125
    assert r["p_value"] == pytest.approx(0.125)


def test_mcnemar_without_discordant_pairs_is_one():
    assert mcnemar_exact([1, 0, 1], [1, 0, 1])["p_value"] == 1.0


def test_mcnemar_symmetric_and_small_for_lopsided_tables():
    a, b = [1] * 20 + [0] * 5, [0] * 20 + [0] * 5
    assert mcnemar_exact(a, b)["p_value"] == pytest.approx(2 * 0.5 ** 20)
    assert mcnemar_exact(a, b)["p_value"] == mcnemar_exact(b, a)["p_value"]


def test_paired_bootstrap_diff_matches_the_point_estimate_and_is_seeded():
    a = [1] * 30 + [0] * 10
    b = [1] * 10 + [0] * 30
    r = paired_bootstrap_diff(a, b, seed=3)
    assert r["diff"] == pytest.approx(0.5)
    lo, hi = r["ci95"]
    assert lo < 0.5 < hi and lo > 0.25 and hi < 0.75
    again = paired_bootstrap_diff(a, b, seed=3)
    assert again["ci95"] == r["ci95"] and (again["draws"] == r["draws"]).all()
    wider = bootstrap_ci(r["draws"], 0.05 / 3)  # the same draws read at a Holm step's level: a wider interval
    assert wider[0] <= lo and wider[1] >= hi
    same = paired_bootstrap_diff(a, a)
    assert same["diff"] == 0 and same["ci95"] == [0.0, 0.0]  # identical predictions: no uncertainty


def test_holm_levels_follow_the_step_each_test_is_judged_at():
    # p-values sorted 0.005 < 0.01 < 0.03 < 0.04: judged at 0.05/4, 0.05/3, 0.05/2, 0.05/1
    assert holm_levels([0.01, 0.04, 0.03, 0.005]) == pytest.approx([1 - 0.05 / 3, 0.95, 1 - 0.05 / 2, 1 - 0.05 / 4])
    assert holm_levels([0.2]) == pytest.approx([0.95])


def test_seed_agreement_counts_the_seeds_whose_direction_matches_the_first():
    from icdstudy.analysis.comparisons import compare_rows, seed_agreement

    def rows(right: int) -> list[dict]:
        return [{"id": str(i), "gold": "A", "pred": "A" if i < right else "B"} for i in range(10)]

    a, b = rows(7), rows(5)
    first = compare_rows(a, b)
    assert first["diff"] > 0
    assert seed_agreement("a", "b", first, {}, {"a": a, "b": b}) is None  # one seed
    seeds = {"seed-1": rows(6), "seed-2": rows(4), "seed-3": rows(5)}  # better, worse, level
    assert seed_agreement("a", "b", first, {"a": seeds}, {"a": a, "b": b}) == {"seeds": 4, "same_direction": 2}
