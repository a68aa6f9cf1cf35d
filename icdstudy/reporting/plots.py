"""The report's figures (matplotlib, PNG): readable at a glance, axes labelled with units."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402
import numpy as np  # noqa: E402

from icdstudy import systems  # noqa: E402
from icdstudy.analysis import errors, metrics, thresholds  # noqa: E402
from icdstudy.analysis.errors import per_chapter_accuracy  # noqa: E402
from icdstudy.icd10 import CHAPTER_TITLES  # noqa: E402
from icdstudy.reporting import names  # noqa: E402
from icdstudy.systems import System  # noqa: E402

MARKERS = "osD^v<>Ph*X"
_TABLE: dict[str, System] = {}  # the systems being plotted, by id (use_systems)


def use_systems(table: dict[str, System]) -> None:
    """The table the plots colour and mark systems by (what each one is: fine-tuned, prompt style, model)."""
    _TABLE.clear()
    _TABLE.update(table)


def _color(system: str) -> str:
    return names.color(_TABLE[system]) if system in _TABLE else "#666666"


def _model(system: str) -> str:
    return (_TABLE[system].model if system in _TABLE else None) or system


def _markers(systems) -> dict[str, str]:
    """One marker per model (floors get their own), so systems of one style on different models differ."""
    models = list(dict.fromkeys(_model(s) for s in systems))
    return {s: MARKERS[models.index(_model(s)) % len(MARKERS)] for s in systems}


def _save(fig, path: Path, **layout) -> str:
    """Saved with every artist inside the image (bbox_inches="tight"): a legend outside the axes is kept whole.
    ``layout``: tight_layout's padding (w_pad between panels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(**layout)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def accuracy_by_system(evals: dict, out: Path) -> str:
    """Exact, category and chapter accuracy per system as horizontal bars: names stay readable at any count."""

    systems = list(evals)
    levels = [("exact_match", "exact code"), ("category_match", "category (3 chars)"), ("chapter_match", "chapter")]
    y = np.arange(len(systems))
    fig, ax = plt.subplots(figsize=(7.5, 1.0 + 0.62 * len(systems)))
    for i, (key, label) in enumerate(levels):
        vals = [100 * evals[s][key] for s in systems]
        bars = ax.barh(y + (i - 1) * 0.27, vals, 0.27, label=label, alpha=[1, 0.7, 0.45][i],
                       color=[_color(s) for s in systems], edgecolor="black", linewidth=0.5)
        if key == "exact_match":
            lo = [100 * (evals[s]["exact_match"] - evals[s]["exact_match_ci95"][0]) for s in systems]
            hi = [100 * (evals[s]["exact_match_ci95"][1] - evals[s]["exact_match"]) for s in systems]
            ax.errorbar(vals, y - 0.27, xerr=[lo, hi], fmt="none", ecolor="black", capsize=2, linewidth=0.8)
            ends = [v + h for v, h in zip(vals, hi)]
        else:
            ends = vals
        for b, v, end in zip(bars, vals, ends):
            ax.text(end + 1, b.get_y() + b.get_height() / 2, f"{v:.0f}", va="center", fontsize=6)
    ax.set_yticks(y, systems, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy on the test split (%)")
    ax.set_xlim(0, 110)
    ax.legend(handles=[Patch(facecolor="grey", alpha=a, edgecolor="black", label=l)
                       for a, (_, l) in zip([1, 0.7, 0.45], levels)], fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)
    ax.set_title("Test accuracy by ICD-10-CM level (error bars: 95% CI of exact match)", fontsize=10)
    return _save(fig, out)


def _log_scale(axis) -> None:
    """Log scale on one axis, labelled at 1, 2 and 5 times each power of ten, with no minor labels (crowded ones
    overlap when the data span less than a decade)."""

    axis.axes.set_xscale("log") if axis is axis.axes.xaxis else axis.axes.set_yscale("log")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _log_axis(ax, values) -> None:
    """A log x-axis that spans at least a factor of ten around the data."""
    values = [v for v in values if v > 0]
    if not values:
        return
    lo, hi = min(values) / 1.6, max(values) * 1.6
    if hi / lo < 10:
        mid = (lo * hi) ** 0.5
        lo, hi = mid / 10 ** 0.5, mid * 10 ** 0.5
    _log_scale(ax.xaxis)
    ax.set_xlim(lo, hi)


def _scatter(evals: dict, xkey: str, xlabel: str, title: str, out: Path, scale: float = 1.0) -> str:
    """One point per system with its exact-match CI; named in a legend beside the axes (labels written next
    to points collide as soon as two systems sit close)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    markers = _markers(evals)
    for s, m in evals.items():
        xv = (m.get(xkey) or 0) * scale
        if xv <= 0:
            continue
        y = 100 * m["exact_match"]
        lo, hi = (100 * v for v in m["exact_match_ci95"])
        ax.errorbar([xv], [y], yerr=[[y - lo], [hi - y]], fmt=markers[s], color=_color(s), capsize=3, markersize=8,
                    label=s, alpha=0.9)
    _log_axis(ax, [(m.get(xkey) or 0) * scale for m in evals.values()])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("exact match on test (%)")
    ax.set_ylim(-5, 105)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False)
    return _save(fig, out)


def accuracy_vs_latency(evals: dict, out: Path) -> str:
    return _scatter(evals, "latency_p50_s", "median latency per sample (s, log scale)",
                    "Accuracy against latency: up and left is better", out)


def accuracy_vs_params(evals: dict, out: Path) -> str:
    return _scatter(evals, "params_total", "parameters (millions, log scale)", "Accuracy against model size", out, 1e-6)


def risk_coverage(curves: dict[str, tuple[list[float], list[bool]]], targets: list[float], out: Path) -> str:
    """Error rate among the encounters coded without review, against the share coded, one curve per system
    (confidence ordered, test split); dashed lines at the error rates the target precisions allow."""

    fig, ax = plt.subplots(figsize=(6.5, 4))
    markers = _markers(curves)
    for s, (conf, correct) in curves.items():
        pts = thresholds.risk_coverage(conf, correct)
        if not pts:
            continue
        cov = [0.0] + [100 * c for _, c, _ in pts]
        risk = [100 * pts[0][2]] + [100 * r for _, _, r in pts]
        ax.step(cov, risk, where="pre", color=_color(s), label=s, marker=markers[s], markevery=[len(cov) - 1],
                markersize=5, linewidth=1.4)
    for t in targets:
        ax.axhline(100 * (1 - t), color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(f"{100 * t:g}% precision", (100, 100 * (1 - t)), xytext=(-4, 3), textcoords="offset points",
                    ha="right", va="bottom", fontsize=7, color="grey")
    ax.set_xlabel("encounters coded without review (%, most confident first)")
    ax.set_ylabel("error rate among them (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False)
    ax.set_title("Risk against coverage on test: low and to the right is better", fontsize=10)
    return _save(fig, out)


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
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False)
    ax.set_title("Reliability (10 equal-width bins)", fontsize=10)
    return _save(fig, out)


def _tsv(path: Path) -> dict[int, float]:
    if not path.exists():
        return {}
    with open(path) as fh:
        return {int(r["step"]): float(r[next(k for k in r if k not in ("step", "timestamp"))]) for r in csv.DictReader(fh, delimiter="\t")}


def training_curves(live_dirs: dict[str, Path], out: Path) -> str | None:
    """Training and validation loss per run, and beside them the validation exact match that chose the checkpoint
    kept (where the run decoded it)."""

    curves = {run: d / "plots" / "metrics" for run, d in live_dirs.items()}  # the curves the train stages keep
    exact = {run: sorted(_tsv(m / "eval/exact_match.tsv").items()) for run, m in curves.items()}
    exact = {run: pts for run, pts in exact.items() if pts}
    fig, axes = plt.subplots(1, 2 if exact else 1, figsize=(11 if exact else 6, 4), squeeze=False)
    ax = axes[0][0]
    drawn = False
    for run, series in curves.items():
        for name, style in (("loss.tsv", "-"), ("eval/loss.tsv", "o--")):
            pts = sorted(_tsv(series / name).items())
            if pts:
                ax.plot(*zip(*pts), style, label=f"{run} {'validation' if 'eval' in name else 'training'}")
                drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per answer token (nats)")
    _log_scale(ax.yaxis)
    ax.legend(fontsize=8, loc="upper right", frameon=False)
    ax.grid(alpha=0.3)
    ax.set_title("LoRA training and validation loss", fontsize=10)
    if exact:
        right = axes[0][1]
        for run, pts in exact.items():
            steps, values = zip(*pts)
            right.plot(steps, [100 * v for v in values], "o-", label=run)
        right.set_xlabel("optimizer step")
        right.set_ylabel("validation exact match (%)")
        right.set_ylim(0, 100)
        right.legend(fontsize=8, loc="upper left", frameon=False)
        right.grid(alpha=0.3)
        right.set_title("Validation exact match (the checkpoint kept is the highest)", fontsize=10)
        for a in (ax, right):
            a.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    return _save(fig, out, w_pad=3.0)


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
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False)
    ax.set_title("Where predictions land in the ICD-10-CM hierarchy", fontsize=10)
    return _save(fig, out)


def draw_all(evals: dict, preds: dict, trains: dict, params: dict, root: Path, plot_dir: Path) -> list[Path]:
    """Every figure of the report, into ``plot_dir``; the paths written (reliability and curves where there is data)."""
    first = {r["id"]: r["pred"] for r in preds[systems.retriever_floor(params).id]}
    use_systems(systems.by_id(params))
    made = [accuracy_by_system(evals, plot_dir / "accuracy_by_system.png"),
            accuracy_vs_latency(evals, plot_dir / "accuracy_vs_latency.png"),
            accuracy_vs_params(evals, plot_dir / "accuracy_vs_params.png"),
            risk_coverage({s: (thresholds.confidences(rows, evals[s]["confidence_signal"], first),
                               thresholds.correctness(rows)) for s, rows in preds.items()},
                          sorted(params["deploy"]["target_precision"]), plot_dir / "risk_coverage.png"),
            chapter_heatmap(per_chapter_accuracy(preds), plot_dir / "chapter_accuracy.png"),
            error_breakdown(errors.error_breakdown(preds), plot_dir / "error_breakdown.png")]
    scored = {s: metrics.reliability_bins([r["confidence"] for r in rows], [r["pred"] == r["gold"] for r in rows])
              for s, rows in preds.items() if rows and all(r.get("confidence") is not None for r in rows)}
    if scored:
        made.append(reliability(scored, plot_dir / "reliability.png"))
    curves = training_curves({run: root / "dvclive" / run for run in trains}, plot_dir / "training_curves.png")
    return made + ([curves] if curves else [])
