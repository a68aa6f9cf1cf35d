"""benchmarks/run.py --quick: every measurement runs end to end on CPU (the numbers are not checked)."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _tiny_dvc_project(path):
    path.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=path, check=True, env=env)
    (path / "dvc.yaml").write_text("stages:\n  hello:\n    cmd: echo hi > out.txt\n    outs: [out.txt]\n")
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=path, check=True, env=env)
    return path


@pytest.mark.slow
def test_quick_benchmark_writes_every_ratio(tiny_model_dir, sample_csv, tmp_path):
    project = _tiny_dvc_project(tmp_path / "project")
    out = tmp_path / "results"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--model", str(tiny_model_dir),
                          "--data", str(sample_csv), "--repo", str(project), "--out", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for key in ("train_padding_speedup", "eval_batching_speedup", "constrained_overhead", "noop_repro_s"):
        assert isinstance(summary[key], float) and summary[key] > 0, key
        assert summary["met"][key] in (True, False)
    train = summary["details"]["train"]
    assert train["naive"]["padded_slots"] == train["examples"] * 512  # the naive side pads to 512
    assert train["ours"]["useful_tokens"] == train["naive"]["useful_tokens"]  # same tokens both ways
    assert "| train_padding_speedup" in run.stdout and (out / "summary.md").exists()
