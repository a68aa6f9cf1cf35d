"""Stage `report`: the study's answer, table, paired tests and plots.

Reads every metrics/eval/*.json with its predictions/<system>.jsonl (and the other training
seeds' predictions/seeds/<system>/seed-*.jsonl), metrics/train/*.json,
metrics/data.json, metrics/base/*.json (each base model's revision), the test inputs (for the
error examples) and the DVCLive curves; writes reports/report.md and plots/*.png.
Imports no torch: it runs in seconds.
"""
import argparse
import sys
from pathlib import Path

from icdstudy import metrics, plots
from icdstudy.io import read_json, read_jsonl, write_json, write_text_atomic
from icdstudy.params import ParamError, load_params
from icdstudy.report import error_breakdown, per_chapter_accuracy, render


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
    except ParamError as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return 1

    evals = {p.stem: read_json(p) for p in sorted((root / "metrics/eval").glob("*.json"))}
    if not evals:
        print("report: error: no metrics/eval/*.json; run the evaluation stages first", file=sys.stderr)
        return 1
    preds = {s: read_jsonl(root / "predictions" / f"{s}.jsonl") for s in evals
             if (root / "predictions" / f"{s}.jsonl").exists()}
    # The other training seeds' predictions (evaluate@<model> with several train.seeds).
    seed_preds = {s: {p.stem: read_jsonl(p) for p in sorted((root / "predictions/seeds" / s).glob("seed-*.jsonl"))}
                  for s in preds}
    seed_preds = {s: runs for s, runs in seed_preds.items() if runs}
    trains = {p.stem: read_json(p) for p in sorted((root / "metrics/train").glob("*.json"))}
    data = read_json(root / "metrics/data.json")
    bases = {p.stem: read_json(p) for p in sorted((root / "metrics/base").glob("*.json"))}
    test_file = root / "data/processed/test.jsonl"
    inputs = {r["id"]: r["input"] for r in read_jsonl(test_file)} if test_file.exists() else {}

    made = [plots.accuracy_by_system(evals, plot_dir / "accuracy_by_system.png"),
            plots.accuracy_vs_latency(evals, plot_dir / "accuracy_vs_latency.png"),
            plots.accuracy_vs_params(evals, plot_dir / "accuracy_vs_params.png"),
            plots.chapter_heatmap(per_chapter_accuracy(preds), plot_dir / "chapter_accuracy.png"),
            plots.error_breakdown(error_breakdown(preds), plot_dir / "error_breakdown.png")]
    scored = {s: metrics.reliability_bins([r["confidence"] for r in rows], [r["pred"] == r["gold"] for r in rows])
              for s, rows in preds.items() if rows and all(r.get("confidence") is not None for r in rows)}
    if scored:
        made.append(plots.reliability(scored, plot_dir / "reliability.png"))
    curves = plots.training_curves({m: root / "dvclive" / m for m in trains}, plot_dir / "training_curves.png")
    if curves:
        made.append(curves)

    write_json(args.systems, [{"system": s, **{k: m[k] for k in ("exact_match", "category_match", "chapter_match",
                                                                     "valid_rate", "macro_f1")}} for s, m in evals.items()])
    out = Path(args.out)
    import os

    rel = [os.path.relpath(p, out.parent) for p in made]
    write_text_atomic(out, render(evals, preds, trains, data, params, rel, seed_preds, bases, inputs))
    print(f"report: {len(evals)} systems, {len(made)} plots -> {out}")
    for line in render(evals, preds, trains, data, params, [], seed_preds, bases, inputs).splitlines()[2:]:
        if line.startswith("- **"):
            print("  " + line[2:].replace("**", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
