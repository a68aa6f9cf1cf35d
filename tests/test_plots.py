"""The report's figures are readable at a glance: at the full study's 18 systems no text is drawn over another
text, and every legend lies inside the saved image."""
import random

import pytest

from icdstudy.reporting import plots

SYSTEMS = ([f"{k}-{m}" for k in ("lora", "lora-shortlist") for m in ("llama32-3b", "qwen25-3b")]
           + [f"{k}-{m}" for k in ("zeroshot", "fewshot", "shortlist")
              for m in ("llama31-8b", "mistral-7b", "llama32-3b", "qwen25-3b")] + ["tfidf-logreg", "knn-tfidf"])


def _evals(n_close: bool = True) -> dict:
    rng = random.Random(0)
    out = {}
    for i, s in enumerate(SYSTEMS):
        em = 0.4 + 0.01 * (i % 3) if n_close else rng.uniform(0.1, 0.9)  # many systems nearly on top of each other
        out[s] = {"exact_match": em, "exact_match_ci95": [em - 0.05, em + 0.05], "category_match": min(1, em + 0.2),
                  "chapter_match": min(1, em + 0.3), "latency_p50_s": 0.2 + 0.001 * i, "params_total": 3e9 + 1e6 * i}
    return out


@pytest.fixture
def figures(monkeypatch):
    """Every figure a plot function closes, kept open for inspection."""
    kept, close = [], plots.plt.close
    monkeypatch.setattr(plots.plt, "close", lambda fig=None: kept.append(fig))
    yield kept
    for fig in kept:
        close(fig)


def _problems(fig, png=None) -> list[str]:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    from matplotlib.text import Text

    texts = [t for t in fig.findobj(Text) if t.get_visible() and str(t.get_text()).strip()]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    out = []
    for i, (a, ba) in enumerate(boxes):
        for b, bb in boxes[i + 1:]:
            if ba.overlaps(bb) and ba.width > 0 and bb.width > 0:
                inter = min(ba.x1, bb.x1) - max(ba.x0, bb.x0), min(ba.y1, bb.y1) - max(ba.y0, bb.y0)
                if inter[0] > 1 and inter[1] > 1:  # more than a pixel each way
                    out.append(f"{a!r} over {b!r}")
    if png is not None and any(ax.get_legend() for ax in fig.axes):  # the saved image holds every artist, legends too
        from PIL import Image

        need = fig.get_tightbbox(renderer)  # inches: text, axes and legends, wherever they lie
        width, height = Image.open(png).size
        if width < need.width * 120 - 2 or height < need.height * 120 - 2:
            out.append(f"image {width}x{height} px cuts what needs {need.width * 120:.0f}x{need.height * 120:.0f} px")
    return out


@pytest.mark.parametrize("draw", ["accuracy_vs_latency", "accuracy_vs_params", "accuracy_by_system"])
def test_system_plots_have_no_overlapping_text(draw, figures, tmp_path):
    getattr(plots, draw)(_evals(), tmp_path / f"{draw}.png")
    assert (tmp_path / f"{draw}.png").stat().st_size > 10_000
    assert _problems(figures[-1], tmp_path / f"{draw}.png") == []


def test_error_breakdown_keeps_its_legend_whole(figures, tmp_path):
    kinds = ["correct", "right category, wrong code", "right chapter, wrong category", "wrong chapter", "no prediction"]
    plots.error_breakdown({s: dict(zip(kinds, (20, 10, 5, 5, 3))) for s in SYSTEMS}, tmp_path / "e.png")
    assert _problems(figures[-1], tmp_path / "e.png") == []


def test_risk_coverage_draws_a_curve_per_system_and_the_target_lines(figures, tmp_path):
    rng = random.Random(1)
    curves = {s: ([rng.random() for _ in range(50)], [rng.random() < 0.6 for _ in range(50)]) for s in SYSTEMS}
    plots.risk_coverage(curves, [0.9, 0.95], tmp_path / "risk_coverage.png")
    fig = figures[-1]
    assert _problems(fig, tmp_path / "risk_coverage.png") == []
    ax = fig.axes[0]
    assert len([l for l in ax.get_lines() if l.get_label() in SYSTEMS]) == len(SYSTEMS)
    assert sorted(round(l.get_ydata()[0], 6) for l in ax.get_lines() if l.get_linestyle() == "--") == [5.0, 10.0]


def test_training_curves_show_the_validation_exact_match_beside_the_losses(figures, tmp_path):
    runs = {}
    for run in ("lora-llama32-3b", "lora-shortlist-llama32-3b"):
        metrics = tmp_path / run / "plots" / "metrics"
        (metrics / "eval").mkdir(parents=True)
        (metrics / "loss.tsv").write_text("timestamp\tstep\tloss\n0\t10\t2.0\n0\t20\t1.0\n")
        (metrics / "eval" / "loss.tsv").write_text("step\tloss\n20\t1.5\n40\t1.2\n")
        (metrics / "eval" / "exact_match.tsv").write_text("step\texact_match\n20\t0.25\n40\t0.5\n")
        runs[run] = tmp_path / run
    plots.training_curves(runs, tmp_path / "curves.png")
    fig = figures[-1]
    assert _problems(fig, tmp_path / "curves.png") == []
    right = fig.axes[1]
    assert [list(l.get_ydata()) for l in right.get_lines()] == [[25.0, 50.0], [25.0, 50.0]]
