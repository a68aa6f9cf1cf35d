"""Stage `prepare`: MedSynth (hub, local file or demo) -> clean, redacted, per-code splits.

Reads params `data` and `split`; writes data/processed/{train,val,calibration,test}.jsonl, labels.json
and metrics/data.json.
"""
import argparse
import shutil
import sys
import time
from pathlib import Path

from icdstudy.corpus import data
from icdstudy.core.io import write_json, write_jsonl
from icdstudy.core.params import ParamError, load_params, section


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="data/processed")
    parser.add_argument("--metrics", default="metrics/data.json")
    args = parser.parse_args()

    t0 = time.time()
    try:
        params = load_params(args.params)
        dcfg, scfg = section(params, "data"), section(params, "split")
        raw = data.load_source(str(dcfg["source"]))
        frame = data.canonicalize(raw, dcfg["input"], origin=f"data.source {dcfg['source']!r}")
        cleaned = data.clean(frame, dcfg["input"], dcfg["unknown_codes"], dcfg["redact_descriptions"])
        if not cleaned.rows:
            raise data.DataError(f"data.source {dcfg['source']!r}: no rows left after cleaning "
                                 f"(dropped: {dict(cleaned.dropped)}); check data.input and the file's columns")
        parts = data.split_by_code(cleaned.rows, scfg["val"], scfg["test"], scfg["seed"], scfg["min_rows_per_code"],
                                   scfg["calibration"])
        data.check_split(parts, scfg, f"data.source {dcfg['source']!r}")
    except (data.DataError, ParamError) as exc:
        print(f"prepare: error: {exc}", file=sys.stderr)
        return 1

    # Written to a sibling folder and renamed, so a killed run never leaves a partial set of splits.
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in ("train", *data.HELD_OUT):
        write_jsonl(tmp / f"{name}.jsonl", getattr(parts, name))
    labels = data.labels_table(parts.train)
    write_json(tmp / "labels.json", labels)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    metrics = {
        "rows_in": cleaned.rows_in,
        "rows_out": len(cleaned.rows),
        "dropped": dict(sorted(cleaned.dropped.items())),
        "n_codes": len(labels),
        "train": len(parts.train),
        "val": len(parts.val),
        "calibration": len(parts.calibration),
        "test": len(parts.test),
        "train_only_codes": parts.train_only_codes,
        "code_mentions_before": cleaned.mentions_before,
        "code_mentions_after": cleaned.mentions_after,
        "codes_not_in_icd10cm_rows": cleaned.unknown_codes_kept,
        "nonbillable_code_rows": cleaned.nonbillable_rows,
        "input": dcfg["input"],
        "source": str(dcfg["source"]),
        "source_revision": raw.attrs.get("revision"),  # the hub commit read, or the local file's hash
    }
    write_json(args.metrics, metrics)
    print(f"prepare: {metrics['rows_in']} rows in, {metrics['rows_out']} out, dropped {metrics['dropped'] or 'none'}; "
          f"train/val/calibration/test {metrics['train']}/{metrics['val']}/{metrics['calibration']}/{metrics['test']} "
          f"over {metrics['n_codes']} codes; "
          f"code mentions {metrics['code_mentions_before']} -> {metrics['code_mentions_after']} ({time.time() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
