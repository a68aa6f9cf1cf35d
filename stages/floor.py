"""Stage floor@<system>: the predictions of one classical floor of params `systems.floors`.

    python stages/floor.py SYSTEM        e.g. `knn-tfidf`

The entry's `method` names its floor (icdstudy/floors): tfidf-logreg, TF-IDF + logistic regression with the
entry's hyperparameters, fitted on the training split; knn-tfidf, the codes of each input's retrieval.neighbours
nearest training inputs (params `retrieval`), whose first candidate is stage `score`'s retriever-agreement
signal. Both read decoding.top_k and decoding.max_samples, predict the validation, calibration
and test splits (their first decoding.max_samples rows, as every system does) and write
predictions/{val,calibration}/<system>.jsonl, predictions/<system>.jsonl and predictions/runs/<system>.json.
What an LLM scores above them, it adds beyond classical text classification and retrieval.
"""
import argparse
import sys
import time

from icdstudy import systems
from icdstudy.core import machine
from icdstudy.core.io import read_splits, write_json, write_jsonl
from icdstudy.core.params import ParamError, load_params, section
from icdstudy.floors.methods import METHODS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("system", help="an id under systems.floors in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        system = systems.get(params, args.system)
        if not system.floor:
            raise ValueError(f"{system.id} is no floor: its stage is {system.stage}")
        ecfg = section(params, "decoding")
        t0 = time.time()
        train_rows, *scored = read_splits(args.data, "train", *systems.SPLITS)
    except (ParamError, ValueError) as exc:
        print(f"floor: error: {exc}", file=sys.stderr)
        return 1
    top_k = max(ecfg["top_k"], 5)
    scored = [rows[:ecfg["max_samples"] or None] for rows in scored]
    predictions, size, fit_s, extra = METHODS[system.method](train_rows, scored, system.settings,
                                                             section(params, "retrieval"), top_k)
    for split, rows in zip(systems.SPLITS, predictions):
        write_jsonl(system.predictions(split), rows)
    write_json(system.run_record, {"system": system.id, "method": system.method, "model": system.id,
                                   "params_total": size, "peak_mem_mb": machine.peak_memory_mb(),
                                   "load_s": round(fit_s, 2), "wall_s": round(time.time() - t0, 2), "device": "cpu",
                                   "constrained": True, "top_k": top_k, "few_shot": 0, **extra})
    val = predictions[0]
    print(f"floor: {system.id}: val exact {sum(p['pred'] == p['gold'] for p in val)}/{len(val)}, fit {fit_s:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
