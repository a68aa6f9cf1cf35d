"""`python -m icdstudy.study plan`: the full study fits one 80 GB GPU and the seed's batch does not.
The memory model against measured runs is tested in tests/test_gpu_host.py."""
import json

import pytest

from icdstudy.planning import plan
from icdstudy.planning.architectures import PUBLIC_CONFIGS, architecture
from tests.conftest import REPO
from tests.plan_runs import plan_cli, plan_here


def test_full_study_fits_one_80gb_gpu_with_margin():
    run = plan_cli("full-study", "--gpu-mem-gb", "80", "--json")
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
        run = plan_here("full-study", "--gpu-mem-gb", "80", "--json", *extra)
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
    _, three = stages("-S", "recipe.seeds=[42,43,44]")
    one = stages()[1]
    assert three["train@lora-qwen25-3b"]["est_hours"] == pytest.approx(3 * one["train@lora-qwen25-3b"]["est_hours"], abs=0.02)


def test_the_seed_batch_does_not_fit_and_the_fix_is_named():
    run = plan_here("full-study", "--gpu-mem-gb", "80", "-S", "recipe.batch_size=32", "-S", "recipe.grad_accum=1",
                "-S", "recipe.gradient_checkpointing=false")
    assert run.returncode == 1
    line = next(l for l in run.stdout.splitlines() if l.startswith("train@lora-llama32-3b"))
    assert " NO " in line
    fix = run.stdout.splitlines()[run.stdout.splitlines().index(line) + 1]
    assert "recipe.batch_size=" in fix and "recipe.grad_accum=" in fix


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


def test_the_gpu_host_doc_shows_the_plan_the_command_prints():
    """docs/gpu-host.md's plan table is the output of the command its marker names, never edited by hand."""
    doc = (REPO / "docs/gpu-host.md").read_text()
    marker = next(line for line in doc.splitlines() if line.startswith("<!-- plan: "))
    table = doc.split(marker)[1].split("<!-- /plan -->")[0].strip()
    run = plan_here(*marker.removeprefix("<!-- plan: ").removesuffix(" -->").split())
    assert run.returncode == 0 and table == run.stdout.strip(), (
        f"docs/gpu-host.md: regenerate the table with `python -m icdstudy.study plan {marker[11:-4]}`")
