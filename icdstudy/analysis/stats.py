"""The statistics of paired comparisons on the same test rows: McNemar's exact test, the paired bootstrap of the
difference, and Holm's step-down correction within a family of tests, with confidence intervals at each test's
Holm step (Bonferroni's level for the tests still in play there), so a CI printed beside an adjusted p-value is
adjusted the same way."""
from __future__ import annotations

import numpy as np
from scipy.stats import binomtest


def mcnemar_exact(a_correct, b_correct) -> dict:
    """Exact (binomial) McNemar test on paired 0/1 outcomes.

    b = rows only A got right, c = rows only B got right; under H0 each discordant row is a
    fair coin, p = two-sided binomial tail of min(b, c) in b + c trials.
    """

    a, b_ = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    only_a, only_b = int((a & ~b_).sum()), int((~a & b_).sum())
    n = only_a + only_b
    p = 1.0 if n == 0 else float(binomtest(min(only_a, only_b), n, 0.5, alternative="two-sided").pvalue)
    return {"only_a": only_a, "only_b": only_b, "p_value": min(1.0, p)}


def paired_bootstrap_diff(a_correct, b_correct, n_boot: int = 5000, seed: int = 42, alpha: float = 0.05) -> dict:
    """Difference in accuracy (A - B) with a percentile CI from resampling rows jointly; ``draws`` keeps the
    resampled differences, so the CI can be read again at another level (``bootstrap_ci``)."""
    a, b = np.asarray(a_correct, float), np.asarray(b_correct, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    diffs = a[idx].mean(axis=1) - b[idx].mean(axis=1)
    return {"diff": float(a.mean() - b.mean()), "ci95": bootstrap_ci(diffs, alpha), "draws": diffs}


def bootstrap_ci(draws, alpha: float) -> list[float]:
    lo, hi = np.quantile(np.asarray(draws), [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


def holm(p_values) -> list[float]:
    """Holm's step-down adjustment: adjusted p-values that control the family-wise error rate of all the
    tests together (reject where adjusted p < alpha). Uniformly more powerful than Bonferroni, and valid
    under any dependence between the tests, which paired comparisons sharing systems have."""
    p = np.asarray(list(p_values), dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return [float(x) for x in adjusted]


def holm_levels(p_values, alpha: float = 0.05) -> list[float]:
    """Each test's confidence level at its Holm step: the test with the (j+1)-th smallest p-value of m is judged
    at alpha / (m - j), so its CI is a 1 - alpha / (m - j) interval (ties keep their input order)."""
    p = np.asarray(list(p_values), dtype=float)
    order = np.argsort(p, kind="stable")
    levels = np.empty(p.size)
    for rank, i in enumerate(order):
        levels[i] = 1 - alpha / (p.size - rank)
    return [float(x) for x in levels]
