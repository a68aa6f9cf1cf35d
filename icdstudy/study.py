"""Run the study with a committed override file: `python -m icdstudy.study full-study`.

Reads configs/<name>.yaml (dotted params.yaml keys -> values) and runs
`dvc exp run -n <name> -S key=value ...`, so the full study is one command and one DVC
experiment, with no edit to params.yaml or the code. Extra arguments go to `dvc exp run`.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import yaml


def overrides(config: Path) -> list[str]:
    with open(config, encoding="utf-8") as fh:
        values = yaml.safe_load(fh) or {}
    args = []
    for key, value in values.items():
        # JSON is valid Hydra override syntax for strings, numbers, booleans and lists.
        rendered = json.dumps(value) if not isinstance(value, list) else "[" + ",".join(map(str, value)) + "]"
        args += ["-S", f"{key}={rendered}"]
    return args


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m icdstudy.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="a file configs/<name>.yaml, e.g. full-study")
    parser.add_argument("--dry-run", action="store_true", help="print the dvc command instead of running it")
    args, extra = parser.parse_known_args(argv)
    config = Path("configs") / f"{args.name}.yaml"
    if not config.exists():
        print(f"study: error: {config} not found; available: "
              f"{', '.join(p.stem for p in Path('configs').glob('*.yaml')) or 'none'}", file=sys.stderr)
        return 2
    cmd = ["dvc", "exp", "run", "-n", args.name, *overrides(config), *extra]
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
