"""The report's figures (matplotlib, PNG): readable at a glance, axes labelled with units."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .icd10 import CHAPTER_TITLES  # noqa: E402
from .systems import kind  # noqa: E402

COLORS = {"lora": "#1b9e77", "lora-shortlist": "#0b5d47", "zeroshot": "#d95f02", "fewshot": "#e6ab02",
          "shortlist": "#a6761d", "tfidf": "#7570b3", "knn": "#e7298a"}


def _color(system: str) -> str:
    return COLORS.get(kind(system), "#666666")


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def accuracy_by_system(evals: dict, out: Path) -> str:
    systems = list(evals)
    levels = [("exact_match", "exact code"), ("category_match", "category (3 chars)"), ("chapter_match", "chapter")]
    x = np.arange(len(systems))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(systems)), 4))
    for i, (key, label) in enumerate(levels):
        vals = [100 * evals[s][key] for s in systems]
        bars = ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=label, alpha=[1, 0.7, 0.45][i], color=[_color(s) for s in systems],
                      edgecolor="black", linewidth=0.5)
        if key == "exact_match":
            lo = [100 * (evals[s]["exact_match"] - evals[s]["exact_match_ci95"][0]) for s in systems]
            hi = [100 * (evals[s]["exact_match_ci95"][1] - evals[s]["exact_match"]) for s in systems]
            ax.errorbar(x - 0.27, vals, yerr=[lo, hi], fmt="none", ecolor="black", capsize=3)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v + 1, f"{v:.0f}", ha="center", fontsize=7)
    from matplotlib.patches import Patch

    ax.set_xticks(x, systems, rotation=15, ha="right")
    ax.set_ylabel("accuracy on the test split (%)")
    ax.set_ylim(0, 118)
    ax.legend(handles=[Patch(facecolor="grey", alpha=a, edgecolor="black", label=l)
                       for a, (_, l) in zip([1, 0.7, 0.45], levels)], fontsize=8, ncol=3, loc="upper center")
    ax.set_title("Test accuracy by ICD-10-CM level (error bars: 95% CI of exact match)", fontsize=10)
    return _save(fig, out)


def _scatter(evals: dict, xkey: str, xlabel: str, title: str, out: Path, scale: float = 1.0) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    for s, m in evals.items():
        xv = (m.get(xkey) or 0) * scale
        if xv <= 0:
            continue
        y = 100 * m["exact_match"]
        lo, hi = (100 * v for v in m["exact_match_ci95"])
        ax.errorbar([xv], [y], yerr=[[y - lo], [hi - y]], fmt="o", color=_color(s), capsize=3, markersize=8)
        ax.annotate(s, (xv, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("exact match (%)")
    ax.set_ylim(-5, 105)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, out)


def accuracy_vs_latency(evals: dict, out: Path) -> str:
    return _scatter(evals, "latency_p50_s", "median latency per sample (s, log scale)",
                    "Accuracy against latency: up and left is better", out)


def accuracy_vs_params(evals: dict, out: Path) -> str:
    return _scatter(evals, "params_total", "parameters (millions, log scale)", "Accuracy against model size", out, 1e-6)


def chapter_heatmap(per_chapter: dict[str, dict[str, float]], out: Path) -> str:
    systems = list(per_chapter)
    chapters = sorted({c for v in per_chapter.values() for c in v if c.isdigit()}, key=int)
    grid = np.array([[per_chapter[s].get(c, np.nan) * 100 for c in chapters] for s in systems])
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(chapters) + 3), 0.5 * len(systems) + 2.2))
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(chapters)), [f"{c}\n{CHAPTER_TITLES[c].split(' (')[1].rstrip(')')}" for c in chapters], fontsize=7)
    ax.set_yticks(range(len(systems)), systems, fontsize=8)
    for i in range(len(systems)):
        for j in range(len(chapters)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if grid[i, j] < 50 else "black")
    ax.set_xlabel("ICD-10-CM chapter of the gold code (code range)")
    fig.colorbar(im, ax=ax, label="exact match (%)")
    ax.set_title("Exact match by chapter", fontsize=10)
    return _save(fig, out)


def reliability(bins_by_system: dict[str, list[dict]], out: Path) -> str:
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    for s, bins in bins_by_system.items():
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color=_color(s), label=s)
    ax.set_xlabel("confidence of the top candidate")
    ax.set_ylabel("share of top candidates that are correct")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Reliability (10 equal-width bins)", fontsize=10)
    return _save(fig, out)


def _tsv(path: Path) -> dict[int, float]:
    if not path.exists():
        return {}
    with open(path) as fh:
        return {int(r["step"]): float(r[next(k for k in r if k not in ("step", "timestamp"))]) for r in csv.DictReader(fh, delimiter="\t")}


def training_curves(live_dirs: dict[str, Path], out: Path) -> str | None:
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for model, d in live_dirs.items():
        metrics = d / "plots" / "metrics"  # the curves the train stage keeps, with the optimizer step as x
        for name, style in (("loss.tsv", "-"), ("eval/loss.tsv", "o--")):
            pts = sorted(_tsv(metrics / name).items())
            if pts:
                ax.plot(*zip(*pts), style, label=f"{model} {'validation' if 'eval' in name else 'training'}")
                drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per answer token (nats)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("LoRA training and validation loss", fontsize=10)
    return _save(fig, out)


def error_breakdown(breakdown: dict, out: Path) -> str:
    """Each system's test rows split into correct and the three places an error can land."""
    kinds = [("correct", "correct", "#1b9e77"), ("right category, wrong code", "right category, wrong code", "#a6d854"),
             ("right chapter, wrong category", "right chapter, wrong category", "#fdae61"),
             ("wrong chapter", "wrong chapter", "#d7191c"), ("no prediction", "no prediction", "#999999")]
    systems = list(breakdown)
    fig, ax = plt.subplots(figsize=(7.5, 1.3 + 0.45 * len(systems)))
    left = np.zeros(len(systems))
    for key, label, color in kinds:
        n = np.array([breakdown[s][key] for s in systems], dtype=float)
        total = np.array([sum(breakdown[s].values()) for s in systems], dtype=float)
        share = 100 * n / np.maximum(total, 1)
        if share.any():
            ax.barh(systems, share, left=left, color=color, label=label, edgecolor="white")
        left += share
    ax.invert_yaxis()
    ax.set_xlabel("test rows (%)")
    ax.set_xlim(0, 100)
    ax.legend(fontsize=7, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.set_title("Where predictions land in the ICD-10-CM hierarchy", fontsize=10, pad=22)
    return _save(fig, out)
