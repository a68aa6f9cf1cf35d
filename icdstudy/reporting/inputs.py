"""What the report reads, for exactly the systems params selects: each one's test and validation metrics, test
predictions and other training seeds' test predictions, the selected training runs' metrics, the data and base
model records, the test inputs (error examples) and the test rows with a near copy in training. A selected
system whose file is missing stops the report with the stage to run; files of other systems are never read.
"""
from __future__ import annotations

from pathlib import Path

from icdstudy import systems
from icdstudy.core.io import read_json, read_jsonl
from icdstudy.reporting.datacard import near_copy_rows


class Missing(Exception):
    """A file the report needs is not there; the message names the stage that writes it."""


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




def context(root: Path, params: dict, preds: dict) -> dict:
    """The data record, base models' records, test inputs and near-copy test rows the report prints."""
    bases = {k: read_json(root / "metrics/base" / f"{k}.json") for k in params["base_models"]
             if (root / "metrics/base" / f"{k}.json").exists()}
    processed = root / "data/processed"
    test_rows = read_jsonl(processed / "test.jsonl") if (processed / "test.jsonl").exists() else []
    near = None
    if test_rows and (processed / "train.jsonl").exists():
        scored = {r["id"] for rows in preds.values() for r in rows}
        near = near_copy_rows(read_jsonl(processed / "train.jsonl"), [r for r in test_rows if r["id"] in scored], params)
    return {"data": read_json(root / "metrics/data.json"), "bases": bases,
            "inputs": {r["id"]: r["input"] for r in test_rows}, "near": near}
