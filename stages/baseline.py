"""Stage `baseline`: the floor tfidf-logreg, TF-IDF + logistic regression on the same splits and inputs
as the LLMs.

Reads params `baseline`, `eval.top_k` and `eval.max_samples`; fits on the training split and predicts
the validation and test splits (their first eval.max_samples rows, as every system does). Writes
predictions/val/tfidf-logreg.jsonl, predictions/tfidf-logreg.jsonl and predictions/runs/tfidf-logreg.json;
stage `score` scores them like every other system.
"""
import argparse
import sys
import time

from icdstudy import metrics, systems
from icdstudy.baseline import train_and_predict
from icdstudy.io import read_splits, write_json, write_jsonl
from icdstudy.params import ParamError, load_params, section

SYSTEM = systems.system(systems.from_stage("baseline")[1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        cfg, ecfg = section(params, "baseline"), section(params, "eval")
        t0 = time.time()
        train_rows, *scored = read_splits(args.data, "train", *systems.SPLITS)
    except (ParamError, ValueError) as exc:
        print(f"baseline: error: {exc}", file=sys.stderr)
        return 1
    top_k = max(ecfg["top_k"], 5)
    predictions, n_params, fit_s = train_and_predict(train_rows, [rows[:ecfg["max_samples"] or None] for rows in scored],
                                                     cfg, top_k=top_k)
    for split, rows in zip(systems.SPLITS, predictions):
        write_jsonl(SYSTEM.predictions(split), rows)
    write_json(SYSTEM.run_record, {"system": SYSTEM.id, "kind": SYSTEM.kind.name, "model": SYSTEM.id,
                                   "params_total": n_params, "peak_mem_mb": metrics.peak_memory_mb(),
                                   "load_s": round(fit_s, 2), "wall_s": round(time.time() - t0, 2), "device": "cpu",
                                   "constrained": True, "top_k": top_k, "few_shot": 0})
    print(f"baseline: {SYSTEM.id}: " + ", ".join(f"{split} exact {sum(p['pred'] == p['gold'] for p in rows)}/{len(rows)}"
                                                 for split, rows in zip(systems.SPLITS, predictions))
          + f", fit {fit_s:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
