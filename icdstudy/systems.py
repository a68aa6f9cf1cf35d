"""The systems a study's params select, with the stage that scores each and the files it writes.

The report, its plots, reports/systems.json and tools/pr_report.py read exactly these, from these
paths: a file of a system the params do not select is never read, whatever lies in the folders.

    zeroshot-<m>        stage zeroshot@<m>            every model in `zeroshot`
    fewshot-<m>         stage fewshot@<m>             every model in `zeroshot` (eval.retrieval_k examples)
    shortlist-<m>       stage shortlist@<m>           every model in `shortlist` (eval.candidates codes, no training)
    lora-<m>            stage evaluate@<m>            every model in `finetune` (adapter of train@<m>)
    lora-shortlist-<m>  stage evaluate-shortlist@<m>  every model in `finetune_shortlist` (train-shortlist@<m>)
    tfidf-logreg        stage baseline                always
    knn-tfidf           stage knn                     always
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Longest prefix first: "lora-shortlist-x" is a lora-shortlist system, not a lora one.
KINDS = ("lora-shortlist", "lora", "shortlist", "zeroshot", "fewshot", "tfidf", "knn")
FLOORS = {"tfidf-logreg": "baseline", "knn-tfidf": "knn"}
SHORTLIST_RUN = "shortlist-"  # training run of the shortlist recipe: models/adapters/shortlist-<m>, metrics/train/...


@dataclass(frozen=True)
class System:
    id: str
    kind: str
    model: str | None
    stage: str
    run: str | None = None  # the training run behind a fine-tuned system (metrics/train/<run>.json)
    train_stage: str | None = None  # the stage that writes that run

    @property
    def metrics(self) -> Path:
        return Path("metrics/eval") / f"{self.id}.json"

    @property
    def predictions(self) -> Path:
        return Path("predictions") / f"{self.id}.jsonl"

    @property
    def fine_tuned(self) -> bool:
        return self.run is not None


def kind(system_id: str) -> str:
    return next((k for k in KINDS if system_id == k or system_id.startswith(k + "-")), system_id)


def selected(params: dict) -> list[System]:
    """Every system the params select, in the report's order: fine-tuned, untrained, floors."""
    out = []
    for m in params.get("finetune") or []:
        out.append(System(f"lora-{m}", "lora", m, f"evaluate@{m}", run=m, train_stage=f"train@{m}"))
    for m in params.get("finetune_shortlist") or []:
        out.append(System(f"lora-shortlist-{m}", "lora-shortlist", m, f"evaluate-shortlist@{m}", run=SHORTLIST_RUN + m,
                          train_stage=f"train-shortlist@{m}"))
    for m in params.get("zeroshot") or []:
        out.append(System(f"zeroshot-{m}", "zeroshot", m, f"zeroshot@{m}"))
        out.append(System(f"fewshot-{m}", "fewshot", m, f"fewshot@{m}"))
    for m in params.get("shortlist") or []:
        out.append(System(f"shortlist-{m}", "shortlist", m, f"shortlist@{m}"))
    out += [System(s, kind(s), None, stage) for s, stage in FLOORS.items()]
    return out


def training_runs(params: dict) -> list[str]:
    """The training runs the params select: <m> for `finetune`, shortlist-<m> for `finetune_shortlist`."""
    return [s.run for s in selected(params) if s.run]


def seed_predictions(system: System, params: dict) -> dict[str, Path]:
    """The other training seeds' prediction files of a fine-tuned system (seed-<n> -> path)."""
    if not system.fine_tuned:
        return {}
    seeds = (params.get("train") or {}).get("seeds") or []
    return {f"seed-{s}": Path("predictions/seeds") / system.id / f"seed-{s}.jsonl" for s in seeds[1:]}
