"""`python -m icdstudy.study plan`: the full study fits one 80 GB GPU and the seed's batch does not.
The memory model against measured runs is tested in tests/test_gpu_host.py."""
import contextlib
import io
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from icdstudy.planning import plan
from icdstudy.planning.architectures import PUBLIC_CONFIGS, architecture
from tests.conftest import REPO


def _plan(*args):
    """`python -m icdstudy.study plan ...` as a user runs it, with no venv on PATH."""
    return subprocess.run([sys.executable, "-m", "icdstudy.study", "plan", *args], cwd=REPO, capture_output=True,
                          text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def _plan_here(*args):
    """The same command in this process: its imports are paid once, not by every call."""
    from icdstudy.study import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        code = main(["plan", *args])
    return SimpleNamespace(returncode=code, stdout=out.getvalue())


def test_full_study_fits_one_80gb_gpu_with_margin():
    run = _plan("full-study", "--gpu-mem-gb", "80", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout)
    names = [s["stage"] for s in result["stages"]]
    for want in ("predict@zeroshot-llama31-8b", "predict@zeroshot-mistral-7b", "train@lora-llama32-3b",
                 "train@lora-qwen25-3b", "predict@lora-qwen25-3b", "base@llama31-8b"):
        assert want in names
    for s in result["stages"]:
        assert s["fits"] and s["peak_gb"] + plan.CUDA_OVERHEAD_GB <= 0.9 * 80, s
    assert result["total_est_hours"] > 0 and result["gpu_mem_gb"] == 80


def test_fewshot_stages_are_planned_with_their_own_batch_and_seeds_multiply_hours():
    def stages(*extra):
        run = _plan_here("full-study", "--gpu-mem-gb", "80", "--json", *extra)
        return run.returncode, {s["stage"]: s for s in json.loads(run.stdout)["stages"]}

    rc, planned = stages()
    assert rc == 0
    for key in ("llama31-8b", "mistral-7b", "llama32-3b", "qwen25-3b"):
        few, zero = planned[f"predict@fewshot-{key}"], planned[f"predict@zeroshot-{key}"]
        assert few["fits"] and few["est_hours"] > zero["est_hours"]  # three examples per prompt cost more
    # at the zero-shot batch the 8B model's few-shot prompts do not fit, and the plan names the system's own key
    rc, planned = stages("-S", "systems.llm.fewshot-llama31-8b.decoding.batch_size=48")
    few = planned["predict@fewshot-llama31-8b"]
    assert rc == 1 and not few["fits"] and "systems.llm.fewshot-llama31-8b.decoding.batch_size=" in few["fix"]
    _, three = stages("-S", "train.seeds=[42,43,44]")
    one = stages()[1]
    assert three["train@lora-qwen25-3b"]["est_hours"] == pytest.approx(3 * one["train@lora-qwen25-3b"]["est_hours"], abs=0.02)


def test_the_seed_batch_does_not_fit_and_the_fix_is_named():
    run = _plan_here("full-study", "--gpu-mem-gb", "80", "-S", "train.batch_size=32", "-S", "train.grad_accum=1",
                "-S", "train.gradient_checkpointing=false")
    assert run.returncode == 1
    line = next(l for l in run.stdout.splitlines() if l.startswith("train@lora-llama32-3b"))
    assert " NO " in line
    fix = run.stdout.splitlines()[run.stdout.splitlines().index(line) + 1]
    assert "train.batch_size=" in fix and "train.grad_accum=" in fix


def test_public_configs_give_the_published_parameter_counts():
    counts = {k: a.params_total / 1e9 for k, a in PUBLIC_CONFIGS.items()}
    assert counts["meta-llama/Llama-3.1-8B-Instruct"] == pytest.approx(8.03, abs=0.01)
    assert counts["meta-llama/Llama-3.2-3B-Instruct"] == pytest.approx(3.21, abs=0.01)
    assert counts["Qwen/Qwen2.5-3B-Instruct"] == pytest.approx(3.09, abs=0.01)
    assert counts["mistralai/Mistral-7B-Instruct-v0.3"] == pytest.approx(7.25, abs=0.01)
    assert counts["HuggingFaceTB/SmolLM2-135M-Instruct"] == pytest.approx(0.1345, abs=0.001)


def test_a_local_config_json_wins_over_the_table(tiny_model_dir):
    arch = architecture({"key": "x", "hub_id": "meta-llama/Llama-3.2-3B-Instruct", "path": str(tiny_model_dir)})
    assert (arch.hidden, arch.layers) == (64, 2) and "config.json" in arch.source
