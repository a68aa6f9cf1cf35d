"""One table of systems: dvc.yaml follows params' tables, every stage depends on the code it imports, an edit
marks exactly the stages it must rerun (dvc status on a project whose outputs are committed), no source file
switches on a prompt style's name, and a system added by one entry runs through DVC to the report."""
import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, copy_repo, dvc_env, requires_dvc
from tests.stage_imports import closure, dependencies

STYLES = {"plain", "examples", "shortlist"}


def _stages(root: Path) -> dict:
    """name -> (cmd, deps, outs) of every stage DVC resolves from root's dvc.yaml and params."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {s.addressing: (s.cmd, [d.def_path for d in s.deps], [o.def_path for o in s.outs])
                for s in repo.index.stages}


@requires_dvc
def test_every_stage_depends_on_the_code_it_imports():
    """Each stage lists its script and every project module the script reaches (a sub-package by its folder where
    it reaches all of it): no fewer (an edit would serve stale results), no more (an edit would rerun what it cannot
    change)."""
    wrong = {}
    for name, (cmd, deps, _) in _stages(REPO).items():
        script = next(p for p in cmd.split() if p.startswith("stages/"))
        listed = {d for d in deps if d.startswith(("stages/", "icdstudy"))}
        if listed != dependencies(script):
            wrong[name] = {"missing": sorted(dependencies(script) - listed), "extra": sorted(listed - dependencies(script))}
    assert wrong == {}
    assert "icdstudy/icd10.py" in closure("stages/predict.py")
    assert "icdstudy/neighbours" in dependencies("stages/predict.py")


def test_the_library_is_layered():
    """core holds what every stage needs and imports nothing else of the library; no stage and nothing in core
    reaches planning (the GPU kit's)."""
    core = {str(p.relative_to(REPO)) for p in (REPO / "icdstudy/core").glob("*.py")}
    for module in core:
        assert {p for p in closure(module) if not p.startswith("icdstudy/core/")} <= {"icdstudy/__init__.py"}, module
    for script in (REPO / "stages").glob("*.py"):
        assert not any(p.startswith("icdstudy/planning/") for p in closure(script.relative_to(REPO))), script
        assert core <= closure(script.relative_to(REPO)) | {"icdstudy/core/__init__.py"}, script  # every stage needs core


def test_no_source_file_switches_on_a_prompt_style_name():
    """A style is one entry of icdstudy/inference/prompt_styles.py: nothing else compares a value against its name."""
    found = []
    for path in [p for folder in ("icdstudy", "stages", "tools") for p in (REPO / folder).rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value in STYLES
                                                     for c in [node.left, *node.comparators]):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert found == []


def _fake_outputs(root: Path) -> None:
    """Every stage output as a small file or folder, so that `dvc commit` records a lock without running anything."""
    for _, _, outs in _stages(root).values():
        for out in outs:
            path = root / out
            if path.suffix in {".jsonl", ".json", ".md", ".tsv", ".png"}:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"{out}\n")
            else:
                path.mkdir(parents=True, exist_ok=True)
                (path / "stand-in.txt").write_text(f"{out}\n")


def _changed(root: Path) -> set[str]:
    run = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=root, capture_output=True, text=True,
                         env=dvc_env(), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return set(json.loads(run.stdout or "{}"))


@pytest.fixture(scope="module")
def committed_project(tmp_path_factory):
    root = copy_repo(tmp_path_factory.mktemp("deps") / "repo")
    (root / "dvc.lock").unlink(missing_ok=True)
    _fake_outputs(root)
    run = subprocess.run([sys.executable, "-m", "dvc", "commit", "-f", "-q"], cwd=root, capture_output=True, text=True,
                         env=dvc_env(), timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert _changed(root) == set()
    return root


def _edit_params(root: Path, edit) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    edit(params)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


LLM = {f"predict@{s}" for s in ("lora-shortlist-smollm2-135m", "zeroshot-smollm2-135m",
                                "fewshot-smollm2-135m", "shortlist-smollm2-135m")}
TRAIN = {"train@lora-shortlist-smollm2-135m"}
FLOORS = {"floor@tfidf-logreg", "floor@knn-tfidf"}


def _set_decoding(p):
    p["systems"]["llm"]["zeroshot-smollm2-135m"]["decoding"] = {"top_k": 1}


def _set_batch(p):
    p["decoding"]["batch_size"] = 4


def _set_rank(p):
    p["training"]["lora-shortlist-smollm2-135m"]["recipe"]["lora_r"] = 8


def _append(path: str, text: str):
    def edit(root: Path):
        target = root / path
        target.write_text(target.read_text() + text)
    return edit


EDITS = {  # what is edited -> the stages dvc status must list: no fewer (stale results), no more (wasted hours)
    "a prompt template": (_append("icdstudy/inference/prompts.py", "\n# edited\n"), TRAIN | LLM),
    "one system's entry": (lambda root: _edit_params(root, _set_decoding),
                           {"predict@zeroshot-smollm2-135m", "score", "report"}),
    "a recipe key": (lambda root: _edit_params(root, _set_rank), TRAIN | {"score", "report"}),
    "the retriever's code": (_append("icdstudy/neighbours/retrieval.py", "\n# edited\n"),
                             {"datacard"} | TRAIN | LLM | FLOORS | {"score", "report"}),
    "one training row": (_append("data/processed/train.jsonl", '{"id": "extra"}\n'),
                         {"prepare", "datacard"} | TRAIN | LLM | FLOORS | {"report"}),
    "a decoding default": (lambda root: _edit_params(root, _set_batch), TRAIN | LLM | {"report"}),  # the probe's too
    "the threshold code": (_append("icdstudy/analysis/thresholds.py", "\n# edited\n"), {"score", "report"}),
    "the GPU planner": (_append("icdstudy/planning/plan.py", "\n# edited\n"), set()),
    "one calibration row": (_append("data/processed/calibration.jsonl", '{"id": "extra"}\n'),
                            {"prepare", "datacard"} | LLM | FLOORS | {"score"}),  # retrains nothing
    "a floor's entry": (lambda root: _edit_params(root, lambda p: p["systems"]["floors"]["tfidf-logreg"].update(C=1.0)),
                        {"floor@tfidf-logreg", "score", "report"}),
    "a plot colour": (_append("icdstudy/reporting/names.py", "\nCOLORS[\"knn-tfidf\"] = \"#000000\"\n"), {"report"}),
    "a metric formula (ECE)": (_append("icdstudy/analysis/metrics.py", "\n# ECE edited\n"), {"score", "report"}),
    # base@ alone: the models it writes come out byte-identical, so nothing that loads them reruns (DVC compares hashes)
    "how a base model is put on disk": (_append("icdstudy/models/materialize.py", "\n# edited\n"), {"base@smollm2-135m"}),
    "Holm's correction": (_append("icdstudy/analysis/stats.py", "\n# edited\n"), {"report"}),
    "how the leading systems are chosen": (_append("icdstudy/analysis/selection.py", "\n# edited\n"), {"report"}),
    "how the CPU kernels are pinned": (_append("icdstudy/core/machine.py", "\n# edited\n"),
                                       {"prepare", "datacard", "base@smollm2-135m", "score", "report"} | TRAIN | LLM | FLOORS),
}


@requires_dvc
@pytest.mark.parametrize("what", list(EDITS))
def test_an_edit_marks_exactly_the_stages_it_must_rerun(committed_project, what):
    root = committed_project
    saved = {name: (root / name).read_bytes() for name in (
        "params.yaml", "icdstudy/inference/prompts.py", "icdstudy/neighbours/retrieval.py", "icdstudy/analysis/thresholds.py",
        "icdstudy/planning/plan.py", "data/processed/train.jsonl", "data/processed/calibration.jsonl",
        "icdstudy/reporting/names.py", "icdstudy/analysis/metrics.py", "icdstudy/models/materialize.py",
        "icdstudy/analysis/stats.py", "icdstudy/analysis/selection.py", "icdstudy/core/machine.py")}
    edit, expected = EDITS[what]
    try:
        edit(root)
        assert _changed(root) == expected
    finally:
        for name, content in saved.items():
            (root / name).write_bytes(content)
    assert _changed(root) == set()


@pytest.mark.slow
@requires_dvc
def test_a_variant_is_one_table_entry_and_runs_through_the_report(tmp_path, tiny_model_dir):
    """The README's two additions: a greedy variant of a zero-shot system (one systems.llm entry) and a fine-tuned
    variant with its own recipe (one training entry and the system naming it); dvc.yaml untouched."""
    repo = copy_repo(tmp_path / "repo")
    dvc_yaml = (repo / "dvc.yaml").read_bytes()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["models"]["tiny"] = {"path": str(tiny_model_dir), "dtype": "float32", "load_in_4bit": False}
    params.update(base_models=["tiny"])
    params["datacard"]["tokenizer"] = "tiny"
    params["decoding"].update(max_samples=6, batch_size=6, max_input_tokens=64, top_k=2)
    params["recipe"].update(max_steps=2, eval_steps=2, save_steps=2, logging_steps=1, warmup_steps=0, sanity_steps=0,
                           max_val_samples=4, eval_batch_size=4)
    params["training"] = {"lora-r4-tiny": {"model": "tiny", "prompt": "plain", "recipe": {"lora_r": 4, "lora_alpha": 8}}}
    params["systems"]["llm"] = {
        "zeroshot-tiny": {"model": "tiny", "weights": "models/base/tiny", "prompt": "plain"},
        "zeroshot-greedy-tiny": {"model": "tiny", "weights": "models/base/tiny", "prompt": "plain",
                                 "decoding": {"top_k": 1, "num_beams": 1}},
        "lora-r4-tiny": {"model": "tiny", "weights": "models/adapters/lora-r4-tiny", "prompt": "plain",
                         "run": "lora-r4-tiny", "adds": {"to": "zeroshot-tiny", "what": "Fine-tuning tiny at rank 4"}},
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run = subprocess.run([sys.executable, "-m", "dvc", "repro", "report"], cwd=repo, capture_output=True, text=True,
                         env=dvc_env(), timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Running stage 'predict@zeroshot-greedy-tiny'" in run.stdout and "Running stage 'train@lora-r4-tiny'" in run.stdout
    assert (repo / "dvc.yaml").read_bytes() == dvc_yaml
    report = (repo / "reports/report.md").read_text()
    assert "| zeroshot-greedy-tiny |" in report and "| lora-r4-tiny |" in report and "Fine-tuning tiny at rank 4" in report
    greedy = json.loads((repo / "predictions/runs/zeroshot-greedy-tiny.json").read_text())
    assert greedy["top_k"] == 1
    assert json.loads((repo / "models/adapters/lora-r4-tiny/adapter_config.json").read_text())["r"] == 4
    assert json.loads((repo / "metrics/val/zeroshot-greedy-tiny.json").read_text())["split"] == "val"
    shutil.rmtree(repo / ".dvc" / "cache", ignore_errors=True)


def test_the_schema_allows_exactly_the_prompt_styles():
    from typing import get_args

    from icdstudy.inference.prompt_styles import STYLES
    from icdstudy.core.schema import PromptStyle

    assert set(get_args(PromptStyle)) == set(STYLES)


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in [p for folder in ("icdstudy", "stages") for p in (REPO / folder).rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert long == []
