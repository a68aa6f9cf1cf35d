"""Stage predict@<system>: the predictions of one language-model system of params `systems.llm`.

    python stages/predict.py SYSTEM        e.g. `lora-shortlist-smollm2-135m`

The system's entry says which base model it prompts (`model`), how its prompt presents an encounter
(`prompt`, with `retrieved` examples or codes; icdstudy.inference.prompt_styles), which eval keys it decodes with
differently (`decoding`), and, for a fine-tuned system, the training run whose LoRA adapter
(models/adapters/<run>, written by train@<run>) is merged in first. The model is loaded once and
predicts the validation, calibration and test splits (the first eval.max_samples rows of each); the
adapters of the run's other `train.seeds` predict the test split.

Writes predictions/val/<system>.jsonl, predictions/calibration/<system>.jsonl, predictions/<system>.jsonl
(test), predictions/seeds/<system>/
(the other seeds' test predictions and seeds.json, which lists them: empty for an untrained system) and
predictions/runs/<system>.json (load time, memory, size, settings); stage `score` turns them into
metrics. An interrupted run resumes from .resume/<system>-<split>.jsonl.
"""
import argparse
import sys
import time
from pathlib import Path

from icdstudy import cpu_kernels
from icdstudy.core import systems
from icdstudy.core.io import read_json, read_jsonl, write_json, write_jsonl
from icdstudy.core.params import ParamError, load_params, model_entry, section


class StageError(Exception):
    pass


def load_inputs(system: systems.System, params: dict, data: Path) -> dict:
    """Everything the system's predictions are made from, before any model loads."""
    from icdstudy.inference.evaluation import Decoding
    from icdstudy.inference.prompt_styles import generation_settings, prompt_rows, style

    ecfg, retrieval = section(params, "eval"), section(params, "retrieval")
    style(system.prompt).check(system.retrieved, system.params_key)
    if system.fine_tuned and not (system.adapter / "adapter_config.json").exists():
        raise StageError(f"{system.adapter} holds no adapter; run `dvc repro {system.train_stage}` first")
    train_rows = read_jsonl(data / "train.jsonl")
    retriever = None
    if style(system.prompt).uses_retriever:
        from icdstudy.neighbours.retrieval import Retriever

        retriever = Retriever.from_params(train_rows, retrieval)
    splits = {}
    for split in systems.SPLITS:
        rows = read_jsonl(data / f"{split}.jsonl")[:ecfg["max_samples"] or None]
        if not rows:
            raise StageError(f"{data}/{split}.jsonl has no samples; rerun `dvc repro prepare` (it refuses empty splits)")
        splits[split] = prompt_rows(system.prompt, train_rows, rows, system.retrieved, retrieval, retriever)
    settings = generation_settings(ecfg, system.decoding, system.prompt, system.retrieved)
    return {"splits": splits, "input_kind": section(params, "data")["input"], "settings": settings,
            "decoding": Decoding(tuple(read_json(data / "labels.json")), settings, tuple(train_rows), retrieval)}


def predict(system: systems.System, name: str, adapter, split_names, inputs: dict, entry: dict) -> dict:
    """Load one model (the base, with ``adapter`` merged in) and predict the named splits:
    {split: predictions, "record": measurements}."""
    import torch

    from icdstudy.core import metrics
    from icdstudy.inference.evaluation import model_fingerprint
    from icdstudy.models.modeling import ModelError, count_parameters, is_oom, load_for_inference, oom_message

    from icdstudy.inference.prompt_styles import style

    settings, base_dir = inputs["settings"], system.base
    shows = (f"{system.retrieved} " if system.retrieved else "") + style(system.prompt).shows
    torch.manual_seed(settings.seed)
    t_start = time.time()
    try:
        tokenizer, model = load_for_inference(base_dir, entry, adapter)
    except (ModelError, OSError) as exc:
        raise StageError(str(exc)) from None
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
            raise StageError(str(exc)) from None
        except Exception as exc:
            if not is_oom(exc):
                raise
            raise StageError(oom_message(name, f"{system.params_key}.decoding.batch_size, eval.top_k / eval.num_beams "
                                               "or eval.max_input_tokens")) from None
    out["record"] = {"params_total": count_parameters(model), "peak_mem_mb": metrics.peak_memory_mb(),
                     "load_s": round(load_s, 2), "wall_s": round(time.time() - t_start, 2),
                     "device": "cuda" if torch.cuda.is_available() else "cpu", "cpu_kernels": cpu_kernels.describe()}
    return out


def predict_seeds(system: systems.System, params: dict, inputs: dict, entry: dict) -> list[int]:
    """The run's other seeds' test predictions, into predictions/seeds/<system>/; returns every seed."""
    out_dir = Path("predictions/seeds") / system.id
    seeds, paths = [], {}
    if system.fine_tuned:
        seeds = read_json(system.seed_adapters / "seeds.json")["seeds"]
        paths = systems.seed_predictions(system, params)
        for seed, path in zip(seeds[1:], paths.values()):
            extra = predict(system, f"{system.id}-seed{seed}", system.seed_adapters / f"seed-{seed}", ["test"],
                            inputs, entry)
            write_jsonl(path, extra["test"])
    write_json(out_dir / "seeds.json", {"seeds": seeds, "files": [str(p) for p in paths.values()]})
    return seeds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("system", help="an id under systems.llm in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        system = systems.get(params, args.system)
        if system.floor:
            raise StageError(f"{system.id} is a floor: its stage is {system.stage}")
        entry = model_entry(params, system.model)
        inputs = load_inputs(system, params, Path(args.data))
        done = predict(system, system.id, system.adapter, systems.SPLITS, inputs, entry)
        for split in systems.SPLITS:  # the test split's score is the report's to print
            hits = sum(p["pred"] == p["gold"] for p in done[split])
            print(f"predict: {system.id}: {len(done[split])} {split} predictions" + (f", exact {hits}" if split == "val" else ""))
        seeds = predict_seeds(system, params, inputs, entry)
    except (ParamError, ValueError, StageError) as exc:
        print(f"predict: error: {exc}", file=sys.stderr)
        return 1
    for split in systems.SPLITS:
        write_jsonl(system.predictions(split), done[split])
    settings = inputs["settings"]
    write_json(system.run_record, {
        "system": system.id, "model": system.model, "prompt": system.prompt, "retrieved": system.retrieved,
        "run": system.run, **done["record"],
        "constrained": settings.constrained, "top_k": settings.top_k if settings.constrained else 1,
        "few_shot": settings.few_shot, "few_shot_strategy": settings.few_shot_strategy if settings.few_shot else None,
        "inputs_truncated": {split: sum(p["input_truncated"] for p in done[split]) for split in systems.SPLITS},
        **({"seeds": seeds} if seeds else {}),
    })
    for name in [system.id] + [f"{system.id}-seed{s}" for s in seeds[1:]]:
        for split in systems.SPLITS:
            Path(".resume", f"{name}-{split}.jsonl").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
