"""Did your `make demo` reproduce ours? Compares the demo you just ran with the one committed to git.

    make check-demo            (after make demo)
    python tools/check_demo.py [--rev HEAD]

Compares, cell by cell, every quality number of the report you just wrote (reports/report.md: exact match
with its CI, category, chapter, valid, macro-F1, top-k, ECE, coverage and precision, validation exact match,
the kept checkpoint) with the committed report, and the content hashes that `dvc repro` wrote into dvc.lock
for what must come out byte-identical (the processed splits, the adapter, the training curves) with the
committed dvc.lock. Timings, throughput, memory and dollar figures are left out: they measure your machine.
Exit 0 when everything agrees, 1 with the list of differences and what usually causes them.

The demo's numbers are the same on every x86-64 CPU with AVX2 (icdstudy/core/machine.py pins the kernels);
`make test` never compares your run with ours, this command does.
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from pathlib import Path

import yaml

from icdstudy.reporting.markdown_tables import cells_by_system, same_cell

# Columns that measure the machine, not the study (matched on the header's words).
MACHINE = ("$", "latency", "samples/s", "memory", "tokens/s", "wall", "throughput")
# dvc.lock outputs that a run on any x86-64 CPU must write byte for byte (predictions hold latencies; metrics
# hold timings).
EXACT_OUTPUTS = ("data/processed", "models/adapters/", "dvclive/")


def git_show(rev: str, path: str) -> str | None:
    proc = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def report_differences(ours: str, yours: str) -> tuple[int, list[str]]:
    """(cells compared, differences) between two reports' quality cells."""
    _, a = cells_by_system(ours)
    systems_b, b = cells_by_system(yours)
    compared, diffs = 0, []
    for key in sorted(set(a) | set(b)):
        system, column = key
        if any(word in column for word in MACHINE):
            continue
        if key not in a or key not in b:
            diffs.append(f"{system} / {column}: only in {'the committed' if key in a else 'your'} report")
            continue
        compared += 1
        if not same_cell(a[key], b[key]):
            diffs.append(f"{system} / {column}: ours {a[key]!r}, yours {b[key]!r}")
    return compared, diffs


def output_hashes(lock_text: str) -> dict[str, str]:
    """Every stage output's content hash in a dvc.lock, by path."""
    lock = yaml.safe_load(lock_text) or {}
    out = {}
    for stage in (lock.get("stages") or {}).values():
        for o in stage.get("outs") or []:
            out[o["path"]] = o.get("md5") or o.get("hash") or ""
    return out


def hash_differences(ours: str, yours: str) -> tuple[int, list[str]]:
    a, b = output_hashes(ours), output_hashes(yours)
    paths = [p for p in sorted(set(a) | set(b)) if p.startswith(EXACT_OUTPUTS)]
    diffs = [f"{p}: content differs from ours" for p in paths if a.get(p) != b.get(p)]
    return len(paths), diffs


def environment() -> str:
    import torch
    import transformers

    from icdstudy.core import machine

    return (f"torch {torch.__version__}, transformers {transformers.__version__}, CPU kernels "
            f"{machine.cpu_kernels()}, {platform.machine()}, {platform.python_version()}")


CAUSES = """What usually makes a demo differ from ours:
- another CPU architecture (ARM, Apple silicon) or an x86 CPU without AVX2: the kernels cannot be pinned
  (docs/method.md: Same numbers on any CPU says by how much the numbers moved where we measured);
- CPU kernels not pinned: ICDSTUDY_NATIVE_KERNELS=1 or ATEN_CPU_CAPABILITY set in your shell;
- other package versions than constraints.txt pins (install with `make setup`);
- edited params.yaml, code or data (`git status`, `dvc status`)."""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default="HEAD", help="the commit whose demo you compare with (default HEAD)")
    args = parser.parse_args(argv)
    ours_report, ours_lock = git_show(args.rev, "reports/report.md"), git_show(args.rev, "dvc.lock")
    if ours_report is None or ours_lock is None:
        print(f"check-demo: {args.rev} has no committed reports/report.md and dvc.lock to compare with", file=sys.stderr)
        return 2
    if not Path("dvc.lock").exists() or not Path("reports/report.md").exists():
        print("check-demo: run `make demo` first: there is no dvc.lock or reports/report.md here", file=sys.stderr)
        return 2
    n_cells, cells = report_differences(ours_report, Path("reports/report.md").read_text())
    n_outs, outs = hash_differences(ours_lock, Path("dvc.lock").read_text())
    print(f"check-demo: {n_cells} report cells and {n_outs} outputs compared with {args.rev}; {environment()}")
    if not cells and not outs:
        print("check-demo: your demo reproduced ours: every quality number and every byte-exact output agrees")
        return 0
    for line in cells + outs:
        print(f"  differs: {line}")
    print(CAUSES)
    return 1


if __name__ == "__main__":
    sys.exit(main())
