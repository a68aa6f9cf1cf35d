"""The kinds of system the study compares, each declared once, and the systems a study's params select.

A kind says how its systems are named, which params list selects them, the DVC stage that writes
their predictions, whether and how they train, the prompt they are shown, the params their stage
reads, and how the report and plots name them. The stages, the report, plots, plan, measure, study,
predict, the schema and tools/pr_report.py ask this module; none of them spells a kind's name.

    system              stage writing its predictions   selected by
    lora-<m>            evaluate@<m>  (after train@<m>)                     finetune
    lora-shortlist-<m>  evaluate-shortlist@<m>  (after train-shortlist@<m>) finetune_shortlist
    zeroshot-<m>        zeroshot@<m>                                        zeroshot
    fewshot-<m>         fewshot@<m>                                         zeroshot
    shortlist-<m>       shortlist@<m>                                       shortlist
    tfidf-logreg        baseline                                            always
    knn-tfidf           knn                                                 always

Adding a kind is one entry in KINDS and one block in dvc.yaml (README: Layout); a test adds a
throwaway kind to a temporary project and runs it through the report and plots.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("val", "test")  # every system is scored on both; choices read val, the report reads test

# The TF-IDF retriever's own keys (examples, candidate lists); retrieval.neighbours is knn's vote, read where votes are.
RETRIEVER_PARAMS = ("retrieval.ngram_max", "retrieval.min_df", "retrieval.sublinear_tf")
# The params every model-predicting stage reads (dvc.yaml states the same list once, as the anchor &scoring).
SCORING_PARAMS = ("eval.constrained", "eval.top_k", "eval.num_beams", "eval.batch_size", "eval.max_new_tokens",
                  "eval.max_input_tokens", "eval.few_shot", "eval.few_shot_strategy", "eval.max_shot_tokens",
                  "eval.repetition_penalty", "eval.max_samples", "eval.seed", *RETRIEVER_PARAMS, "data.input")
# What every training stage reads besides its kind's own recipe section (dvc.yaml: the anchor &recipe): the eval
# keys its validation decoding uses to choose the checkpoint kept (icdstudy.training.probe_settings).
TRAINING_PARAMS = ("train", "eval.max_input_tokens", "eval.constrained", "eval.top_k", "eval.num_beams",
                   "eval.max_new_tokens", "eval.repetition_penalty", "data.input")


@dataclass(frozen=True)
class Kind:
    """One kind of system. Model kinds make one system per model key in the params list ``selects``
    (id ``<name>-<model>``); a floor (``selects`` None) is one system, always selected, named ``name``."""
    name: str
    stage: str                      # the DVC stage writing its predictions: <stage>@<model>, or a floor's stage
    label: str                      # how a sentence names a system; {model} is its model key
    color: str                      # its colour in every plot
    selects: str | None = None      # the params list of model keys that selects it; None = a floor
    prompt: str | None = None       # plain | examples (retrieved training examples) | candidates (retrieved codes listed)
    train_stage: str | None = None  # fine-tuned kinds: the stage training its adapter, <train_stage>@<model>
    recipe: str | None = None       # a params section whose keys replace `train`'s for its training runs
    params: tuple[str, ...] = ()    # params its stage reads beyond SCORING_PARAMS (and models.<m>)
    adds: tuple[str, str] | None = None  # (the kind it extends by one thing, that thing): the answer says what it adds

    @property
    def floor(self) -> bool:
        return self.selects is None

    @property
    def fine_tuned(self) -> bool:
        return self.train_stage is not None

    def system(self, model: str | None = None) -> str:
        return self.name if self.floor else f"{self.name}-{model}"

    def stage_for(self, model: str | None = None) -> str:
        return self.stage if self.floor else f"{self.stage}@{model}"


KINDS: tuple[Kind, ...] = (
    Kind("lora", "evaluate", "fine-tuned {model}", "#1b9e77", selects="finetune", prompt="plain",
         train_stage="train", adds=("zeroshot", "Fine-tuning {model}")),
    Kind("lora-shortlist", "evaluate-shortlist", "fine-tuned {model} with shortlists", "#0b5d47",
         selects="finetune_shortlist", prompt="candidates", train_stage="train-shortlist", recipe="train_shortlist",
         params=("eval.candidates", "retrieval.neighbours"), adds=("lora", "Shortlists for fine-tuned {model}")),
    Kind("zeroshot", "zeroshot", "zero-shot {model}", "#d95f02", selects="zeroshot", prompt="plain"),
    Kind("fewshot", "fewshot", "few-shot {model} ({retrieval_k} retrieved examples)", "#e6ab02", selects="zeroshot",
         prompt="examples", params=("eval.retrieval_k", "eval.fewshot_batch_size")),
    Kind("shortlist", "shortlist", "zero-shot {model} with a shortlist ({candidates} retrieved codes)", "#a6761d",
         selects="shortlist", prompt="candidates", params=("eval.candidates", "retrieval.neighbours")),
    Kind("tfidf-logreg", "baseline", "the TF-IDF baseline", "#7570b3", params=("baseline",)),
    Kind("knn-tfidf", "knn", "the TF-IDF nearest-neighbour floor", "#e7298a", params=("retrieval",)),
)
BY_NAME = {k.name: k for k in KINDS}
# Longest name first: "lora-shortlist-x" is a lora-shortlist system, not a lora one.
_BY_PREFIX = sorted(KINDS, key=lambda k: -len(k.name))


def kind_named(name: str) -> Kind:
    if name not in BY_NAME:
        raise ValueError(f"{name!r} is not a kind of system; kinds: {', '.join(BY_NAME)}")
    return BY_NAME[name]


def selection_lists() -> list[str]:
    """The params lists that select models for the model kinds, in KINDS order, each once."""
    return list(dict.fromkeys(k.selects for k in KINDS if k.selects))


def kind_of(system_id: str) -> Kind | None:
    for k in _BY_PREFIX:
        if system_id == k.name if k.floor else system_id.startswith(k.name + "-"):
            return k
    return None


def model_of(system_id: str) -> str | None:
    k = kind_of(system_id)
    return None if k is None or k.floor else system_id[len(k.name) + 1:]


@dataclass(frozen=True)
class System:
    id: str
    kind: Kind = field(compare=False)
    model: str | None

    @property
    def stage(self) -> str:
        return self.kind.stage_for(self.model)

    @property
    def fine_tuned(self) -> bool:
        return self.kind.fine_tuned

    @property
    def run(self) -> str | None:
        """Its training run (adapter, metrics/train/<run>.json, dvclive/<run>/): named after the system."""
        return self.id if self.fine_tuned else None

    @property
    def train_stage(self) -> str | None:
        return f"{self.kind.train_stage}@{self.model}" if self.fine_tuned else None

    @property
    def adapter(self) -> Path | None:
        return Path("models/adapters") / self.id if self.fine_tuned else None

    @property
    def seed_adapters(self) -> Path | None:
        return Path("models/seeds") / self.id if self.fine_tuned else None

    def metrics(self, split: str = "test") -> Path:
        return Path("metrics/eval" if split == "test" else f"metrics/{split}") / f"{self.id}.json"

    def predictions(self, split: str = "test") -> Path:
        return Path("predictions" if split == "test" else f"predictions/{split}") / f"{self.id}.jsonl"

    @property
    def run_record(self) -> Path:
        """What the predicting stage measured besides the predictions: speed, memory, size, settings."""
        return Path("predictions/runs") / f"{self.id}.json"

    def label(self, metrics: dict | None = None) -> str:
        """How a sentence names it; details the metrics lack are left out."""
        text = self.kind.label
        for key in ("retrieval_k", "candidates"):
            if "{" + key + "}" in text:
                value = (metrics or {}).get("few_shot" if key == "retrieval_k" else key)
                text = text.replace("{" + key + "}", str(value)) if value else text.split(" (")[0]
        return text.replace("{model}", self.model or "")


def system(kind: Kind | str, model: str | None = None) -> System:
    kind = kind_named(kind) if isinstance(kind, str) else kind
    return System(kind.system(model), kind, None if kind.floor else model)


def parse(system_id: str) -> System:
    k = kind_of(system_id)
    if k is None:
        raise ValueError(f"{system_id!r} names no kind of system ({', '.join(BY_NAME)})")
    return system(k, model_of(system_id))


def selected(params: dict) -> list[System]:
    """Every system the params select, in the report's order: fine-tuned, prompted, floors."""
    out = []
    for k in sorted(KINDS, key=lambda k: (not k.fine_tuned, k.floor)):
        models = [None] if k.floor else params.get(k.selects) or []
        out += [system(k, m) for m in models]
    return out


def by_id(params: dict) -> dict[str, System]:
    return {s.id: s for s in selected(params)}


def duplicate_ids(params: dict) -> list[str]:
    """System ids two selections would share (a model key like another kind's prefix): never allowed."""
    ids = [s.id for s in selected(params)]
    return sorted({i for i in ids if ids.count(i) > 1})


def training_runs(params: dict) -> list[str]:
    return [s.run for s in selected(params) if s.fine_tuned]


def old_run_paths(s: System, root: Path = Path(".")) -> list[Path]:
    """Where a fine-tuned system's training run lay before runs were named after their systems (the model
    key for `train`, "<recipe without train_>-<model>" for a kind's own recipe), where such files remain:
    nothing reads them any more."""
    if not s.fine_tuned:
        return []
    old = s.model if not s.kind.recipe else f"{s.kind.recipe.split('_', 1)[1]}-{s.model}"
    paths = [root / "models/adapters" / old, root / "models/seeds" / old, root / "metrics/train" / f"{old}.json",
             root / "dvclive" / old]
    return [p for p in paths if p.exists()]


def seed_predictions(s: System, params: dict) -> dict[str, Path]:
    """The other training seeds' test predictions of a fine-tuned system (seed-<n> -> path)."""
    if not s.fine_tuned:
        return {}
    seeds = (params.get("train") or {}).get("seeds") or []
    return {f"seed-{n}": Path("predictions/seeds") / s.id / f"seed-{n}.jsonl" for n in seeds[1:]}


def stage_params(k: Kind) -> list[str]:
    """The params a kind's predicting stage depends on (dvc.yaml must list exactly these)."""
    if k.floor:
        return [*k.params, "eval.top_k", "eval.max_samples"]
    return [*SCORING_PARAMS, *k.params]


def training_params(k: Kind) -> list[str]:
    """The params a fine-tuned kind's training stage depends on, besides models.<m>."""
    retriever = RETRIEVER_PARAMS if k.prompt != "plain" else ()
    return [*TRAINING_PARAMS, *([k.recipe] if k.recipe else []), *k.params, *retriever]


def from_stage(stage: str) -> tuple[str, Kind, str | None] | None:
    """(role, kind, model) of a stage name: role 'train' for a training stage, 'predict' for the stage
    writing a kind's predictions; None for the other stages (prepare, base@, report ...)."""
    name, _, model = stage.partition("@")
    for k in KINDS:
        if k.train_stage == name:
            return "train", k, model
        if k.stage == name and (k.floor != bool(model)):
            return "predict", k, model or None
    return None
