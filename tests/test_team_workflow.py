"""DVC's team workflow on this project, with real git and DVC: a bare git remote, a local folder as
DVC remote, and clones of the repository. A teammate's clone is up to date after `dvc pull`;
`dvc metrics diff` across commits works there; experiments move between clones; a failed queued
experiment leaves the workspace alone; a stage run on one host is restored on another from the
run cache, never rerun; the pull-request report renders from two commits; and a newcomer's clone
runs the full study's smoke run after the demo with a report of exactly the study's systems.

The pipeline is the project's own dvc.yaml on the demo data, with a tiny random model registered
in params so that every stage runs in seconds."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, copy_repo, dvc_env, requires_dvc

# One worker runs the team's tests in order on one fixture; the full study's smoke run goes to another worker.
pytestmark = [requires_dvc, pytest.mark.slow, pytest.mark.xdist_group("team")]

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def sh(cwd: Path, *args, check: bool = True) -> str:
    proc = subprocess.run(list(map(str, args)), cwd=cwd, capture_output=True, text=True, env={**dvc_env(), **GIT_ENV},
                          timeout=900)
    if check:
        assert proc.returncode == 0, f"{' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def dvc(cwd: Path, *args, check: bool = True) -> str:
    return sh(cwd, sys.executable, "-m", "dvc", *args, check=check)


def small_study(params_file: Path, model_dir: Path, key: str = "tiny") -> None:
    """The demo study with a tiny random model in every role (registered as ``key``): the same stages,
    seconds each; the shortlist systems are left out (the smoke run of the full study runs them)."""
    params = yaml.safe_load(params_file.read_text())
    params["models"][key] = {"path": str(model_dir), "dtype": "float32", "load_in_4bit": False}
    params.update(base_models=[key], zeroshot=[key], finetune=[key], shortlist=[], finetune_shortlist=[])
    params["datacard"]["tokenizer"] = key
    params["train"].update(num_epochs=1, eval_steps=10, save_steps=10, logging_steps=5, sanity_steps=0, lora_r=4,
                           lora_alpha=8)
    params["eval"].update(max_samples=6, batch_size=6, top_k=2, max_input_tokens=96, max_shot_tokens=48)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def team(tmp_path_factory, tiny_model_dir) -> dict:
    """Clone A ran the small study and pushed it (git to a bare repo, data to a DVC remote folder)."""
    root = tmp_path_factory.mktemp("team")
    origin, remote = root / "origin.git", root / "dvc-remote"
    sh(root, "git", "init", "-q", "--bare", "-b", "main", origin)
    a = copy_repo(root / "a")
    sh(a, "git", "branch", "-M", "main")
    sh(a, "git", "remote", "add", "origin", origin)
    small_study(a / "params.yaml", tiny_model_dir)
    dvc(a, "remote", "add", "-d", "shared", remote)
    out = dvc(a, "repro")
    sh(a, "git", "add", "-A")
    sh(a, "git", "commit", "-qm", "small study")
    dvc(a, "push")
    sh(a, "git", "push", "-q", "origin", "main")
    return {"root": root, "origin": origin, "remote": remote, "a": a, "first_repro": out}


def clone(team: dict, name: str) -> Path:
    path = team["root"] / name
    sh(team["root"], "git", "clone", "-q", team["origin"], path)
    return path


def test_a_clone_is_up_to_date_after_dvc_pull(team):
    assert {"prepare", "train@tiny", "evaluate@tiny", "report"} <= ran(team["first_repro"])
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
    params["baseline"]["C"] = 0.05
    (a / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(dvc(a, "repro")) == {"baseline", "score", "report"}
    sh(a, "git", "commit", "-qam", "weaker baseline")
    dvc(a, "push")
    sh(a, "git", "push", "-q", "origin", "main")
    b = clone(team, "b2")  # a fresh clone that has pulled nothing
    diff = json.loads(dvc(b, "metrics", "diff", "HEAD~1", "HEAD", "--json"))
    ece = diff["metrics/eval/tfidf-logreg.json"]["ece"]
    assert ece["old"] != ece["new"] and ece["diff"] == pytest.approx(ece["new"] - ece["old"])
    params_diff = json.loads(dvc(b, "params", "diff", "HEAD~1", "HEAD", "--json"))
    c = params_diff["params.yaml"]["baseline.C"]
    assert (c["old"], c["new"]) == (10.0, 0.05)


def test_experiments_move_between_clones(team):
    a = team["a"]
    dvc(a, "exp", "run", "-n", "lr-high", "-S", "train.learning_rate=0.01")
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
    assert lora["exact_match"] == a_metrics["exact_match"] and mine["data"]["params"]["params.yaml"]["data"]["train"]["learning_rate"] == 0.01
    dvc(b, "exp", "apply", "lr-high")
    dvc(b, "checkout")
    assert (b / "models/adapters/lora-tiny/adapter_model.safetensors").read_bytes() == a_adapter


def test_a_failed_queued_experiment_leaves_the_workspace_untouched(team):
    a = team["a"]
    before = {p: (a / p).read_bytes() for p in ("params.yaml", "dvc.lock", "metrics/train/lora-tiny.json")}
    dvc(a, "exp", "run", "--queue", "-n", "bad-lr", "-S", "train.learning_rate=-1")  # refused by the schema
    dvc(a, "queue", "start", "-j", "1")
    deadline = time.time() + 600
    while True:
        status = dvc(a, "queue", "status")
        if "Queued" not in status and "Running" not in status:
            break
        assert time.time() < deadline, status
        time.sleep(3)
    assert "Failed" in status and "bad-lr" in status
    assert "train.learning_rate" in dvc(a, "queue", "logs", "bad-lr", check=False)
    dvc(a, "queue", "stop")
    assert {p: (a / p).read_bytes() for p in before} == before
    assert sh(a, "git", "status", "--porcelain") == ""


def test_a_stage_run_on_one_host_is_restored_on_another(team):
    """Sharding: host A trains on a branch whose dvc.lock does not know the result and pushes its
    run cache; host C restores train@tiny and evaluate@tiny from it instead of rerunning them."""
    a = team["a"]
    sh(a, "git", "checkout", "-q", "-b", "shard")
    params = yaml.safe_load((a / "params.yaml").read_text())
    params["train"]["lora_r"] = 8
    (a / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(a, "git", "commit", "-qam", "study params for the shards")
    sh(a, "git", "push", "-q", "origin", "shard")
    host_a = ran(dvc(a, "repro", "train@tiny", "evaluate@tiny"))
    assert host_a == {"train@tiny", "evaluate@tiny"}
    dvc(a, "push", "--run-cache")

    c = clone(team, "c")
    sh(c, "git", "checkout", "-q", "shard")
    dvc(c, "pull", "--run-cache")
    out = dvc(c, "repro", "--pull")
    assert not (ran(out) & host_a), out  # what host A ran is restored, not rerun
    assert "Stage 'train@tiny' is cached - skipping run" in out and ran(out) == {"score", "report"}  # seconds, no model
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
        assert f"zeroshot@{key}" in stages and stages.count(f"zeroshot@{key}") == 1
    assert "train@llama32-3b" in stages and "evaluate@qwen25-3b" in stages


def test_the_pull_request_report_renders_from_two_commits(team, tmp_path):
    b = clone(team, "pr")
    out = tmp_path / "pr-report"
    sh(b, sys.executable, REPO / "tools" / "pr_report.py", "--base", "HEAD~1", "--out", out)
    md = (out / "report.md").read_text()
    assert "| metrics/val/tfidf-logreg.json | ece |" in md and "baseline.C" in md
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
            assert path in tracked or inside_output or folder_of_outputs, f"{st.addressing}: {path} is carried by neither"
            if folder_of_outputs and path not in tracked:  # a folder of other stages' outputs, e.g. metrics/eval
                stray = [f for f in tracked if f.startswith(path + "/") and not f.endswith(".gitignore")]
                assert not stray, f"{st.addressing}: {path} also holds git files {stray[:3]}"


# The smoke run at test size: a few rows, two optimizer steps, short inputs (the CPU has minutes, not hours). Each
# kind of system runs once, over the study's four models and three tokenizer families: 20 stage processes, not 31.
STUDY_MODELS = {"llama31-8b": "llama", "mistral-7b": "mistral", "llama32-3b": "llama", "qwen25-3b": "qwen2"}
SELECTED = ["zeroshot=[llama31-8b,mistral-7b]", "shortlist=[mistral-7b]", "finetune=[llama32-3b]",
            "finetune_shortlist=[qwen25-3b]"]
TINY_SMOKE = ["eval.max_samples=6", "eval.batch_size=6", "eval.fewshot_batch_size=6", "eval.max_input_tokens=96",
              "eval.max_shot_tokens=48", "train.batch_size=2", "train.grad_accum=1", "train.max_steps=2",
              "train.eval_steps=2", "train.save_steps=2", "train.max_val_samples=4", "train.lora_r=4",
              "train.lora_alpha=8", "train.lora_dropout=0.0", "train.learning_rate=0.001", "train.warmup_steps=0"]


@pytest.mark.xdist_group("full-study-smoke")
def test_the_full_study_after_the_demo_reports_exactly_its_own_systems(team, tmp_path, sample_x3_csv):
    """The path a new user takes, in one checkout: the demo-like study (pulled), then the full study's
    smoke run (`study full-study --smoke`) on MedSynth-shaped rows, with tiny random models of the four
    study architectures and their real tokenizers. The report holds exactly the full study's 18 systems,
    pairs no two splits and says it is a smoke run; a second `dvc repro` does nothing; the real run's
    params leave the smoke run's downloads and data in place."""
    from tests.family_models import build_family_model

    import pandas as pd

    d = clone(team, "newcomer")
    dvc(d, "pull")
    # MedSynth-shaped rows: the real sample's notes (each three times, made distinct) for its first 40 codes
    rows = pd.read_csv(sample_x3_csv)
    code = next(c for c in rows.columns if c.strip().lower() == "icd10")
    medsynth = tmp_path / "medsynth.csv"
    rows[rows[code].isin(rows[code].drop_duplicates()[:40])].to_csv(medsynth, index=False)
    assert (d / "metrics/eval/lora-tiny.json").exists() and (d / "predictions/zeroshot-tiny.jsonl").exists()
    folders = {f: build_family_model(f, tmp_path / "models" / f) for f in set(STUDY_MODELS.values())}
    paths = [f"models.{key}.path={folders[family]}" for key, family in STUDY_MODELS.items()]
    args = [a for s in [f"data.source={medsynth}", "data.input=note", *paths, *TINY_SMOKE, *SELECTED] for a in ("-S", s)]
    out = sh(d, sys.executable, "-m", "icdstudy.study", "full-study", "--smoke", *args)
    assert {"zeroshot@mistral-7b", "shortlist@mistral-7b", "train-shortlist@qwen25-3b", "evaluate@llama32-3b",
            "score", "report"} <= ran(out)
    assert "full-study-smoke" in dvc(d, "exp", "show", "--md", "--no-pager")

    report = (d / "reports" / "report.md").read_text()
    assert report.splitlines()[2].startswith("> **SMOKE RUN: these numbers mean nothing.**")
    expected = sorted(["zeroshot-llama31-8b", "fewshot-llama31-8b", "zeroshot-mistral-7b", "fewshot-mistral-7b",
                       "shortlist-mistral-7b", "lora-llama32-3b", "lora-shortlist-qwen25-3b", "tfidf-logreg", "knn-tfidf"])
    table = report.split("## All systems")[1].split("\n\n")[1]
    assert sorted(line.split(" | ")[0][2:] for line in table.splitlines()[2:]) == expected
    assert sorted(r["system"] for r in json.loads((d / "reports" / "systems.json").read_text())) == expected
    assert "-tiny" not in report  # the demo's systems are not the study's
    assert "not compared" not in report and "- Every system was scored on the same test rows" in report
    answer = [line for line in report.split("## Answer")[1].split("## All systems")[0].splitlines() if line.startswith("- ")]
    assert answer[0].startswith("- **At 95% precision, `lora-") and len(answer) <= 8
    paired = report.split("## Paired comparisons")[1].split("\n\n")[1].splitlines()[2:]
    assert len(paired) == 2 * 7  # 2 fine-tuned systems x the 7 others (their adds bases, zeroshot-llama32-3b and lora-qwen25-3b, are not selected)
    assert "Near copies:" in (d / "reports" / "data.md").read_text()
    assert ran(dvc(d, "repro")) == set()

    # The real run's params (the smoke keys set back to their committed values, the same local sources)
    # leave prepare, the data card and every base@ as they are: its downloads and data are the smoke run's.
    apply = ("import sys, yaml; from dvc.utils.hydra import apply_overrides; from icdstudy.study import overrides, "
             "run_values; v = run_values('full-study', smoke=False); "
             "v.update({k: yaml.safe_load(x) for k, _, x in (a.partition('=') for a in sys.argv[1:])}); "
             "apply_overrides('params.yaml', [a for a in overrides(v) if a != '-S'])")
    sh(d, sys.executable, "-c", apply, f"data.source={medsynth}", "data.input=note", *paths)
    assert yaml.safe_load((d / "params.yaml").read_text())["smoke"] is False
    changed = set(json.loads(dvc(d, "status", "--json").strip().splitlines()[-1]))
    assert {"zeroshot@llama31-8b", "train@qwen25-3b", "report"} <= changed  # the real sizes rerun these
    assert not changed & {"prepare", "datacard", *(f"base@{m}" for m in STUDY_MODELS)}, changed
