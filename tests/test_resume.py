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


def outputs(path: Path, model: str = "tiny") -> dict:
    metrics = read_json(path / "metrics" / "train" / f"{model}.json")
    metrics.pop("by_seed", None)  # each seed's own figures, wall time included
    adapter = path / "models" / "adapters" / model
    return {"adapter": {f.name: f.read_bytes() for f in sorted(adapter.iterdir())},  # every file, config included
            "metrics": {k: v for k, v in metrics.items() if k not in TIMING},
            "curves": sorted((p.relative_to(path / "dvclive"), p.read_text()) for p in (path / "dvclive").rglob("*.tsv"))}


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory) -> dict:
    """An uninterrupted training run: the reference the resumed runs must match."""
    one = project(tmp_path_factory.mktemp("reference") / "one", tiny_model_dir)
    stage(one, REPO / "stages" / "train.py", "tiny")
    return outputs(one)


def test_a_killed_training_stage_resumes_to_the_same_adapter_bytes(tiny_model_dir, tmp_path, uninterrupted):
    run = project(tmp_path / "run", tiny_model_dir)
    work = run / ".resume" / "train" / "tiny"
    # 24 rows at batch 4: 6 steps per epoch, 12 in all; killed after checkpoint 8, inside the second epoch
    kill_when(run, [REPO / "stages" / "train.py", "tiny"], checkpoint_after(work, 8), "checkpoint 8")
    assert not (run / "models" / "adapters" / "tiny").exists() and not (run / "metrics").exists()
    resumed = stage(run, REPO / "stages" / "train.py", "tiny")
    assert "resuming from" in resumed.stdout
    got = outputs(run)
    assert 8 <= read_json(run / "metrics/train/tiny.json")["resumed_from_step"] < 12
    assert got["metrics"] == uninterrupted["metrics"]
    assert got["adapter"] == uninterrupted["adapter"]  # every file, byte for byte
    assert got["curves"] == uninterrupted["curves"]
    assert not (run / ".resume" / "train").exists() or not any((run / ".resume" / "train").iterdir())


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
    assert got["adapter"] == uninterrupted["adapter"]  # seed 0 alone or first of two: the same run
    assert {k: v for k, v in got["metrics"].items() if k != "seeds"} == \
        {k: v for k, v in uninterrupted["metrics"].items() if k != "seeds"}
    assert read_json(run / "metrics/train/tiny.json")["by_seed"]["7"]["steps"] == 12
    assert (run / "models/seeds/tiny/seed-7/adapter_model.safetensors").exists()
    assert not (run / ".resume" / "train-done" / "tiny").exists()


def test_a_killed_evaluation_resumes_to_the_same_predictions(tiny_model_dir, tmp_path):
    def predictions(path):
        rows = [json.loads(line) for line in (path / "predictions/zeroshot-tiny.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "latency_s"} for r in rows]  # the only timing field

    full = project(tmp_path / "full", tiny_model_dir)
    stage(full, REPO / "stages" / "evaluate.py", "tiny")
    run = project(tmp_path / "run", tiny_model_dir)
    resume = run / ".resume" / "zeroshot-tiny.jsonl"
    kill_when(run, [REPO / "stages" / "evaluate.py", "tiny"],
              lambda: resume.exists() and len(resume.read_text().splitlines()) >= 1 + 6, "three batches")
    assert not (run / "predictions").exists()
    again = stage(run, REPO / "stages" / "evaluate.py", "tiny")
    assert "resuming:" in again.stdout
    assert predictions(run) == predictions(full)
    quality = ("exact_match", "exact_match_ci95", "category_match", "top3_match", "ece", "macro_f1", "n")
    a, b = read_json(run / "metrics/eval/zeroshot-tiny.json"), read_json(full / "metrics/eval/zeroshot-tiny.json")
    assert {k: a[k] for k in quality} == {k: b[k] for k in quality}
