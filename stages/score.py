"""Stage `score`: metrics of every system the params select, on the validation and the test split.

Reads each system's predictions (predictions/{val,calibration}/<system>.jsonl, predictions/<system>.jsonl,
the other training seeds' in predictions/seeds/<system>/) and its run record
(predictions/runs/<system>.json), checks them against data/processed/{val,calibration,test}.jsonl, and
writes metrics/val/<system>.json and metrics/eval/<system>.json with the same keys (icdstudy.analysis.scoring),
and reports/validation.json (every system's validation exact match, the bar chart a sweep compares):
quality, speed, memory, and the deployment view (params `deploy`: the confidence signal chosen on
validation, each target precision's threshold certified on the calibration rows with its counts, the
coverage and precision reached at it, dollars per 1,000 encounters with and without the review of the
rest). It prints validation numbers only: the test split is the report's to read.

Scoring takes seconds and reads no model, so a price or a target changes no GPU stage. Files of
systems the params do not select are never read; a selected system whose predictions are missing
stops the stage with the stage to run.
"""
import argparse
import sys
from pathlib import Path

from icdstudy import systems
from icdstudy.core.io import read_json, read_jsonl, write_json
from icdstudy.core.params import ParamError, load_params, section
from icdstudy.analysis.scoring import ScoreError, check_rows, score_system

class Missing(Exception):
    pass


def need(path: Path, s: systems.System) -> Path:
    if not path.exists():
        raise Missing(f"{path} is missing: params.yaml selects system {s.id}; run `dvc repro {s.stage}`")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    parser.add_argument("--root", default=".", help="project folder holding predictions/ and metrics/")
    args = parser.parse_args(argv)
    root = Path(args.root)
    try:
        params = load_params(args.params)
        deploy_cfg, max_samples = section(params, "deploy"), section(params, "decoding")["max_samples"]
        rows = {split: read_jsonl(Path(args.data) / f"{split}.jsonl")[:max_samples or None] for split in systems.SPLITS}
        retriever = systems.retriever_floor(params)  # its first candidate: the retriever-agreement signal
        first = {split: {p["id"]: p["pred"] for p in read_jsonl(need(root / retriever.predictions(split), retriever))}
                 for split in systems.SPLITS}
        scored = {}
        for s in systems.selected(params):
            preds = {}
            for split in systems.SPLITS:
                path = need(root / s.predictions(split), s)
                preds[split] = read_jsonl(path)
                check_rows(preds[split], rows[split], str(path), s.stage)
            record = read_json(need(root / s.run_record, s))
            seeds = {name: read_jsonl(need(root / path, s)) for name, path in systems.seed_predictions(s, params).items()}
            for name, seed_rows in seeds.items():
                check_rows(seed_rows, rows["test"], f"{s.id} ({name})", s.stage)
            scored[s.id] = (s, score_system(preds, rows, record, first, deploy_cfg, seeds))
    except (ParamError, Missing, ScoreError) as exc:
        print(f"score: error: {exc}", file=sys.stderr)
        return 1
    for s, by_split in scored.values():  # metrics/val and metrics/eval; calibration rows only certify thresholds
        for split, m in by_split.items():
            write_json(root / s.metrics(split), m)
    write_json(root / "reports/validation.json", [  # the validation bar chart sweeps compare (`dvc plots diff`)
        {"system": sid, **{k: m["val"][k] for k in ("exact_match", "category_match", "chapter_match")}}
        for sid, (_, m) in scored.items()])
    width = max(len(i) for i in scored)
    for sid, (s, m) in scored.items():  # validation only: the test split is read by the report
        v = m["val"]
        k = max((key for key in v if key.startswith("val_fitted_coverage_at_p")), default=None)
        print(f"score: {sid:<{width}}  val exact {v['exact_match']:.3f}"
              + (f"  {k.removeprefix('val_fitted_coverage_at_')} coverage on val {v[k]:.3f}" if k else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
