"""Metrics of one system on the validation and test splits, from its predictions, by one code path.

Both splits get the same keys (DESIGN: metrics/val/<system>.json and metrics/eval/<system>.json): quality
with confidence intervals, speed and memory from the predicting stage's run record, where a shortlist
system's answers sit on its lists, and the deployment view, whose confidence signal and thresholds
are chosen on validation (the signal) and certified on calibration rows (the thresholds) before the test
split is looked at.
"""
from __future__ import annotations

from icdstudy.analysis import metrics, thresholds
from icdstudy.neighbours.shortlist import SHORTLIST, shortlist_metrics
from icdstudy.systems import SCORED

# What the predicting stage measured or set, copied beside the scores (predictions/runs/<system>.json).
RECORD_KEYS = ("system", "model", "prompt", "retrieved", "run", "method", "params_total", "peak_mem_mb", "load_s", "wall_s",
               "device", "cpu_kernels", "constrained", "top_k", "few_shot", "few_shot_strategy", "neighbours")


class ScoreError(ValueError):
    """Predictions that do not belong to the split they claim to score."""


def check_rows(predictions: list[dict], rows: list[dict], where: str, stage: str) -> None:
    """Predictions must cover exactly the split's scored rows, in order, with the same gold codes."""
    if [p["id"] for p in predictions] != [r["id"] for r in rows]:
        extra = sorted({p["id"] for p in predictions} ^ {r["id"] for r in rows})
        detail = f"e.g. {extra[0]} in one only" if extra else "in another order"
        raise ScoreError(f"{where} does not cover the split's rows ({len(predictions)} predictions, {len(rows)} rows; "
                         f"{detail}): it comes from other data; run `dvc repro {stage}`")
    for p, r in zip(predictions, rows):
        if p["gold"] != r["code"]:
            raise ScoreError(f"{where}: row {r['id']} has gold code {p['gold']} but the split says {r['code']}: the "
                             f"predictions come from other data; run `dvc repro {stage}`")


def score_split(predictions: list[dict], rows: list[dict], record: dict, split: str) -> dict:
    """Quality, speed and the record's settings of one split (no deployment view)."""
    out = {**metrics.quality(predictions), **metrics.efficiency(predictions)}
    if predictions and all(SHORTLIST in p for p in predictions):
        out.update(shortlist_metrics(predictions))
    out.update({k: record[k] for k in RECORD_KEYS if k in record})
    out["inputs_truncated"] = (record.get("inputs_truncated") or {}).get(split, 0)
    out["split"] = split
    out["split_fingerprint"] = metrics.split_fingerprint(rows)
    return out


def score_system(predictions: dict[str, list[dict]], rows: dict[str, list[dict]], record: dict,
                 first: dict[str, dict[str, str | None]], deploy_cfg: dict,
                 seed_runs: dict[str, list[dict]] | None = None) -> dict[str, dict]:
    """{split: metrics} for the validation and test splits. ``predictions`` and ``rows`` hold the calibration
    split too: it certifies the thresholds and is scored for nothing else. ``first``: per split, the TF-IDF
    retriever's first candidate of every row (knn-tfidf's answer). ``seed_runs``: other training seeds' test
    predictions (seed-<n> -> rows), summarised as the spread of exact match over seeds."""

    out = {split: score_split(predictions[split], rows[split], record, split) for split in SCORED}
    chosen = thresholds.certified_thresholds(predictions["val"], predictions["calibration"], {**first["val"], **first["calibration"]},
                               deploy_cfg["target_precision"], deploy_cfg["delta"])
    calibration_fingerprint = metrics.split_fingerprint(rows["calibration"])
    for split, m in out.items():
        m.update(thresholds.view(predictions[split], first[split], chosen, m["samples_per_s"], m.get("device", "cpu"),
                             deploy_cfg))
        m["signal_aurc_val"] = chosen["signal_aurc_val"]
        m["calibration_fingerprint"] = calibration_fingerprint
    for target, fit in chosen["fitted_on_val"].items():  # what choices rank by: validation rows alone
        k = thresholds.key(target)
        out["val"][f"val_fitted_threshold_at_{k}"] = fit["threshold"]
        out["val"][f"val_fitted_coverage_at_{k}"] = fit["coverage"]
    if seed_runs:
        by_seed = {record["seeds"][0]: out["test"]}
        for (name, rows_), seed in zip(seed_runs.items(), record["seeds"][1:]):
            by_seed[seed] = metrics.quality(rows_)
        out["test"]["seeds"] = metrics.seed_summary(by_seed)
    return out
