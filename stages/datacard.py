"""Stage `datacard`: write reports/data.md from the processed splits (token lengths use the
tokenizer of params `datacard.tokenizer`)."""
import argparse
import sys
from pathlib import Path

from transformers import AutoTokenizer

from icdstudy.core.io import read_json, read_jsonl, write_text_atomic
from icdstudy.core.params import ParamError, load_params, section
from icdstudy.reporting.datacard import near_copy_rows, render


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    parser.add_argument("--out", default="reports/data.md")
    args = parser.parse_args()
    try:
        params = load_params(args.params)
    except ParamError as exc:
        print(f"datacard: error: {exc}", file=sys.stderr)
        return 1
    key = section(params, "datacard")["tokenizer"]



    tokenizer = AutoTokenizer.from_pretrained(f"models/base/{key}")
    splits = {name: read_jsonl(Path(args.data) / f"{name}.jsonl") for name in ("train", "val", "test")}
    lengths = {name: [len(ids) for ids in tokenizer([r["input"] for r in rows], add_special_tokens=False)["input_ids"]]
               for name, rows in splits.items() if rows}
    near = near_copy_rows(splits["train"], splits["test"], params)
    text = render(splits, read_json("metrics/data.json"), lengths, key, str(params["data"]["source"]), near)
    write_text_atomic(args.out, text)
    print(f"datacard: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
