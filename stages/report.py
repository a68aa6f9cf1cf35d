"""Stage `report`: the study's answer, tables, paired tests and plots.

Reads exactly the systems params.yaml selects (icdstudy/systems.py): each one's test and validation
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

from icdstudy.core.io import write_json, write_text_atomic
from icdstudy.core.params import ParamError, load_params
from icdstudy.reporting import plots
from icdstudy.reporting.inputs import Missing, context, gather
from icdstudy.reporting.report import PairingError, render, with_plots


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--root", default=".", help="project folder holding metrics/, predictions/, dvclive/")
    parser.add_argument("--out", default="reports/report.md")
    parser.add_argument("--plots", default="plots")
    parser.add_argument("--systems", default="reports/systems.json", help="per-system metrics for `dvc plots`")
    args = parser.parse_args(argv)
    root = Path(args.root)
    try:
        params = load_params(args.params)
        evals, vals, preds, seed_preds, trains = gather(root, params)
    except (ParamError, Missing) as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return 1
    ctx = context(root, params, preds)
    try:  # every pairing is checked before anything is written
        text = render(evals, preds, trains, ctx["data"], params, seed_preds, ctx["bases"], ctx["inputs"], ctx["near"],
                      vals)
    except PairingError as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return 1
    made = plots.draw_all(evals, preds, trains, params, root, Path(args.plots))
    write_json(args.systems, [{"system": s, **{k: m[k] for k in ("exact_match", "category_match", "chapter_match",
                                                                     "valid_rate", "macro_f1")}} for s, m in evals.items()])
    out = Path(args.out)
    write_text_atomic(out, with_plots(text, [os.path.relpath(p, out.parent) for p in made]))
    # the Answer holds test numbers: it is read in the report, never printed into a sweep's log
    print(f"report: {len(evals)} systems, {len(made)} plots -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
