"""Where the errors land in the ICD-10-CM hierarchy, and accuracy by chapter: counts the report tables and plots."""
from __future__ import annotations

from icdstudy import icd10


ERROR_KINDS = ("right category, wrong code", "right chapter, wrong category", "wrong chapter", "no prediction")


def error_kind(gold: str, pred: str | None) -> str | None:
    """Where a wrong prediction lands in the ICD-10-CM hierarchy; None when it is right."""
    if pred == gold:
        return None
    if not pred:
        return "no prediction"
    if icd10.category(pred) == icd10.category(gold):
        return "right category, wrong code"
    return "right chapter, wrong category" if icd10.chapter(pred) == icd10.chapter(gold) else "wrong chapter"


def error_breakdown(preds: dict) -> dict[str, dict[str, int]]:
    """Per system: its correct rows, and its errors counted by ERROR_KINDS."""
    out = {}
    for system, rows in preds.items():
        kinds = [error_kind(r["gold"], r["pred"]) for r in rows]
        out[system] = {"correct": kinds.count(None), **{k: kinds.count(k) for k in ERROR_KINDS}}
    return out


def per_chapter_accuracy(preds: dict) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, list]] = {}
    for system, rows in preds.items():
        for r in rows:
            ch = icd10.chapter(r["gold"]) or "?"
            table.setdefault(system, {}).setdefault(ch, []).append(r["pred"] == r["gold"])
    return {s: {ch: sum(v) / len(v) for ch, v in chs.items()} for s, chs in table.items()}
