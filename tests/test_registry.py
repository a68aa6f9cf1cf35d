"""One place to add a system: the registry of kinds (icdstudy/systems.py) and dvc.yaml agree block by block, no
other source file spells a kind, every stage depends on the modules it runs, and a throwaway kind added to a
temporary project (one entry, one dvc.yaml block) runs through DVC to the report and its plots."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from icdstudy import systems
from icdstudy.params import yaml_load
from tests.conftest import REPO, copy_repo, dvc_env, requires_dvc

M = "${item.model}"


def _params(block: dict) -> set[str]:
    out = set()
    for entry in block.get("params", []):
        if isinstance(entry, dict):
            for keys in entry.values():
                out |= set(keys)
        else:
            out.add(entry)
    return out


def _outs(block: dict, key: str = "outs") -> set[str]:
    return {next(iter(o)) if isinstance(o, dict) else o for o in block.get(key, [])}


def check_blocks(stages: dict, kinds) -> list[str]:
    """What in a dvc.yaml's stages disagrees with the registry's kinds (empty when they agree)."""
    problems = []
    for k in kinds:
        block = stages.get(k.stage)
        if block is None:
            problems.append(f"{k.name}: no stage {k.stage!r} in dvc.yaml")
            continue
        s = systems.system(k, M)
        want_params = set(systems.stage_params(k)) | ({f"models.{M}"} if not k.floor else set())
        if _params(block) != want_params:
            problems.append(f"{k.stage}: params {sorted(_params(block) ^ want_params)} differ from the registry's")
        want_outs = {str(s.predictions(split)) for split in systems.SPLITS} | {str(s.run_record)}
        if k.fine_tuned:
            want_outs.add(f"predictions/seeds/{s.id}")
        if _outs(block) != want_outs:
            problems.append(f"{k.stage}: outs {sorted(_outs(block) ^ want_outs)} differ from the registry's paths")
        if k.floor:
            continue
        if block.get("matrix") != {"model": "${" + k.selects + "}"}:
            problems.append(f"{k.stage}: matrix {block.get('matrix')} is not over the list {k.selects}")
        if block["cmd"] != f"python stages/evaluate.py {k.name} {M}":
            problems.append(f"{k.stage}: cmd {block['cmd']!r}")
        if any("systems.py" in d for d in block["deps"]):
            problems.append(f"{k.stage}: depends on systems.py (adding a kind would rerun it)")
        if not k.fine_tuned:
            continue
        train = stages.get(k.train_stage)
        if train is None:
            problems.append(f"{k.name}: no training stage {k.train_stage!r}")
            continue
        if train["cmd"] != f"python stages/train.py {k.name} {M}":
            problems.append(f"{k.train_stage}: cmd {train['cmd']!r}")
        want = set(systems.training_params(k)) | {f"models.{M}"}
        if _params(train) != want:
            problems.append(f"{k.train_stage}: params {sorted(_params(train) ^ want)} differ from the registry's")
        if _outs(train) != {str(s.adapter), str(s.seed_adapters)} or _outs(train, "metrics") != {f"metrics/train/{s.run}.json"}:
            problems.append(f"{k.train_stage}: outs {_outs(train)} are not the run named after its system")
        if "data/processed/test.jsonl" in train["deps"] or f"{s.adapter}" not in block["deps"]:
            problems.append(f"{k.train_stage}: reads the test split, or {k.stage} does not read its adapter")
        curves = _outs(train, "plots")
        if f"dvclive/{s.run}/plots/metrics/eval/exact_match.tsv" not in curves:
            problems.append(f"{k.train_stage}: the validation exact-match curve is not declared")
    return problems


def test_dvc_yaml_has_one_block_per_kind_that_matches_its_entry():
    stages = yaml_load((REPO / "dvc.yaml").read_text())["stages"]
    assert check_blocks(stages, systems.KINDS) == []
    # and the check finds what it should: a block that lost a param, a cmd that names another kind
    broken = json.loads(json.dumps(stages))
    broken["fewshot"]["params"] = broken["fewshot"]["params"][:-2] + [f"models.{M}"]
    broken["shortlist"]["cmd"] = f"python stages/evaluate.py zeroshot {M}"
    found = check_blocks(broken, systems.KINDS)
    assert any("fewshot: params" in p for p in found) and any("shortlist: cmd" in p for p in found)


def test_the_shared_lists_are_written_once():
    text = (REPO / "dvc.yaml").read_text()
    assert text.count("- eval.repetition_penalty") == 2  # the &scoring and &recipe anchors, nowhere else
    assert text.count("*scoring") == 4 and text.count("*predicting") == 2 and text.count("*recipe") == 1


KIND_NAMES = {k.name for k in systems.KINDS}


def kind_literals(path: Path) -> set[str]:
    """The kind names a source file spells as string literals."""
    return {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and n.value in KIND_NAMES}


def test_kind_names_are_spelled_in_at_most_two_source_files():
    sources = [p for folder in ("icdstudy", "stages", "tools", "benchmarks") for p in (REPO / folder).rglob("*.py")]
    spelled = {p.relative_to(REPO).as_posix(): sorted(kind_literals(p)) for p in sources if kind_literals(p)}
    assert len(spelled) <= 2 and "icdstudy/systems.py" in spelled, spelled
    assert set(spelled) == {"icdstudy/systems.py"}, spelled  # today: the registry alone


EXEMPT = {"io", "params", "schema"}  # writing files and reading params: what they read is tracked as params and data


def imported_modules(path: Path) -> set[str]:
    """The icdstudy modules a file imports, at any depth of the code, and what those import in turn."""
    def direct(p: Path) -> set[str]:
        found = set()
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.ImportFrom):
                if n.module and n.module.startswith("icdstudy"):
                    found |= ({a.name for a in n.names} if n.module == "icdstudy" else {n.module.split(".")[1]})
                elif n.level == 1:
                    found |= {n.module.split(".")[0]} if n.module else {a.name for a in n.names}
        return {m for m in found if (REPO / "icdstudy" / f"{m}.py").exists()}

    seen, todo = set(), list(direct(path))
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            if m not in EXEMPT:  # what reading params imports (the schema asks the registry) is not the stage's code
                todo += direct(REPO / "icdstudy" / f"{m}.py")
    return seen


def test_every_stage_depends_on_the_code_it_runs():
    """A change to a module a stage runs reruns the stage (icd10.py included: a table fix reaches every stage that
    uses codes). The registry is no dependency of the stages that predict or train (by design, see dvc.yaml)."""
    stages = yaml_load((REPO / "dvc.yaml").read_text())["stages"]
    missing = {}
    for name, block in stages.items():
        script = next(p for p in block["cmd"].split() if p.startswith("stages/"))
        modules = imported_modules(REPO / script) - EXEMPT
        if systems.from_stage(f"{name}@x") or name in {k.stage for k in systems.KINDS if k.floor}:
            modules.discard("systems")
        deps = {d for d in block["deps"]}
        lacking = sorted(m for m in modules if f"icdstudy/{m}.py" not in deps)
        if lacking or script not in deps:
            missing[name] = lacking + ([script] if script not in deps else [])
    assert missing == {}
    assert "icd10" in imported_modules(REPO / "stages/evaluate.py") and "icd10" in imported_modules(REPO / "stages/score.py")


THROWAWAY = '''    Kind("greedy", "greedy", "greedy {model}", "#17becf", selects="greedy", prompt="plain"),
'''
BLOCK = '''
  greedy:  # a throwaway kind: the base model, one greedy answer
    matrix:
      model: ${greedy}
    cmd: python stages/evaluate.py greedy ${item.model}
    deps: *predicting
    params:
      - params.yaml: *scoring
      - models.${item.model}
    outs:
      - predictions/val/greedy-${item.model}.jsonl
      - predictions/greedy-${item.model}.jsonl
      - predictions/runs/greedy-${item.model}.json
'''


@pytest.mark.slow
@requires_dvc
def test_a_new_kind_is_one_registry_entry_and_one_dvc_yaml_block(tmp_path, tiny_model_dir):
    repo = copy_repo(tmp_path / "repo")
    registry = repo / "icdstudy/systems.py"
    text = registry.read_text()
    anchor = '    Kind("tfidf-logreg",'
    registry.write_text(text.replace(anchor, THROWAWAY + anchor, 1))
    dvc_yaml = repo / "dvc.yaml"
    text = dvc_yaml.read_text()
    dvc_yaml.write_text(text.replace("\n  train:  #", BLOCK + "\n  train:  #", 1))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["models"]["tiny"] = {"path": str(tiny_model_dir), "dtype": "float32", "load_in_4bit": False}
    params.update(base_models=["tiny"], zeroshot=[], finetune=[], shortlist=[], finetune_shortlist=[], greedy=["tiny"])
    params["datacard"]["tokenizer"] = "tiny"
    params["eval"].update(max_samples=6, batch_size=6, max_input_tokens=64)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = {**dvc_env(), "PYTHONPATH": str(repo)}  # the stages import this copy's registry
    run = subprocess.run([sys.executable, "-m", "dvc", "repro", "report"], cwd=repo, capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Running stage 'greedy@tiny'" in run.stdout
    report = (repo / "reports/report.md").read_text()
    assert "| greedy-tiny |" in report and "| tfidf-logreg |" in report
    assert json.loads((repo / "metrics/val/greedy-tiny.json").read_text())["split"] == "val"
    assert {p.name for p in (repo / "plots").glob("*.png")} >= {"accuracy_by_system.png", "risk_coverage.png"}
    check = subprocess.run([sys.executable, "-c", "import json, sys; from tests.test_registry import check_blocks; "
                            "from icdstudy import systems; from icdstudy.params import yaml_load; "
                            "print(json.dumps(check_blocks(yaml_load(open('dvc.yaml').read())['stages'], systems.KINDS)))"],
                           cwd=repo, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo)})
    assert check.returncode == 0 and json.loads(check.stdout) == [], check.stdout + check.stderr
