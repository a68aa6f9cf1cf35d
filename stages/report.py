"""Stage `report`: the study's answer, table, paired tests and plots.

Reads exactly the systems params.yaml selects (icdstudy/systems.py: zero-shot, few-shot and
shortlist systems per model list, the fine-tuned systems with their other training seeds, and the
two floors), each from its own metrics/eval/<system>.json and predictions/<system>.jsonl; files of
systems the params do not select are ignored, whatever lies in the folders, and a selected system
whose file is missing stops the report with the stage to run. Also reads the selected training
runs' metrics/train/<run>.json and curves, metrics/data.json, metrics/base/<model>.json (each base
model's revision) and the splits (error examples, near copies); writes reports/report.md,
reports/systems.json and plots/*.png. Imports no torch: it runs in seconds.
"""
import argparse
import os
import sys
from pathlib import Path

from icdstudy import metrics, plots
from icdstudy.io import read_json, read_jsonl, write_json, write_text_atomic
from icdstudy.params import ParamError, load_params
from icdstudy.report import PairingError, error_breakdown, per_chapter_accuracy, render
from icdstudy.systems import seed_predictions, selected


class Missing(Exception):
    pass


def _need(path: Path, what: str, stage: str) -> Path:
    if not path.exists():
        raise Missing(f"{path} is missing: params.yaml selects {what}; run `dvc repro {stage}`")
    return path


def gather(root: Path, params: dict):
    """The selected systems' metrics and predictions, their other seeds' predictions, and the selected
    training runs' metrics: (evals, preds, seed_preds, trains)."""
    evals, preds, seed_preds = {}, {}, {}
    for s in selected(params):
        evals[s.id] = read_json(_need(root / s.metrics, f"system {s.id}", s.stage))
        preds[s.id] = read_jsonl(_need(root / s.predictions, f"system {s.id}", s.stage))
        runs = {name: read_jsonl(_need(root / path, f"{s.id}'s training seed {name}", s.stage))
                for name, path in seed_predictions(s, params).items()}
        if runs:
            seed_preds[s.id] = runs
    trains = {s.run: read_json(_need(root / "metrics/train" / f"{s.run}.json", f"training run {s.run}", s.train_stage))
              for s in selected(params) if s.fine_tuned}
    return evals, preds, seed_preds, trains


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--root", default=".", help="project folder holding metrics/, predictions/, dvclive/")
    parser.add_argument("--out", default="reports/report.md")
    parser.add_argument("--plots", default="plots")
    parser.add_argument("--systems", default="reports/systems.json", help="per-system metrics for `dvc plots`")
    args = parser.parse_args()
    root, plot_dir = Path(args.root), Path(args.plots)
    try:
        params = load_params(args.params)
        evals, preds, seed_preds, trains = gather(root, params)
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
        from icdstudy.datacard import near_copy_rows

        scored = {r["id"] for rows in preds.values() for r in rows}
        near = near_copy_rows(read_jsonl(processed / "train.jsonl"), [r for r in test_rows if r["id"] in scored], params)

    def write(plot_paths: list[str]) -> str:
        return render(evals, preds, trains, data, params, plot_paths, seed_preds, bases, inputs, near)

    try:
        text = write([])  # every pairing is checked before anything is written
    except PairingError as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return 1
    made = [plots.accuracy_by_system(evals, plot_dir / "accuracy_by_system.png"),
            plots.accuracy_vs_latency(evals, plot_dir / "accuracy_vs_latency.png"),
            plots.accuracy_vs_params(evals, plot_dir / "accuracy_vs_params.png"),
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
    print(f"report: {len(evals)} systems, {len(made)} plots -> {out}")
    for line in text.splitlines()[2:]:
        if line.startswith("- **") or line.startswith("- `"):
            print("  " + line[2:].replace("**", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
