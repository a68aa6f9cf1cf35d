"""Stage predict@<system>: the predictions of one language-model system of params `systems.llm`.

    python stages/predict.py SYSTEM        e.g. `lora-shortlist-smollm2-135m`

The system's entry says which base model it prompts (`model`), how its prompt presents an encounter
(`prompt`, with `retrieved` examples or codes; icdstudy.inference.prompt_styles), which of params `decoding`'s keys it
decodes with differently (its own `decoding`), and, for a fine-tuned system, the training run whose LoRA adapter
(models/adapters/<run>, written by train@<run>) is merged in first. The model is loaded once and
predicts the validation, calibration and test splits (the first decoding.max_samples rows of each); the
adapters of the run's other `recipe.seeds` predict the test split.

Writes predictions/val/<system>.jsonl, predictions/calibration/<system>.jsonl, predictions/<system>.jsonl
(test), predictions/seeds/<system>/
(the other seeds' test predictions and seeds.json, which lists them: empty for an untrained system) and
predictions/runs/<system>.json (load time, memory, size, settings); stage `score` turns them into
metrics. An interrupted run resumes from .resume/<system>-<split>.jsonl.
"""
import argparse
import sys
from pathlib import Path

from icdstudy import systems
from icdstudy.core.io import write_json, write_jsonl
from icdstudy.core.params import ParamError, load_params, model_entry
from icdstudy.inference.system_predictions import PredictionError, load_inputs, predict_seeds, predict_splits


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
            raise PredictionError(f"{system.id} is a floor: its stage is {system.stage}")
        entry = model_entry(params, system.model)
        inputs = load_inputs(system, params, Path(args.data))
        done = predict_splits(system, system.id, system.adapter, systems.SPLITS, inputs, entry)
        for split in systems.SPLITS:  # the test split's score is the report's to print
            hits = sum(p["pred"] == p["gold"] for p in done[split])
            print(f"predict: {system.id}: {len(done[split])} {split} predictions" + (f", exact {hits}" if split == "val" else ""))
        seeds = predict_seeds(system, params, inputs, entry)
    except (ParamError, ValueError, PredictionError) as exc:
        print(f"predict: error: {exc}", file=sys.stderr)
        return 1
    for split in systems.SPLITS:
        write_jsonl(system.predictions(split), done[split])
    settings = inputs["settings"]
    write_json(system.run_record, {
        "system": system.id, "model": system.model, "prompt": system.prompt, "retrieved": system.retrieved,
        "run": system.run, **done["record"],
        "constrained": settings.constrained, "top_k": settings.top_k if settings.constrained else 1,
        "few_shot": settings.few_shot, "few_shot_strategy": "nearest" if settings.few_shot else None,
        "inputs_truncated": {split: sum(p["input_truncated"] for p in done[split]) for split in systems.SPLITS},
        **({"seeds": seeds} if seeds else {}),
    })
    for name in [system.id] + [f"{system.id}-seed{s}" for s in seeds[1:]]:
        for split in systems.SPLITS:
            Path(".resume", f"{name}-{split}.jsonl").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
