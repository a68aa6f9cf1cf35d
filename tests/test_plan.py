"""`python -m icdstudy.study plan`: the full study fits one 80 GB GPU, the seed's batch does not,
and the activation model agrees with autograd's saved tensors on scaled-down study architectures."""
import json
import subprocess
import sys

import pytest

from icdstudy import plan
from icdstudy.architectures import PUBLIC_CONFIGS, architecture
from icdstudy.measure import saved_activation_bytes, scaled_down, synthetic_batch, build_model
from tests.conftest import REPO

# The activation model's stated tolerance against a measured forward pass.
TOLERANCE = 0.15


def _plan(*args):
    return subprocess.run([sys.executable, "-m", "icdstudy.study", "plan", *args], cwd=REPO, capture_output=True,
                          text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_full_study_fits_one_80gb_gpu_with_margin():
    run = _plan("full-study", "--gpu-mem-gb", "80", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout)
    names = [s["stage"] for s in result["stages"]]
    for want in ("zeroshot@llama31-8b", "zeroshot@mistral-7b", "train@llama32-3b", "train@qwen25-3b",
                 "evaluate@qwen25-3b", "base@llama31-8b"):
        assert want in names
    for s in result["stages"]:
        assert s["fits"] and s["peak_gb"] + plan.CUDA_OVERHEAD_GB <= 0.9 * 80, s
    assert result["total_est_hours"] > 0 and result["gpu_mem_gb"] == 80


def test_fewshot_stages_are_planned_with_their_own_batch_and_seeds_multiply_hours():
    def stages(*extra):
        run = _plan("full-study", "--gpu-mem-gb", "80", "--json", *extra)
        return run.returncode, {s["stage"]: s for s in json.loads(run.stdout)["stages"]}

    rc, planned = stages()
    assert rc == 0
    for key in ("llama31-8b", "mistral-7b", "llama32-3b", "qwen25-3b"):
        few, zero = planned[f"fewshot@{key}"], planned[f"zeroshot@{key}"]
        assert few["fits"] and few["est_hours"] > zero["est_hours"]  # three examples per prompt cost more
    # at the zero-shot batch the 8B model's few-shot prompts do not fit, and the plan names the fix
    rc, planned = stages("-S", "eval.fewshot_batch_size=null")
    assert rc == 1 and not planned["fewshot@llama31-8b"]["fits"] and "eval.fewshot_batch_size=" in planned["fewshot@llama31-8b"]["fix"]
    _, three = stages("-S", "train.seeds=[42,43,44]")
    one = stages()[1]
    assert three["train@qwen25-3b"]["est_hours"] == pytest.approx(3 * one["train@qwen25-3b"]["est_hours"], abs=0.02)


def test_the_seed_batch_does_not_fit_and_the_fix_is_named():
    run = _plan("full-study", "--gpu-mem-gb", "80", "-S", "train.batch_size=32", "-S", "train.grad_accum=1",
                "-S", "train.gradient_checkpointing=false")
    assert run.returncode == 1
    line = next(l for l in run.stdout.splitlines() if l.startswith("train@llama32-3b"))
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


@pytest.mark.parametrize("hub_id", ["meta-llama/Llama-3.2-3B-Instruct", "Qwen/Qwen2.5-3B-Instruct",
                                    "mistralai/Mistral-7B-Instruct-v0.3"])
@pytest.mark.parametrize("dropout,checkpointing", [(0.0, False), (0.1, False), (0.1, True)])
def test_activation_model_matches_saved_tensors(hub_id, dropout, checkpointing):
    import torch

    arch = scaled_down(PUBLIC_CONFIGS[hub_id], hidden=320, layers=3)  # a shape the coefficients were not fitted on
    tcfg = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": dropout, "gradient_checkpointing": checkpointing,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    model = build_model(arch, torch.bfloat16, "cpu", tcfg)
    model.train()
    batch, seq = 2, 96
    measured = saved_activation_bytes(model, synthetic_batch(arch.vocab, batch, seq), torch.bfloat16)
    outside = plan.outside_layers_bytes(arch, batch, seq)
    predicted = plan.activation_bytes(arch, batch * seq, dropout, checkpointing) + outside
    assert measured == pytest.approx(predicted, rel=TOLERANCE)
    if checkpointing:
        assert measured < 0.3 * (plan.activation_bytes(arch, batch * seq, dropout, False) + outside)


def test_measure_on_cpu_reports_the_plan_error():
    run = _plan("--json", "--measure", "--steps", "2")
    assert run.returncode == 0, run.stderr
    measured = json.loads(run.stdout)["measured"]
    assert measured and measured[0]["stage"] == "train@smollm2-135m"
    assert abs(measured[0]["plan_error"]) < TOLERANCE and measured[0]["tokens_per_s"] > 0
