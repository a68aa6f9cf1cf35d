"""How the report writes numbers: percentages, p-values, dollars, coverage at a target."""
from __future__ import annotations


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def num(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def usd(x) -> str:
    return "n/a" if x is None else (f"${x:,.2f}" if x >= 0.1 else f"${x:.2g}")


def coverage(m: dict, k: str) -> str:
    """Coverage at a target, or "none" where validation reached no threshold (nothing is coded without review)."""
    return "none" if m.get(f"threshold_at_{k}_reason") else pct(m.get(f"coverage_at_{k}"))


def p(x) -> str:
    return "n/a" if x is None else f"{x:.2g}"
