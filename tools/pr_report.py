"""The pull-request report: what a change did to the study's results, as Markdown with figures.

    python tools/pr_report.py --base origin/main --out pr-report
    cml comment create --publish pr-report/report.md       (in CI: .github/workflows/pr-report.yml)

Compares the workspace (or --head REV) with --base through DVC itself: `dvc metrics diff` (quality
keys; timing keys such as wall_s and samples_per_s change on every run and are left out unless
--timing; validation and training metrics, which is what a change is judged by, and the test split's
metrics/eval/ only with --test, for the pull request that reports a finished study), `dvc params diff`, and figures drawn from both revisions' plot data, read with
dvc.api (from the DVC cache or remote): the training curves, and with --test exact match per system. Needs no
network beyond the DVC remote and posts nothing itself.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

TIMING = ("_s", "_mb", "per_s", "tokens_per_s")


def dvc_json(*args) -> dict:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args, "--json"], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"pr_report: dvc {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout or "{}")


def read_at(path: str, rev: str | None) -> str | None:
    """A file's text at a revision, git or DVC tracked (from the DVC cache or remote), None where it
    has none. rev None is the workspace: the file on disk, else what dvc.lock says it holds."""
    if rev is None and Path(path).exists():
        return Path(path).read_text()
    import dvc.api

    try:
        return dvc.api.read(path, rev=rev)
    except Exception:  # not in that revision
        return None


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


TEST_METRICS = "metrics/eval/"  # stage score's test-split files: read by the report, not used to judge a change


def metrics_table(diff: dict, timing: bool, test: bool = False) -> list[str]:
    rows = []
    for path, metrics in sorted(diff.items()):
        if not test and path.startswith(TEST_METRICS):
            continue
        for key, d in sorted(metrics.items()):
            if not timing and key.endswith(TIMING):
                continue
            change = d.get("diff")
            rows.append(f"| {path} | {key} | {_fmt(d.get('old'))} | {_fmt(d.get('new'))} | "
                        f"{(f'{change:+.4g}' if isinstance(change, (int, float)) else '—')} |")
    if not rows:
        return ["No metric changed."]
    return ["| path | metric | base | head | change |", "|---|---|---|---|---|", *rows]


def params_table(diff: dict) -> list[str]:
    rows = [f"| {key} | {_fmt(d.get('old'))} | {_fmt(d.get('new'))} |"
            for path, params in sorted(diff.items()) for key, d in sorted(params.items())]
    return ["| param | base | head |", "|---|---|---|", *rows] if rows else ["No parameter changed."]


def systems_figure(base: str | None, head: str | None, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {name: json.loads(text) for name, text in (("base", base), ("head", head)) if text}
    if not runs:
        return None
    systems = sorted({r["system"] for rows in runs.values() for r in rows})
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(systems)))
    height = 0.8 / len(runs)
    for i, (name, rows) in enumerate(runs.items()):
        acc = {r["system"]: r["exact_match"] for r in rows}
        ax.barh([k + i * height for k in range(len(systems))], [100 * acc.get(s, 0) for s in systems], height, label=name)
    ax.set_yticks([k + height * (len(runs) - 1) / 2 for k in range(len(systems))], systems)
    ax.set_xlabel("exact match on the test split (%)")
    ax.legend()
    fig.tight_layout()
    path = out / "exact_match_by_system.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves_figure(model: str, texts: dict[str, str | None], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    drawn = False
    for (rev, which), text in texts.items():
        if not text:
            continue
        rows = list(csv.DictReader(io.StringIO(text), delimiter="\t"))
        ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], label=f"{which} ({rev})",
                linestyle="-" if rev == "head" else "--")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xlabel="optimizer step", ylabel="loss per answer token", title=f"training curves: {model}", yscale="log")
    ax.legend()
    fig.tight_layout()
    path = out / f"curves_{model}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="main", help="the revision compared against (default: main)")
    p.add_argument("--head", help="the revision reported on (default: the workspace)")
    p.add_argument("--out", default="pr-report", help="folder for report.md and its figures")
    p.add_argument("--timing", action="store_true", help="also list timing keys (*_s, *_mb, *per_s)")
    p.add_argument("--test", action="store_true", help="also list the test split's metrics (metrics/eval/): for the pull "
                   "request that reports a finished study, never to choose a setting")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    revs = [args.base] + ([args.head] if args.head else [])
    metrics = dvc_json("metrics", "diff", *revs)
    params = dvc_json("params", "diff", *revs)

    figures = [systems_figure(read_at("reports/systems.json", args.base), read_at("reports/systems.json", args.head), out)
               if args.test else None]
    from icdstudy.core.params import yaml_load  # noqa: E402 (params as DVC reads them)
    from icdstudy.systems import training_runs  # noqa: E402 (the runs the head's params select)

    models = sorted(set(training_runs(yaml_load(read_at("params.yaml", args.head) or "{}") or {})))
    for model in models:
        texts = {(rev, which): read_at(f"dvclive/{model}/plots/metrics/{name}", r)
                 for rev, r in (("base", args.base), ("head", args.head))
                 for which, name in (("train", "loss.tsv"), ("validation", "eval/loss.tsv"))}
        figures.append(curves_figure(model, texts, out))
    figures = [f for f in figures if f]

    head = args.head or "this branch"
    lines = [f"## What this change does to the study ({head} against `{args.base}`)", "",
             "### Metrics" + ("" if args.test else " (validation and training; test with --test)"), "",
             *metrics_table(metrics, args.timing, args.test), "",
             "### Parameters", "", *params_table(params), ""]
    if figures:
        lines += ["### Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures] + [""]
    lines.append("Made by `tools/pr_report.py` from `dvc metrics diff`, `dvc params diff` and both revisions' plot data.")
    from icdstudy.core.io import write_text_atomic  # noqa: E402 (the project's atomic write)

    write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
    print(f"pr_report: {out / 'report.md'} with {len(figures)} figures")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
