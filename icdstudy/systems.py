"""The systems a study runs, read from params: one entry each in the table `systems`, and the training
runs the fine-tuned ones name in `training` (params.yaml says what every key means).

    systems.llm.<id>      stage predict@<id>   a language model prompted one way (fine-tuned: after train@<run>)
    systems.floors.<id>   stage floor@<id>     a classical floor (TF-IDF + logistic regression, TF-IDF neighbours)
    training.<run>        stage train@<run>    the LoRA adapter models/adapters/<run>

dvc.yaml iterates these tables, so adding a system or a variant is one entry and no dvc.yaml edit. Every
consumer (stages, report, plots, plan, predict, tools/pr_report.py) asks this module about a system; how a
prompt style builds its prompts is icdstudy.inference.prompt_styles, found by the entry's `prompt`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from icdstudy.core.params import ParamError

SPLITS = ("val", "calibration", "test")  # what every system predicts: choices read val, thresholds are certified on
SCORED = ("val", "test")                 # calibration, the report reads test; metrics/val and metrics/eval


@dataclass(frozen=True)
class System:
    """One entry of the table: a floor (``method`` set) or a language model prompted one way."""
    id: str
    model: str | None = None        # a key of base_models; None for a floor
    prompt: str | None = None       # plain | examples | shortlist; None for a floor
    retrieved: int = 0              # examples or codes retrieved into each prompt
    run: str | None = None          # its training run (a fine-tuned system)
    method: str | None = None       # a floor's method: tfidf-logreg | knn-tfidf
    adds: tuple[str, str] | None = None   # (the system it changes by one thing, that thing)
    settings: dict = field(default_factory=dict, compare=False)  # the entry as params holds it

    @property
    def floor(self) -> bool:
        return self.method is not None

    @property
    def fine_tuned(self) -> bool:
        return self.run is not None

    @property
    def decoding(self) -> dict:
        return self.settings.get("decoding") or {}

    @property
    def params_key(self) -> str:
        """Its entry in params (what its stage depends on)."""
        return f"systems.{'floors' if self.floor else 'llm'}.{self.id}"

    @property
    def stage(self) -> str:
        return f"{'floor' if self.floor else 'predict'}@{self.id}"

    @property
    def train_stage(self) -> str | None:
        return f"train@{self.run}" if self.fine_tuned else None

    @property
    def base(self) -> Path | None:
        return Path("models/base") / self.model if self.model else None

    @property
    def adapter(self) -> Path | None:
        return Path("models/adapters") / self.run if self.fine_tuned else None

    @property
    def seed_adapters(self) -> Path | None:
        """The other training seeds' adapters: inside the adapter folder, one DVC output with it."""
        return self.adapter / "seeds" if self.fine_tuned else None

    def metrics(self, split: str = "test") -> Path:
        return Path("metrics/eval" if split == "test" else f"metrics/{split}") / f"{self.id}.json"

    def predictions(self, split: str = "test") -> Path:
        return Path("predictions" if split == "test" else f"predictions/{split}") / f"{self.id}.jsonl"

    @property
    def run_record(self) -> Path:
        """What the predicting stage measured besides the predictions: speed, memory, size, settings."""
        return Path("predictions/runs") / f"{self.id}.json"


def _llm(sid: str, entry: dict) -> System:
    adds = entry.get("adds")
    return System(sid, model=entry["model"], prompt=entry["prompt"], retrieved=entry.get("retrieved") or 0,
                  run=entry.get("run"), adds=(adds["to"], adds["what"]) if adds else None, settings=entry)


def selected(params: dict) -> list[System]:
    """Every system of the table, in the report's order: fine-tuned, prompted, floors (table order within)."""
    table = params.get("systems") or {}
    llm = [_llm(sid, e) for sid, e in (table.get("llm") or {}).items()]
    floors = [System(sid, method=e["method"], settings=e) for sid, e in (table.get("floors") or {}).items()]
    return [s for s in llm if s.fine_tuned] + [s for s in llm if not s.fine_tuned] + floors


def by_id(params: dict) -> dict[str, System]:
    return {s.id: s for s in selected(params)}


def get(params: dict, system_id: str) -> System:
    table = by_id(params)
    if system_id not in table:
        raise ParamError(f"{system_id!r} is not a system of params.yaml (systems: {', '.join(table) or 'none'})")
    return table[system_id]


def retriever_floor(params: dict) -> System:
    """The knn-tfidf floor: its first candidate is the retriever-agreement signal (the schema requires one)."""
    return next(s for s in selected(params) if s.method == "knn-tfidf")


def training_runs(params: dict) -> list[str]:
    return list(params.get("training") or {})


def run_entry(params: dict, run: str) -> dict:
    runs = params.get("training") or {}
    if run not in runs:
        raise ParamError(f"{run!r} is not a training run of params.yaml (training: {', '.join(runs) or 'none'})")
    return runs[run]


def seed_predictions(s: System, params: dict) -> dict[str, Path]:
    """The other training seeds' test predictions of a fine-tuned system (seed-<n> -> path)."""
    if not s.fine_tuned:
        return {}
    recipe = (run_entry(params, s.run).get("recipe") or {}) if s.run in (params.get("training") or {}) else {}
    seeds = recipe.get("seeds") or (params.get("recipe") or {}).get("seeds") or []
    return {f"seed-{n}": Path("predictions/seeds") / s.id / f"seed-{n}.jsonl" for n in seeds[1:]}


def stages(params: dict) -> dict[str, tuple[str, System | str]]:
    """Every stage the tables make: name -> ('predict' | 'floor', System) or ('train', run name)."""
    out = {f"train@{run}": ("train", run) for run in training_runs(params)}
    for s in selected(params):
        out[s.stage] = ("floor" if s.floor else "predict", s)
    return out


def role_of(stage: str) -> str | None:
    """'train', 'predict' or 'floor' for the stages the tables make (by their name), None for the others."""
    name, at, _ = stage.partition("@")
    return name if at and name in ("train", "predict", "floor") else None
