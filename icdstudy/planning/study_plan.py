"""The plan of every stage the tables make: base@ per model, train@ per training run (its validation decoding
included), predict@ per language-model system, sized by the data as prepared (data/processed, where dvc.lock says
it was made with these params) or by MedSynth's published size. The memory and time model is planning.plan.
"""
from __future__ import annotations

from pathlib import Path

from icdstudy import systems
from icdstudy.core.io import read_jsonl
from icdstudy.core.params import model_entry, run_recipe, yaml_load
from icdstudy.inference.prompt_styles import generation_settings, style
from icdstudy.planning.architectures import architecture
from icdstudy.planning.plan import CHARS_PER_TOKEN, MEDSYNTH, DataStats, plan_base, plan_eval, plan_train


def data_stats(params: dict, root: Path = Path(".")):
    """Row counts and input lengths from data/processed when it was prepared with these data and
    split params (per dvc.lock); otherwise the published size of MedSynth."""
    lock = root / "dvc.lock"
    processed = root / "data/processed"
    if lock.exists() and (processed / "train.jsonl").exists():
        prep = (yaml_load(lock.read_text()) or {}).get("stages", {}).get("prepare", {})
        locked = prep.get("params", {}).get("params.yaml", {})
        if locked.get("data") == params["data"] and locked.get("split") == params["split"]:
            parts = {n: read_jsonl(processed / f"{n}.jsonl") for n in ("train", "val", "calibration", "test")
                     if (processed / f"{n}.jsonl").exists()}
            lengths = [len(r["input"]) / CHARS_PER_TOKEN for rows in parts.values() for r in rows]
            return DataStats(len(parts["train"]), len(parts["val"]), len(parts["test"]),
                             sum(lengths) / len(lengths), int(max(lengths)), "data/processed",
                             len(parts.get("calibration", [])))
    rows = MEDSYNTH["rows"]
    val, cal, test = params["split"]["val"], params["split"]["calibration"], params["split"]["test"]
    mean = MEDSYNTH["mean_input_tokens"].get(params["data"]["input"], 930)
    return DataStats(round(rows * (1 - val - cal - test)), round(rows * val), round(rows * test), mean, None,
                     f"MedSynth's published size ({rows:,} rows, mean {mean} input tokens); longest = decoding.max_input_tokens",
                     round(rows * cal))


def plan_stages(params: dict, stats, hw, use_hub: bool = True) -> list:
    """A plan for every stage the tables make: base@ per model, train@ per training run, predict@ per
    language-model system (floors and score run on CPU in seconds)."""
    archs = {}
    for key in params["base_models"]:
        entry = model_entry(params, key)
        archs[key] = (architecture(entry, Path("models/base") / key, use_hub=use_hub), entry)
    stages = [plan_base(k, a) for k, (a, _) in archs.items()]
    trains = {run: _plan_run(params, run, archs, stats, hw) for run in systems.training_runs(params)}
    stages += trains.values()
    for s in systems.selected(params):
        if not s.floor:
            stages.append(_plan_predict(params, s, archs, stats, hw))
    return stages


def _seeds(params: dict, run: str) -> int:
    return len(run_recipe(params, run)["seeds"])


def _plan_run(params: dict, run: str, archs: dict, stats, hw):
    """train@<run>: its steps, and the validation decoding that keeps a checkpoint (paid at every evaluation)."""
    spec, ecfg = systems.run_entry(params, run), params["decoding"]
    arch, entry = archs[spec["model"]]
    tcfg = run_recipe(params, run)
    listed = style(spec["prompt"]).shortlist_tokens(spec.get("retrieved") or 0)
    decoded = generation_settings(ecfg, {}, spec["prompt"], spec.get("retrieved") or 0)  # as the train stage's probe
    probe = {**ecfg, **vars(decoded), "max_samples": tcfg.get("max_val_samples")}
    train = plan_train(spec["model"], arch, entry, tcfg, ecfg["max_input_tokens"], stats, hw, listed, stage=f"train@{run}",
                       probe=plan_eval(f"train@{run} probe", spec["model"], arch, entry, probe, stats, hw, 0,
                                       extra_tokens=listed, splits=("val",)))
    seeds = len(tcfg["seeds"])
    if seeds > 1:
        train.est_hours = round(train.est_hours * seeds, 2)
        train.detail["seeds"] = seeds
    return train


def _plan_predict(params: dict, s, archs: dict, stats, hw):
    """predict@<system>: its prompts (shown examples, listed codes) at its own decoding settings."""
    arch, entry = archs[s.model]
    cfg = style(s.prompt).settings({**params["decoding"], **s.decoding}, s.retrieved)
    # the system's own batch: decoding.batch_size would also change the training probe's decoding, so retrain
    batch_key = ("" if "batch_size" in s.decoding else "+") + f"{s.params_key}.decoding.batch_size"
    seeds = _seeds(params, s.run) if s.fine_tuned else 1
    predict = plan_eval(s.stage, s.model, arch, entry, cfg, stats, hw, cfg.get("few_shot", 0), batch_key,
                        extra_tokens=style(s.prompt).shortlist_tokens(s.retrieved), seeds=seeds)
    if seeds > 1:
        predict.detail["seeds"] = seeds
    return predict
