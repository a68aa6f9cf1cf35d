"""Resuming is exact: stages killed for real (SIGKILL) and rerun end with what an uninterrupted run
writes. Training (its checkpoint chosen by validation exact match) gives the same adapter bytes, metrics
and curves; a multi-seed stage never retrains a finished seed; prediction, plain zero-shot and with
listed candidates, gives the same predictions."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from icdstudy.core.io import read_json
from tests.conftest import REPO
from tests.stage_project import project, run_stage, stage

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


def outputs(path: Path, run: str = "lora-tiny") -> dict:
    metrics = read_json(path / "metrics" / "train" / f"{run}.json")
    metrics.pop("by_seed", None)  # each seed's own figures, wall time included
    adapter = path / "models" / "adapters" / run
    return {"adapter": {f.name: f.read_bytes() for f in sorted(adapter.iterdir()) if f.is_file()},  # config included
            "metrics": {k: v for k, v in metrics.items() if k not in TIMING},
            "curves": sorted((p.relative_to(path / "dvclive"), p.read_text()) for p in (path / "dvclive").rglob("*.tsv"))}


# plain prompts (stage train@lora-tiny) and shortlist prompts (stage train@lora-shortlist-tiny)
RECIPES = {"plain": "lora-tiny", "shortlist": "lora-shortlist-tiny"}


def train_args(run: str) -> list:
    return [REPO / "stages" / "train.py", run]


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    """Uninterrupted training runs, made once per recipe: the references the resumed runs must match."""
    made = {}

    def reference(recipe: str = "plain") -> dict:
        if recipe not in made:
            run = RECIPES[recipe]
            one = project(tmp_path_factory.mktemp("reference") / recipe, tiny_model_dir)
            run_stage(one, "train", run)
            made[recipe] = outputs(one, run)
        return made[recipe]

    return reference


# The shortlist recipe runs the same training code as the plain one, on longer prompts: its kill and resume
# covers both (the plain recipe's resume is also exercised by the multi-seed test below).
@pytest.mark.slow  # two training runs and a kill; `make test` runs it, `make test-fast` does not
@pytest.mark.parametrize("recipe", ["shortlist"])
def test_a_killed_training_stage_resumes_to_the_same_adapter_bytes(tiny_model_dir, tmp_path, uninterrupted, recipe):
    name = RECIPES[recipe]
    run = project(tmp_path / "run", tiny_model_dir)
    work = run / ".resume" / "train" / name
    # 24 rows at batch 4: 6 steps per epoch, 12 in all; killed after checkpoint 8, inside the second epoch
    kill_when(run, train_args(name), checkpoint_after(work, 8), "checkpoint 8")
    assert not (run / "models" / "adapters" / name).exists() and not (run / "metrics").exists()
    resumed = stage(run, *train_args(name))
    assert "resuming from" in resumed.stdout
    got = outputs(run, name)
    assert 8 <= read_json(run / f"metrics/train/{name}.json")["resumed_from_step"] < 12
    assert got["metrics"] == uninterrupted(recipe)["metrics"]
    assert got["adapter"] == uninterrupted(recipe)["adapter"]  # every file, byte for byte
    assert got["curves"] == uninterrupted(recipe)["curves"]
    assert not (run / ".resume" / "train").exists() or not any((run / ".resume" / "train").iterdir())
    assert got["metrics"]["select_by"] == "exact_match" and got["metrics"]["best_step"] in (2, 4, 6, 8, 10, 12)
    assert any(c[0].as_posix().endswith("eval/exact_match.tsv") for c in got["curves"])
    if recipe == "shortlist":
        assert got["metrics"]["candidates"] == 5 and got["metrics"]["candidate_recall_train"] > 0.5


@pytest.mark.slow
def test_a_multi_seed_stage_killed_in_its_second_seed_never_retrains_the_first(tiny_model_dir, tmp_path, uninterrupted):
    run = project(tmp_path / "run", tiny_model_dir, seeds=[0, 7])
    done = run / ".resume" / "train-done" / "lora-tiny.json"
    second = run / ".resume" / "train" / "lora-tiny-seed7"
    kill_when(run, train_args("lora-tiny"), lambda: done.exists() and checkpoint_after(second, 2)(),
              "the first seed to finish and the second to checkpoint")
    resumed = stage(run, *train_args("lora-tiny"))
    assert "already trained with these settings; kept" in resumed.stdout  # seed 0 is not retrained
    assert "resuming from" in resumed.stdout  # seed 7 continues from its checkpoint
    got = outputs(run)
    assert got["adapter"] == uninterrupted()["adapter"]  # seed 0 alone or first of two: the same run
    assert {k: v for k, v in got["metrics"].items() if k != "seeds"} == \
        {k: v for k, v in uninterrupted()["metrics"].items() if k != "seeds"}
    assert read_json(run / "metrics/train/lora-tiny.json")["by_seed"]["7"]["steps"] == 12
    assert (run / "models/adapters/lora-tiny/seeds/seed-7/adapter_model.safetensors").exists()
    assert not (run / ".resume" / "train-done" / "lora-tiny").exists()


# One prediction code path serves every system: plain zero-shot prompts, and the shortlist prompts that carry the most.
@pytest.mark.parametrize("kind", ["zeroshot", "shortlist"])
def test_a_killed_prediction_stage_resumes_to_the_same_predictions(tiny_model_dir, tmp_path, kind):
    system = f"{kind}-tiny"

    def predictions(path):
        out = {}
        for split, name in (("val", f"predictions/val/{system}.jsonl"), ("test", f"predictions/{system}.jsonl")):
            rows = [json.loads(line) for line in (path / name).read_text().splitlines()]
            out[split] = [{k: v for k, v in r.items() if k != "latency_s"} for r in rows]  # the only timing field
        return out

    full = project(tmp_path / "full", tiny_model_dir)
    run_stage(full, "predict", system)
    run = project(tmp_path / "run", tiny_model_dir)
    resume = run / ".resume" / f"{system}-test.jsonl"  # the validation split is done, the test split half done
    kill_when(run, [REPO / "stages" / "predict.py", system],
              lambda: resume.exists() and len(resume.read_text().splitlines()) >= 1 + 6, "three test batches")
    assert not (run / "predictions").exists() and (run / ".resume" / f"{system}-val.jsonl").exists()
    again = run_stage(run, "predict", system)
    assert again.count("resuming:") == 3  # every split: every finished batch is kept
    assert predictions(run) == predictions(full)
    if kind == "shortlist":
        assert len(predictions(run)["test"][0]["shortlist"]) == 5
    assert not any((run / ".resume").glob(f"{system}-*.jsonl"))  # nothing left to resume
