"""Stage `report`: the study's answer, tables, paired tests and plots.

Reads exactly the systems params.yaml selects (icdstudy/core/systems.py): each one's test and validation
metrics (metrics/eval/<system>.json, metrics/val/<system>.json, written by stage `score`), its test
predictions (predictions/<system>.jsonl, with its other training seeds'), and the selected training
runs' metrics/train/<run>.json and curves; also metrics/data.json, metrics/base/<model>.json (each
base model's revision) and the train and test splits (error examples, near copies). Files of systems
the params do not select are ignored, whatever lies in the folders; a selected system whose file is
missing stops the report with the stage to run. Writes reports/report.md, reports/systems.json and
plots/*.png. Imports no torch: it runs in seconds.
"""
import argparse
import os
import sys
from pathlib import Path

from icdstudy.analysis import deploy
from icdstudy.core import metrics, systems
from icdstudy.reporting import plots
from icdstudy.core.io import read_json, read_jsonl, write_json, write_text_atomic
from icdstudy.core.params import ParamError, load_params
from icdstudy.reporting.report import PairingError, error_breakdown, per_chapter_accuracy, render


class Missing(Exception):
    pass


def _need(path: Path, what: str, stage: str) -> Path:
    if not path.exists():
        raise Missing(f"{path} is missing: params.yaml selects {what}; run `dvc repro {stage}`")
    return path


def _run_metrics(root: Path, s: systems.System) -> dict:
    return read_json(_need(root / "metrics/train" / f"{s.run}.json", f"training run {s.run}", s.train_stage))


def gather(root: Path, params: dict):
    """The selected systems' test and validation metrics, test predictions, their other seeds' test
    predictions, and the selected training runs' metrics: (evals, vals, preds, seed_preds, trains)."""
    evals, vals, preds, seed_preds, trains = {}, {}, {}, {}, {}
    for s in systems.selected(params):
        evals[s.id] = read_json(_need(root / s.metrics("test"), f"system {s.id}", "score"))
        vals[s.id] = read_json(_need(root / s.metrics("val"), f"system {s.id}", "score"))
        preds[s.id] = read_jsonl(_need(root / s.predictions("test"), f"system {s.id}", s.stage))
        runs = {name: read_jsonl(_need(root / path, f"{s.id}'s training seed {name}", s.stage))
                for name, path in systems.seed_predictions(s, params).items()}
        if runs:
            seed_preds[s.id] = runs
        if s.fine_tuned:
            trains[s.run] = _run_metrics(root, s)
    return evals, vals, preds, seed_preds, trains


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--root", default=".", help="project folder holding metrics/, predictions/, dvclive/")
    parser.add_argument("--out", default="reports/report.md")
    parser.add_argument("--plots", default="plots")
    parser.add_argument("--systems", default="reports/systems.json", help="per-system metrics for `dvc plots`")
    args = parser.parse_args(argv)
    root, plot_dir = Path(args.root), Path(args.plots)
    try:
        params = load_params(args.params)
        evals, vals, preds, seed_preds, trains = gather(root, params)
    except (ParamError, Missing) as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return 1
    data = read_json(root / "metrics/data.json")
    bases = {k: read_json(root / "metrics/base" / f"{k}.json") for k in params["base_models"]
             if (root / "metrics/base" / f"{k}.json").exists()}
    processed = root / "data/processed"
    test_rows = read_jsonl(processed / "test.jsonl") if (processed / "test.jsonl").exists() else []
    inputs = {r["id"]: r["input"] for r in test_rows}
    near = None
    if test_rows and (processed / "train.jsonl").exists():
        from icdstudy.reporting.datacard import near_copy_rows

        scored = {r["id"] for rows in preds.values() for r in rows}
        near = near_copy_rows(read_jsonl(processed / "train.jsonl"), [r for r in test_rows if r["id"] in scored], params)

    def write(plot_paths: list[str]) -> str:
        return render(evals, preds, trains, data, params, plot_paths, seed_preds, bases, inputs, near, vals)

    try:
        write([])  # every pairing is checked before anything is written
    except PairingError as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return 1
    first = {r["id"]: r["pred"] for r in preds[systems.retriever_floor(params).id]}
    plots.use_systems(systems.by_id(params))
    made = [plots.accuracy_by_system(evals, plot_dir / "accuracy_by_system.png"),
            plots.accuracy_vs_latency(evals, plot_dir / "accuracy_vs_latency.png"),
            plots.accuracy_vs_params(evals, plot_dir / "accuracy_vs_params.png"),
            plots.risk_coverage({s: (deploy.confidences(rows, evals[s]["confidence_signal"], first),
                                     deploy.correctness(rows)) for s, rows in preds.items()},
                                sorted(params["deploy"]["target_precision"]), plot_dir / "risk_coverage.png"),
            plots.chapter_heatmap(per_chapter_accuracy(preds), plot_dir / "chapter_accuracy.png"),
            plots.error_breakdown(error_breakdown(preds), plot_dir / "error_breakdown.png")]
    scored = {s: metrics.reliability_bins([r["confidence"] for r in rows], [r["pred"] == r["gold"] for r in rows])
              for s, rows in preds.items() if rows and all(r.get("confidence") is not None for r in rows)}
    if scored:
        made.append(plots.reliability(scored, plot_dir / "reliability.png"))
    curves = plots.training_curves({run: root / "dvclive" / run for run in trains}, plot_dir / "training_curves.png")
    if curves:
        made.append(curves)

    write_json(args.systems, [{"system": s, **{k: m[k] for k in ("exact_match", "category_match", "chapter_match",
                                                                     "valid_rate", "macro_f1")}} for s, m in evals.items()])
    out = Path(args.out)
    write_text_atomic(out, write([os.path.relpath(p, out.parent) for p in made]))
    # the Answer holds test numbers: it is read in the report, never printed into a sweep's log
    print(f"report: {len(evals)} systems, {len(made)} plots -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
