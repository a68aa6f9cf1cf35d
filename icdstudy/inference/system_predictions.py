"""One language-model system's predictions, as stage predict@<system> makes them: its inputs (prompt rows of every
split and its decoding, checked before any model loads), one model load that predicts the named splits with
resumable batches, the run record (size, memory, time, device, CPU kernels), and the other training seeds'
test predictions.
"""
# torch is imported where a model loads: a system whose params or inputs are wrong fails before it.
from __future__ import annotations

import time
from pathlib import Path

from icdstudy import systems
from icdstudy.core import machine
from icdstudy.core.io import read_json, read_jsonl, write_json, write_jsonl
from icdstudy.core.params import section
from icdstudy.inference.evaluation import Decoding, model_fingerprint
from icdstudy.inference.prompt_styles import generation_settings, prompt_rows, style
from icdstudy.models.modeling import ModelError, count_parameters, is_oom, load_for_inference, oom_message
from icdstudy.neighbours.retrieval import Retriever

class PredictionError(Exception):
    """A system that cannot predict as configured; the message says what to run or change."""


def load_inputs(system: systems.System, params: dict, data: Path) -> dict:
    """Everything the system's predictions are made from, before any model loads."""
    ecfg, retrieval = section(params, "decoding"), section(params, "retrieval")
    style(system.prompt).check(system.retrieved, system.params_key)
    if system.fine_tuned and not (system.adapter / "adapter_config.json").exists():
        raise PredictionError(f"{system.adapter} holds no adapter; run `dvc repro {system.train_stage}` first")
    train_rows = read_jsonl(data / "train.jsonl")
    retriever = None
    if style(system.prompt).uses_retriever:
        retriever = Retriever.from_params(train_rows, retrieval)
    splits = {}
    for split in systems.SPLITS:
        rows = read_jsonl(data / f"{split}.jsonl")[:ecfg["max_samples"] or None]
        if not rows:
            raise PredictionError(f"{data}/{split}.jsonl has no samples; rerun `dvc repro prepare` (it refuses empty splits)")
        splits[split] = prompt_rows(system.prompt, train_rows, rows, system.retrieved, retrieval, retriever)
    settings = generation_settings(ecfg, system.decoding, system.prompt, system.retrieved)
    return {"splits": splits, "input_kind": section(params, "data")["input"], "settings": settings,
            "decoding": Decoding(tuple(read_json(data / "labels.json")), settings, tuple(train_rows), retrieval)}


def predict_splits(system: systems.System, name: str, adapter, split_names, inputs: dict, entry: dict) -> dict:
    """Load one model (the base, with ``adapter`` merged in) and predict the named splits:
    {split: predictions, "record": measurements}."""
    import torch

    settings, base_dir = inputs["settings"], system.base
    shows = (f"{system.retrieved} " if system.retrieved else "") + style(system.prompt).shows
    torch.manual_seed(settings.seed)
    t_start = time.time()
    try:
        tokenizer, model = load_for_inference(base_dir, entry, adapter)
    except (ModelError, OSError) as exc:
        raise PredictionError(str(exc)) from None
    load_s = time.time() - t_start
    out = {}
    for split in split_names:
        rows = inputs["splits"][split]
        print(f"predict: {name} on {len(rows)} {split} samples, {len(inputs['decoding'].labels)} labels, "
              f"{'constrained top-' + str(settings.top_k) if settings.constrained else 'free text'}, "
              f"{shows}, load {load_s:.1f}s")
        try:
            out[split] = inputs["decoding"].run(model, tokenizer, rows, inputs["input_kind"],
                                                fingerprint_parts={"model": model_fingerprint(base_dir, adapter)},
                                                resume_file=Path(".resume") / f"{name}-{split}.jsonl")
        except ModelError as exc:
            raise PredictionError(str(exc)) from None
        except Exception as exc:
            if not is_oom(exc):
                raise
            raise PredictionError(oom_message(name, f"{system.params_key}.decoding.batch_size, decoding.top_k / decoding.num_beams "
                                               "or decoding.max_input_tokens")) from None
    out["record"] = {"params_total": count_parameters(model), "peak_mem_mb": machine.peak_memory_mb(),
                     "load_s": round(load_s, 2), "wall_s": round(time.time() - t_start, 2),
                     "device": "cuda" if torch.cuda.is_available() else "cpu", "cpu_kernels": machine.cpu_kernels()}
    return out


def predict_seeds(system: systems.System, params: dict, inputs: dict, entry: dict) -> list[int]:
    """The run's other seeds' test predictions, into predictions/seeds/<system>/; returns every seed."""
    out_dir = Path("predictions/seeds") / system.id
    seeds, paths = [], {}
    if system.fine_tuned:
        seeds = read_json(system.seed_adapters / "seeds.json")["seeds"]
        paths = systems.seed_predictions(system, params)
        for seed, path in zip(seeds[1:], paths.values()):
            extra = predict_splits(system, f"{system.id}-seed{seed}", system.seed_adapters / f"seed-{seed}", ["test"],
                            inputs, entry)
            write_jsonl(path, extra["test"])
    write_json(out_dir / "seeds.json", {"seeds": seeds, "files": [str(p) for p in paths.values()]})
    return seeds


