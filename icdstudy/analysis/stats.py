"""Paired comparisons of two systems on the same test rows."""
from __future__ import annotations

import numpy as np


def mcnemar_exact(a_correct, b_correct) -> dict:
    """Exact (binomial) McNemar test on paired 0/1 outcomes.

    b = rows only A got right, c = rows only B got right; under H0 each discordant row is a
    fair coin, p = two-sided binomial tail of min(b, c) in b + c trials.
    """
    from scipy.stats import binomtest

    a, b_ = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    only_a, only_b = int((a & ~b_).sum()), int((~a & b_).sum())
    n = only_a + only_b
    p = 1.0 if n == 0 else float(binomtest(min(only_a, only_b), n, 0.5, alternative="two-sided").pvalue)
    return {"only_a": only_a, "only_b": only_b, "p_value": min(1.0, p)}


def paired_bootstrap_diff(a_correct, b_correct, n_boot: int = 5000, seed: int = 42, alpha: float = 0.05) -> dict:
    """Difference in accuracy (A - B) with a percentile CI from resampling rows jointly."""
    a, b = np.asarray(a_correct, float), np.asarray(b_correct, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    diffs = a[idx].mean(axis=1) - b[idx].mean(axis=1)
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return {"diff": float(a.mean() - b.mean()), "ci95": [float(lo), float(hi)]}


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
