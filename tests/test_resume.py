"""Resuming is exact: stages killed for real (SIGKILL) and rerun end with what an uninterrupted run
writes. Training gives the same adapter bytes, metrics and curves; a multi-seed stage never retrains
a finished seed; evaluation gives the same predictions."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from icdstudy.io import read_json
from tests.conftest import REPO
from tests.stage_project import project, stage

TIMING = {"wall_s", "train_tokens_per_s", "peak_mem_mb", "resumed_from_step", "load_s", "samples_per_s",
          "latency_p50_s", "latency_p95_s", "generate_s"}
def kill_when(cwd: Path, args: list, ready, what: str) -> None:
    """Start a stage, SIGKILL it as soon as ``ready()`` holds (a real interruption: no cleanup runs)."""
    proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not ready():
        assert proc.poll() is None, f"the stage ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def checkpoint_after(work: Path, step: int):
    return lambda: any((c / "trainer_state.json").exists() and int(c.name.split("-")[1]) >= step
                       for c in work.glob("checkpoint-*"))


def outputs(path: Path, run: str = "tiny") -> dict:
    metrics = read_json(path / "metrics" / "train" / f"{run}.json")
    metrics.pop("by_seed", None)  # each seed's own figures, wall time included
    adapter = path / "models" / "adapters" / run
    return {"adapter": {f.name: f.read_bytes() for f in sorted(adapter.iterdir())},  # every file, config included
            "metrics": {k: v for k, v in metrics.items() if k not in TIMING},
            "curves": sorted((p.relative_to(path / "dvclive"), p.read_text()) for p in (path / "dvclive").rglob("*.tsv"))}


# plain prompts (stage train@tiny) and shortlist prompts (stage train-shortlist@tiny, run shortlist-tiny)
RECIPES = {"plain": ([], "tiny"), "shortlist": (["--shortlist"], "shortlist-tiny")}


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    """Uninterrupted training runs, made once per recipe: the references the resumed runs must match."""
    made = {}

    def reference(recipe: str = "plain") -> dict:
        if recipe not in made:
            flags, run = RECIPES[recipe]
            one = project(tmp_path_factory.mktemp("reference") / recipe, tiny_model_dir)
            stage(one, REPO / "stages" / "train.py", "tiny", *flags)
            made[recipe] = outputs(one, run)
        return made[recipe]

    return reference


# The shortlist recipe runs the same training code as the plain one, on longer prompts: its kill and resume
# covers both (the plain recipe's resume is also exercised by the multi-seed test below).
@pytest.mark.parametrize("recipe", ["shortlist"])
def test_a_killed_training_stage_resumes_to_the_same_adapter_bytes(tiny_model_dir, tmp_path, uninterrupted, recipe):
    flags, name = RECIPES[recipe]
    run = project(tmp_path / "run", tiny_model_dir)
    work = run / ".resume" / "train" / name
    # 24 rows at batch 4: 6 steps per epoch, 12 in all; killed after checkpoint 8, inside the second epoch
    kill_when(run, [REPO / "stages" / "train.py", "tiny", *flags], checkpoint_after(work, 8), "checkpoint 8")
    assert not (run / "models" / "adapters" / name).exists() and not (run / "metrics").exists()
    resumed = stage(run, REPO / "stages" / "train.py", "tiny", *flags)
    assert "resuming from" in resumed.stdout
    got = outputs(run, name)
    assert 8 <= read_json(run / f"metrics/train/{name}.json")["resumed_from_step"] < 12
    assert got["metrics"] == uninterrupted(recipe)["metrics"]
    assert got["adapter"] == uninterrupted(recipe)["adapter"]  # every file, byte for byte
    assert got["curves"] == uninterrupted(recipe)["curves"]
    assert not (run / ".resume" / "train").exists() or not any((run / ".resume" / "train").iterdir())
    if recipe == "shortlist":
        assert got["metrics"]["candidates"] == 5 and got["metrics"]["candidate_recall_train"] > 0.5


def test_a_multi_seed_stage_killed_in_its_second_seed_never_retrains_the_first(tiny_model_dir, tmp_path, uninterrupted):
    run = project(tmp_path / "run", tiny_model_dir, seeds=[0, 7])
    done = run / ".resume" / "train-done" / "tiny.json"
    second = run / ".resume" / "train" / "tiny-seed7"
    kill_when(run, [REPO / "stages" / "train.py", "tiny"], lambda: done.exists() and checkpoint_after(second, 2)(),
              "the first seed to finish and the second to checkpoint")
    resumed = stage(run, REPO / "stages" / "train.py", "tiny")
    assert "already trained with these settings; kept" in resumed.stdout  # seed 0 is not retrained
    assert "resuming from" in resumed.stdout  # seed 7 continues from its checkpoint
    got = outputs(run)
    assert got["adapter"] == uninterrupted()["adapter"]  # seed 0 alone or first of two: the same run
    assert {k: v for k, v in got["metrics"].items() if k != "seeds"} == \
        {k: v for k, v in uninterrupted()["metrics"].items() if k != "seeds"}
    assert read_json(run / "metrics/train/tiny.json")["by_seed"]["7"]["steps"] == 12
    assert (run / "models/seeds/tiny/seed-7/adapter_model.safetensors").exists()
    assert not (run / ".resume" / "train-done" / "tiny").exists()


# One evaluation code path serves every system; the shortlist system's prompts carry the most (the list).
@pytest.mark.parametrize("system,flags", [("shortlist-tiny", ["--shortlist"])])
def test_a_killed_evaluation_resumes_to_the_same_predictions(tiny_model_dir, tmp_path, system, flags):
    def predictions(path):
        rows = [json.loads(line) for line in (path / f"predictions/{system}.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "latency_s"} for r in rows]  # the only timing field

    full = project(tmp_path / "full", tiny_model_dir)
    stage(full, REPO / "stages" / "evaluate.py", "tiny", *flags)
    run = project(tmp_path / "run", tiny_model_dir)
    resume = run / ".resume" / f"{system}.jsonl"
    kill_when(run, [REPO / "stages" / "evaluate.py", "tiny", *flags],
              lambda: resume.exists() and len(resume.read_text().splitlines()) >= 1 + 6, "three batches")
    assert not (run / "predictions").exists()
    again = stage(run, REPO / "stages" / "evaluate.py", "tiny", *flags)
    assert "resuming:" in again.stdout
    assert predictions(run) == predictions(full)
    quality = ("exact_match", "exact_match_ci95", "category_match", "top3_match", "ece", "macro_f1", "n",
               "split_fingerprint")
    a, b = read_json(run / f"metrics/eval/{system}.json"), read_json(full / f"metrics/eval/{system}.json")
    assert {k: a[k] for k in quality} == {k: b[k] for k in quality}
    if flags:
        assert a["candidate_recall"] > 0.5 and len(predictions(run)[0]["shortlist"]) == 5
