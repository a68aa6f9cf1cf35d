"""DVC's team workflow on this project, with real git and DVC: a bare git remote, a local folder as
DVC remote, and clones of the repository. A teammate's clone is up to date after `dvc pull`;
`dvc metrics diff` across commits works there; experiments move between clones; a failed queued
experiment leaves the workspace alone; a stage run on one host is restored on another from the
run cache, never rerun; the pull-request report renders from two commits (tests/team_project.py builds
the team's project; tests/test_full_study_smoke.py runs the full study's smoke run in a newcomer's clone)."""
import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import REPO, copy_repo, requires_dvc
from tests.team_project import clone, dvc, ran, sh

pytestmark = [requires_dvc, pytest.mark.slow]


def test_a_clone_is_up_to_date_after_dvc_pull(team):
    assert {"prepare", "train@lora-tiny", "predict@lora-tiny", "report"} <= ran(team["first_repro"])
    b = clone(team, "b")
    dvc(b, "pull")
    assert json.loads(dvc(b, "status", "--json")) == {}
    assert ran(dvc(b, "repro")) == set()  # nothing reruns, not even the report
    assert sh(b, "git", "status", "--porcelain") == ""  # dvc.lock untouched
    a_adapter = team["a"] / "models/adapters/lora-tiny/adapter_model.safetensors"
    assert (b / "models/adapters/lora-tiny/adapter_model.safetensors").read_bytes() == a_adapter.read_bytes()


def test_metrics_diff_between_two_commits_reads_the_remote(team):
    a = team["a"]
    params = yaml.safe_load((a / "params.yaml").read_text())
    params["systems"]["floors"]["tfidf-logreg"]["C"] = 0.05
    (a / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(dvc(a, "repro")) == {"floor@tfidf-logreg", "score", "report"}
    sh(a, "git", "commit", "-qam", "weaker baseline")
    dvc(a, "push")
    sh(a, "git", "push", "-q", "origin", "main")
    b = clone(team, "b2")  # a fresh clone that has pulled nothing
    diff = json.loads(dvc(b, "metrics", "diff", "HEAD~1", "HEAD", "--json"))
    ece = diff["metrics/eval/tfidf-logreg.json"]["ece"]
    assert ece["old"] != ece["new"] and ece["diff"] == pytest.approx(ece["new"] - ece["old"])
    params_diff = json.loads(dvc(b, "params", "diff", "HEAD~1", "HEAD", "--json"))
    c = params_diff["params.yaml"]["systems.floors.tfidf-logreg.C"]
    assert (c["old"], c["new"]) == (10.0, 0.05)


def test_experiments_move_between_clones(team):
    a = team["a"]
    dvc(a, "exp", "run", "-n", "lr-high", "-S", "recipe.learning_rate=0.01")
    a_adapter = (a / "models/adapters/lora-tiny/adapter_model.safetensors").read_bytes()
    a_metrics = json.loads((a / "metrics/val/lora-tiny.json").read_text())
    dvc(a, "exp", "push", "origin", "lr-high")
    sh(a, "git", "checkout", "--", ".")  # A back to its commit
    dvc(a, "checkout", "--force")

    b = clone(team, "b3")
    dvc(b, "exp", "pull", "origin", "lr-high")
    shown = json.loads(dvc(b, "exp", "show", "--json"))
    exps = [e for commit in shown for exp in (commit.get("experiments") or []) for e in exp.get("revs", [])]
    mine = next(e for e in exps if e.get("name") == "lr-high")
    lora = mine["data"]["metrics"]["metrics/val/lora-tiny.json"]["data"]  # what an experiment is judged by
    assert lora["exact_match"] == a_metrics["exact_match"] and mine["data"]["params"]["params.yaml"]["data"]["recipe"]["learning_rate"] == 0.01
    dvc(b, "exp", "apply", "lr-high")
    dvc(b, "checkout")
    assert (b / "models/adapters/lora-tiny/adapter_model.safetensors").read_bytes() == a_adapter


def test_a_failed_queued_experiment_leaves_the_workspace_untouched(team):
    a = team["a"]
    before = {p: (a / p).read_bytes() for p in ("params.yaml", "dvc.lock", "metrics/train/lora-tiny.json")}
    dvc(a, "exp", "run", "--queue", "-n", "bad-lr", "-S", "recipe.learning_rate=-1")  # refused by the schema
    dvc(a, "queue", "start", "-j", "1")
    deadline = time.time() + 600
    while True:
        status = dvc(a, "queue", "status")
        if "Queued" not in status and "Running" not in status:
            break
        assert time.time() < deadline, status
        time.sleep(3)
    assert "Failed" in status and "bad-lr" in status
    assert "recipe.learning_rate" in dvc(a, "queue", "logs", "bad-lr", check=False)
    dvc(a, "queue", "stop")
    assert {p: (a / p).read_bytes() for p in before} == before
    assert sh(a, "git", "status", "--porcelain") == ""


def test_a_stage_run_on_one_host_is_restored_on_another(team):
    """Sharding: host A trains on a branch whose dvc.lock does not know the result and pushes its
    run cache; host C restores train@lora-tiny and predict@lora-tiny from it instead of rerunning them."""
    a = team["a"]
    sh(a, "git", "checkout", "-q", "-b", "shard")
    params = yaml.safe_load((a / "params.yaml").read_text())
    params["recipe"]["lora_r"] = 8
    (a / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(a, "git", "commit", "-qam", "study params for the shards")
    sh(a, "git", "push", "-q", "origin", "shard")
    host_a = ran(dvc(a, "repro", "train@lora-tiny", "predict@lora-tiny"))
    assert host_a == {"train@lora-tiny", "predict@lora-tiny"}
    dvc(a, "push", "--run-cache")

    c = clone(team, "c")
    sh(c, "git", "checkout", "-q", "shard")
    dvc(c, "pull", "--run-cache")
    out = dvc(c, "repro", "--pull")
    assert not (ran(out) & host_a), out  # what host A ran is restored, not rerun
    assert "Stage 'train@lora-tiny' is cached - skipping run" in out and ran(out) == {"score", "report"}  # seconds, no model
    for path in ("metrics/train/lora-tiny.json", "predictions/lora-tiny.jsonl", "predictions/val/lora-tiny.jsonl",
                 "models/adapters/lora-tiny/adapter_model.safetensors"):
        assert (c / path).read_bytes() == (a / path).read_bytes(), path
    sh(a, "git", "checkout", "-q", "main")
    dvc(a, "checkout", "--force")


def test_study_shard_prints_each_hosts_commands():
    run = subprocess.run([sys.executable, "-m", "icdstudy.study", "shard", "full-study", "--hosts", "2"], cwd=REPO,
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr
    text = run.stdout
    hosts = [line for line in text.splitlines() if line.startswith("# host ")]
    assert len(hosts) == 2 and "dvc push --run-cache" in text and "dvc pull --run-cache" in text
    stages = [s for line in text.splitlines() if line.startswith("dvc repro --pull ") for s in line.split()[3:]]
    for key in ("llama31-8b", "mistral-7b", "llama32-3b", "qwen25-3b"):
        assert f"predict@zeroshot-{key}" in stages and stages.count(f"predict@zeroshot-{key}") == 1
    assert "train@lora-llama32-3b" in stages and "predict@lora-qwen25-3b" in stages


def test_the_pull_request_report_renders_from_two_commits(team, tmp_path):
    b = clone(team, "pr")
    out = tmp_path / "pr-report"
    sh(b, sys.executable, REPO / "tools" / "pr_report.py", "--base", "HEAD~1", "--out", out)
    md = (out / "report.md").read_text()
    assert "| metrics/val/tfidf-logreg.json | ece |" in md and "systems.floors.tfidf-logreg.C" in md
    assert "metrics/eval/" not in md  # a change is judged on validation: test numbers only with --test
    assert sorted(p.name for p in out.glob("*.png")) == ["curves_lora-tiny.png"]  # curves read from the DVC remote
    sh(b, sys.executable, REPO / "tools" / "pr_report.py", "--base", "HEAD~1", "--out", out, "--test")
    md = (out / "report.md").read_text()
    assert "| metrics/eval/tfidf-logreg.json | ece |" in md
    figures = sorted(p.name for p in out.glob("*.png"))
    assert figures == ["curves_lora-tiny.png", "exact_match_by_system.png"]
    assert all(f"]({name})" in md for name in figures)


@pytest.mark.parametrize("config", [None, "full-study"])
def test_every_dependency_is_carried_by_git_or_dvc(config, tmp_path):
    """For the demo's and the full study's stage graphs: each dependency is a file git tracks or an
    output of a stage (or inside one), and a folder a stage depends on holds nothing but outputs,
    so a clone plus `dvc pull` has every byte `dvc status` hashes."""
    repo = copy_repo(tmp_path / "repo")
    if config:
        sh(repo, sys.executable, "-m", "icdstudy.study", "apply", config)
    tracked = set(sh(repo, "git", "ls-files").splitlines())
    from dvc.repo import Repo

    stages = Repo(str(repo)).index.stages
    outputs = {str(o.def_path) for st in stages for o in st.outs}
    assert "metrics/data.json" in outputs and len(stages) >= 10
    for st in stages:
        for dep in st.deps:
            path = str(dep.def_path)
            inside_output = any(path == o or path.startswith(o + "/") for o in outputs)
            folder_of_outputs = [o for o in outputs if o.startswith(path + "/")]
            code_folder = (repo / path).is_dir() and any(f.startswith(path + "/") for f in tracked)
            assert path in tracked or inside_output or folder_of_outputs or code_folder, \
                f"{st.addressing}: {path} is carried by neither"
            if code_folder and not folder_of_outputs:  # a sub-package: every file DVC hashes is one git carries
                hashed = {str(f.relative_to(repo)) for f in (repo / path).rglob("*")
                          if f.is_file() and "__pycache__" not in f.parts}
                assert hashed <= tracked, f"{st.addressing}: {path} holds files git does not carry {sorted(hashed - tracked)[:3]}"
            if folder_of_outputs and path not in tracked:  # a folder of other stages' outputs, e.g. metrics/eval
                stray = [f for f in tracked if f.startswith(path + "/") and not f.endswith(".gitignore")]
                assert not stray, f"{st.addressing}: {path} also holds git files {stray[:3]}"
