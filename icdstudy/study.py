"""Run or plan the study with a committed override file.

    python -m icdstudy.study full-study [--smoke] [--dry-run] [dvc exp run args]
        runs `dvc exp run -n full-study -S key=value ...` with every override in
        configs/full-study.yaml: the full study is one command and one DVC experiment. --smoke
        runs the same graph at the smallest sizes (configs/smoke.yaml) as experiment
        full-study-smoke, in minutes, before the GPU hours are spent.
    python -m icdstudy.study plan [NAME] [-S key=value ...] [--gpu-mem-gb G] [--json] [--measure]
        predicts, for every stage those params select, peak GPU memory, whether it fits, the
        fix if not, and the GPU hours; exits 1 if any stage does not fit. Needs no GPU and no hub.
    python -m icdstudy.study apply NAME
        writes configs/NAME.yaml into params.yaml (DVC's override code; comments kept), for runs
        with plain `dvc repro`, such as a study sharded over several hosts.
    python -m icdstudy.study shard [NAME] --hosts N
        prints each host's commands to split the study's GPU stages over N hosts through DVC's
        run cache, balanced by the plan's GPU hours, and the commands that gather the results.
"""
# dvc and the plan's measurement (torch) are imported where used: `study plan` and `--help` run without them.
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from fnmatch import fnmatch
from pathlib import Path

import yaml

from icdstudy import systems
from icdstudy.core.params import yaml_load
from icdstudy.core.schema import validate
from icdstudy.planning.plan import DEFAULT_MARGIN, DEFAULT_MFU, hardware, to_json
from icdstudy.planning.plan_text import render, render_markdown
from icdstudy.planning.study_plan import data_stats, plan_stages


SMOKE = Path("configs/smoke.yaml")


def hydra_value(value) -> str:
    """A value in Hydra's override grammar (what `dvc exp run -S` parses): strings quoted, mappings and lists nested."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return json.dumps(value)


def overrides(config: Path | dict) -> list[str]:
    """``-S`` arguments for every key of an override file (or of a dict of dotted keys). A mapping replaces
    the key's whole value (``~key`` then ``+key=...``): the full study's tables drop the demo's entries."""
    if isinstance(config, dict):
        values = config
    else:
        with open(config, encoding="utf-8") as fh:
            values = yaml_load(fh) or {}
    args = []
    for key, value in values.items():
        if isinstance(value, dict):
            args += ["-S", f"~{key}", "-S", f"+{key}={hydra_value(value)}"]
        else:
            args += ["-S", f"{key}={hydra_value(value)}"]
    return args


def _config(name: str) -> Path:
    config = Path("configs") / f"{name}.yaml"
    if not config.exists():
        raise SystemExit(f"study: error: {config} not found; available: "
                         f"{', '.join(p.stem for p in Path('configs').glob('*.yaml')) or 'none'}")
    return config


def _apply_plain_overrides(path: Path, overrides: list[str]) -> None:
    """``key.sub=value`` overrides with YAML values, for machines without DVC (the GPU check):
    the subset of Hydra's grammar that configs/*.yaml and ``-S`` use."""
    params = yaml_load(path.read_text())
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep and not key.startswith("~"):
            raise ValueError(f"{item!r} is not key=value")
        *parents, last = key.strip().lstrip("~+").split(".")
        node = params
        for part in parents:
            node = node.setdefault(part, {})
        if key.startswith("~"):
            node.pop(last, None)
        else:
            node[last] = yaml_load(value)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def resolved_params(name: str | None, sets: list[str], params_file: str = "params.yaml") -> dict:
    """params.yaml with configs/NAME.yaml and ``-S`` overrides applied by DVC's own code (where DVC
    is installed; plain dotted keys otherwise)."""
    try:
        from dvc.utils.hydra import apply_overrides
    except ImportError:
        apply_overrides = _apply_plain_overrides

    args = (overrides(_config(name)) if name else []) + [a for s in sets for a in ("-S", s)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        shutil.copy(params_file, path)
        if args:
            try:
                apply_overrides(path, [a for a in args if a != "-S"])
            except Exception as exc:
                raise SystemExit(f"study: error: override {sets or name}: {exc}") from None
        return yaml_load(path.read_text())


def plan_main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m icdstudy.study plan", description=(
        "Predict peak GPU memory, fit and GPU hours of every stage the params select "
        "(params.yaml, then configs/NAME.yaml, then -S overrides). Exits 1 if a stage does not fit."))
    p.add_argument("name", nargs="?", help="a file configs/<name>.yaml, e.g. full-study (default: params.yaml as is)")
    p.add_argument("-S", "--set-param", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a param with DVC's syntax, e.g. -S recipe.batch_size=8 (repeatable)")
    p.add_argument("--gpu-mem-gb", type=float, help="GPU memory to plan for (default: the detected GPU's, else 80)")
    p.add_argument("--gpu", help="GPU name for FLOP/s and bandwidth: H100, H200, A100, L40S, L4, A10 (default: detected, else H100)")
    p.add_argument("--mfu", type=float, default=DEFAULT_MFU, help=f"assumed model FLOPs utilization (default {DEFAULT_MFU})")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help=f"memory kept free (default {DEFAULT_MARGIN})")
    p.add_argument("--usd-per-hour", type=float, help="GPU price, for the study's cost and each predicting stage's "
                   "dollars per 1,000 encounters (default: deploy.usd_per_hour)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--markdown", action="store_true", help="the plan as a Markdown table (docs/gpu-host.md holds the "
                   "full study's, kept equal to this output by tests/test_plan.py)")
    p.add_argument("--measure", action="store_true", help="also run a few real steps per model and report the plan's error "
                   "(full size on CUDA; a scaled-down architecture on CPU)")
    p.add_argument("--weights", choices=["random", "real"], default="random",
                   help="--measure: random weights of the real architecture (no download) or models/base/<key>")
    p.add_argument("--steps", type=int, default=3, help="--measure: optimizer steps per model")
    p.add_argument("--only", action="append", default=[], metavar="STAGE",
                   help="--measure: only these stages (shell patterns, e.g. 'train@*'; repeatable; default: every "
                        "train@ and predict@ stage)")
    p.add_argument("--params", default="params.yaml")
    args = p.parse_args(argv)
    if not 0 < args.mfu <= 1 or not 0 <= args.margin < 1:
        p.error("--mfu must be in (0, 1] and --margin in [0, 1)")
    params = resolved_params(args.name, args.sets, args.params)

    try:
        validate(params, f"{args.params}{' + configs/' + args.name + '.yaml' if args.name else ''}{' + -S' if args.sets else ''}")
    except ValueError as exc:
        print(f"plan: error: {exc}", file=sys.stderr)
        return 2
    hw = hardware(args.gpu_mem_gb, args.gpu, args.mfu, args.margin)
    stats = data_stats(params)
    try:
        stages = plan_stages(params, stats, hw)
    except ValueError as exc:
        print(f"plan: error: {exc}", file=sys.stderr)
        return 2
    result = to_json(stages, hw, args.usd_per_hour or params["deploy"]["usd_per_hour"])
    result["data"] = stats.source
    if args.measure:
        from icdstudy.planning.measure import measure_plan  # slow (torch, datasets): only --measure runs models

        chosen = [s for s in stages if not args.only or any(fnmatch(s.stage, pat) for pat in args.only)]
        if args.only and not chosen:
            print(f"plan: error: --only {' '.join(args.only)} matches none of {', '.join(s.stage for s in stages)}",
                  file=sys.stderr)
            return 2
        result["measured"] = measure_plan(params, chosen, hw, args.weights, args.steps)
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.markdown:
        print(render_markdown(result))
    else:
        print(render(result))
        print(f"data: {stats.source}")
        for m in result.get("measured", []):
            print(f"measured {m['stage']} on {m['device']} ({m['architecture']}): {m['summary']}")
    return 0 if result["fits"] else 1


def apply_main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m icdstudy.study apply", description=(
        "Write configs/NAME.yaml's overrides and -S overrides into params.yaml (DVC's override code)."))
    p.add_argument("name", nargs="?", help="a file configs/<name>.yaml, e.g. full-study")
    p.add_argument("-S", "--set-param", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--params", default="params.yaml")
    args = p.parse_args(argv)
    from dvc.utils.hydra import apply_overrides

    try:
        given = [a for a in overrides(_config(args.name)) if a != "-S"] if args.name else []
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    apply_overrides(args.params, given + args.sets)
    print(f"study: {len(given) + len(args.sets)} overrides applied to {args.params}; commit it (on a branch) so "
          "every host runs the same params")
    return 0


def assign_hosts(stages: list, hosts: int, params: dict) -> list[dict]:
    """Each model's GPU stages on one host (they share its base weights), in the plan's order (a training stage
    before the stage that predicts with its adapter), models spread so that the planned GPU hours are as even as
    a greedy longest-first assignment makes them. A host that runs them also runs prepare and base@<model>."""
    by_model: dict[str, dict] = {}
    made = systems.stages(params)
    for st in stages:
        role, what = made.get(st.stage, (None, None))
        key = systems.run_entry(params, what)["model"] if role == "train" else what.model if role == "predict" else None
        if key:
            group = by_model.setdefault(key, {"model": key, "stages": [], "hours": 0.0})
            group["stages"].append(st.stage)
            group["hours"] += st.est_hours
    plan = [{"models": [], "stages": [], "hours": 0.0} for _ in range(hosts)]
    for group in sorted(by_model.values(), key=lambda g: (-g["hours"], g["model"])):
        host = min(plan, key=lambda h: h["hours"])
        host["models"].append(group["model"])
        host["stages"] += group["stages"]
        host["hours"] += group["hours"]
    return [h for h in plan if h["stages"]]


def shard_main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m icdstudy.study shard", description=(
        "Print each host's commands to split the study over several GPU hosts: every host runs its models' "
        "stages and pushes DVC's run cache; then any one host restores them all and writes the report."))
    p.add_argument("name", nargs="?", help="a file configs/<name>.yaml, e.g. full-study (default: params.yaml as is)")
    p.add_argument("--hosts", type=int, default=2, help="number of GPU hosts (default 2)")
    p.add_argument("-S", "--set-param", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--gpu-mem-gb", type=float, default=80.0, help="each host's GPU memory, for the hours (default 80)")
    args = p.parse_args(argv)
    if args.hosts < 1:
        p.error("--hosts must be at least 1")
    params = resolved_params(args.name, args.sets)
    stages = plan_stages(params, data_stats(params), hardware(args.gpu_mem_gb))
    hosts = assign_hosts(stages, args.hosts, params)
    branch = args.name or "study"
    sets = "".join(f" -S {shlex.quote(s)}" for s in args.sets)
    print(f"# The study over {len(hosts)} GPU host(s), through DVC's run cache (docs/team-workflow.md).")
    print("# 0. Once, anywhere: the study's params on a branch that every host checks out.")
    print(f"git switch -c {branch}")
    if args.name or args.sets:
        print(f"python -m icdstudy.study apply{' ' + args.name if args.name else ''}{sets}")
    print(f'git commit -am "{branch}: study params" && git push -u origin {branch}')
    for i, host in enumerate(hosts, 1):
        print(f"\n# host {i} of {len(hosts)}: {', '.join(host['models'])} (about {host['hours']:.2f} GPU hours)")
        print(f"git clone <your repository> icd10-study && cd icd10-study && git switch {branch} && make setup")
        print("tools/gpu_check.sh   # the GPU check first (docs/gpu-host.md)")
        print("dvc pull --run-cache")
        print(f"dvc repro --pull {' '.join(host['stages'])}")
        print("dvc push --run-cache")
    print("\n# When every host is done, on any one host: every stage above is restored from the run cache,")
    print("# only the data card, floors, score and report run; then the results are committed once.")
    print("git pull && dvc pull --run-cache && dvc repro --pull")
    print(f'git add -A && git commit -m "{branch}: results" && dvc push && git push')
    return 0


def _dotted(params: dict, key: str, default=None):
    """params[key] for a dotted key such as recipe.max_steps; ``default`` where it is absent."""
    node = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _committed_params() -> dict:
    """params.yaml as committed (HEAD), else as it is: what a real run resets a smoke run's keys to."""
    shown = subprocess.run(["git", "show", "HEAD:params.yaml"], capture_output=True, text=True)
    return yaml_load(shown.stdout if shown.returncode == 0 else Path("params.yaml").read_text())


def run_values(name: str, smoke: bool) -> dict:
    """The overrides of a run of configs/NAME.yaml. A smoke run adds configs/smoke.yaml; a real run sets
    those same keys to their committed values, so that a workspace a smoke run left behind (`dvc exp run`
    keeps the experiment's params.yaml) cannot shrink the real run."""
    values = yaml_load(_config(name).read_text()) or {}
    small = yaml_load(SMOKE.read_text()) or {}
    if smoke:
        return {**values, **small}
    committed, current = _committed_params(), yaml_load(Path("params.yaml").read_text())
    return {**{k: _dotted(committed, k, _dotted(current, k)) for k in small}, **values}  # a key newer than the commit: as it is


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "plan":
        return plan_main(argv[1:])
    if argv and argv[0] == "shard":
        return shard_main(argv[1:])
    if argv and argv[0] == "apply":
        return apply_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m icdstudy.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="a file configs/<name>.yaml, e.g. full-study; or `plan` (see `plan --help`)")
    parser.add_argument("--dry-run", action="store_true", help="print the dvc command instead of running it")
    parser.add_argument("--smoke", action="store_true", help=(
        "run the same graph, models and data source at the smallest sizes that exercise every stage "
        "(configs/smoke.yaml: a few dozen test rows, a few optimizer steps), as experiment NAME-smoke, "
        "its report marked as a smoke run; the downloads it makes are reused by the real run"))
    args, extra = parser.parse_known_args(argv)
    try:
        values = run_values(args.name, args.smoke)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    name = f"{args.name}-smoke" if args.smoke else args.name
    # `-S key=value` among the extra arguments replace the config's value for that key (DVC refuses a key twice)
    rest, sets = [], iter(extra)
    for arg in sets:
        value = next(sets, None) if arg in ("-S", "--set-param") else None
        if value and "=" in value:
            key, _, text = value.partition("=")
            values[key.strip()] = yaml_load(text)
        else:
            rest += [arg] + ([value] if value is not None else [])
    cmd = ["dvc", "exp", "run", "-n", name, *overrides(values), *rest]
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
