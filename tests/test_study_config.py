"""The full study is one command: its override file must parse through DVC's own -S code."""
import json
import shutil

import yaml

from icdstudy.study import _dotted, main, overrides
from tests.conftest import REPO, dvc


def test_full_study_overrides_apply_through_dvc(tmp_path):
    from dvc.utils.hydra import apply_overrides

    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    args = overrides(REPO / "configs" / "full-study.yaml")
    apply_overrides(params, [a for a in args if a != "-S"])
    p = yaml.safe_load(params.read_text())
    assert p["data"]["source"] == "hf:Ahmad0067/MedSynth"
    llm = p["systems"]["llm"]
    assert {s["model"] for s in llm.values() if s["prompt"] == "plain" and not s.get("run")} == \
        {"llama31-8b", "mistral-7b", "llama32-3b", "qwen25-3b"}
    assert {s["model"] for s in llm.values() if s.get("run")} == {"llama32-3b", "qwen25-3b"}
    assert "zeroshot-smollm2-135m" not in llm and set(p["systems"]["floors"]) == {"tfidf-logreg", "knn-tfidf"}
    assert set(p["training"]) == {"lora-llama32-3b", "lora-shortlist-llama32-3b", "lora-qwen25-3b", "lora-shortlist-qwen25-3b"}
    assert {s["model"] for s in llm.values()} <= set(p["base_models"]) <= set(p["models"])
    assert p["recipe"]["lora_r"] == 64 and p["recipe"]["lora_alpha"] == 128 and p["recipe"]["learning_rate"] == 2e-4
    assert p["recipe"]["save_steps"] % p["recipe"]["eval_steps"] == 0
    assert p["models"]["llama31-8b"]["load_in_4bit"] and p["models"]["mistral-7b"]["load_in_4bit"]


def test_the_full_study_trains_both_arms_with_one_recipe_at_its_own_scale(monkeypatch):
    """The demo's shortlist recipe was chosen for a 135M model; the full study trains both arms alike (the seed's
    recipe, the kept checkpoint chosen by validation exact match), with a warm-up that fits its 576 steps."""
    from icdstudy.core.params import run_recipe
    from icdstudy.core.schema import validate
    from icdstudy.study import resolved_params

    monkeypatch.chdir(REPO)
    p = validate(resolved_params("full-study", [])).model_dump()
    plain, listed = run_recipe(p, "lora-qwen25-3b"), run_recipe(p, "lora-shortlist-qwen25-3b")
    assert plain == listed and plain["select_by"] == "exact_match"
    assert (plain["learning_rate"], plain["num_epochs"], plain["lr_scheduler"]) == (2e-4, 3, "linear")
    steps = 3 * -(-6144 // (plain["batch_size"] * plain["grad_accum"]))
    assert plain["warmup_steps"] < 0.2 * steps and steps // plain["eval_steps"] >= 6


def test_demo_params_are_consistent():
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    models = {s["model"] for s in p["systems"]["llm"].values()} | {r["model"] for r in p["training"].values()}
    assert models | {p["datacard"]["tokenizer"]} <= set(p["base_models"]) <= set(p["models"])
    assert p["recipe"]["save_steps"] % p["recipe"]["eval_steps"] == 0
    for key in ("llama31-8b", "mistral-7b", "llama32-3b", "qwen25-3b", "smollm2-135m"):
        assert key in p["models"]


def test_dry_run_prints_the_dvc_command(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["full-study", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dvc exp run -n full-study -S ") and "recipe.lora_r=64" in out
    assert main(["no-such-config"]) == 2


def test_a_train_param_invalidates_only_training(tmp_path):
    from tests.conftest import copy_repo

    repo = copy_repo(tmp_path / "repo")
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("  lora_r: 16 ", "  lora_r: 8 ", 1))
    import json

    status = json.loads(dvc(repo, "status", "--json"))
    changed = [s for s, reasons in status.items() if any("params.yaml" in (r.get("changed deps") or {}) for r in reasons if isinstance(r, dict))]
    assert changed == ["train@lora-shortlist-smollm2-135m"], status  # the demo's training run, and nothing else
    # a price reruns the scores and the report, nothing that predicts or trains
    params.write_text(params.read_text().replace("  lora_r: 8 ", "  lora_r: 16 ", 1).replace(
        "  usd_per_hour: 2.69 ", "  usd_per_hour: 3.5 ", 1))
    status = json.loads(dvc(repo, "status", "--json"))
    changed = [s for s, reasons in status.items() if any("params.yaml" in (r.get("changed deps") or {}) for r in reasons if isinstance(r, dict))]
    assert sorted(changed) == ["report", "score"], status
    # one system's entry, a recipe key, a floor's entry, code and data: tests/test_registry.py


def test_a_smoke_run_is_its_own_experiment_and_a_real_run_resets_its_sizes(capsys, monkeypatch, tmp_path):
    from icdstudy.study import main

    monkeypatch.chdir(REPO)
    assert main(["full-study", "--smoke", "--dry-run", "-S", "decoding.max_samples=6", "-S", "models.qwen25-3b.path=/m"]) == 0
    smoke = capsys.readouterr().out
    assert smoke.startswith("dvc exp run -n full-study-smoke -S ")
    assert "smoke=true" in smoke and "recipe.max_steps=4" in smoke and "recipe.lora_r=64" in smoke
    assert smoke.count("decoding.max_samples=") == 1 and "decoding.max_samples=6" in smoke  # -S replaces, never repeats a key
    assert "models.qwen25-3b.path=" in smoke
    assert main(["full-study", "--dry-run"]) == 0
    real = capsys.readouterr().out
    assert real.startswith("dvc exp run -n full-study -S ")
    # every key the smoke run shrinks is set back to its committed value, whatever params.yaml holds now
    assert "smoke=false" in real and "decoding.max_samples=null" in real and "recipe.max_steps=null" in real
    assert "recipe.eval_steps=96" in real  # the study's own value wins over the committed demo value (50)


def test_overrides_without_dvc_give_the_same_params(tmp_path):
    """The GPU check's environment has no DVC: its plain dotted overrides must agree with DVC's."""
    import shutil

    import yaml

    from icdstudy import study

    args = [a for a in study.overrides(REPO / "configs/full-study.yaml") if a != "-S"] + ["recipe.seeds=[42,43]"]
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    study._apply_plain_overrides(path, args)
    plain = yaml.safe_load(path.read_text())
    import os

    here = os.getcwd()
    os.chdir(REPO)
    try:
        assert plain == study.resolved_params("full-study", ["recipe.seeds=[42,43]"])
    finally:
        os.chdir(here)


def test_a_real_run_resets_what_a_smoke_run_left_in_the_workspace(tmp_path, monkeypatch, capsys):
    """The workspace differs from HEAD (a smoke run's params left behind, as `dvc exp run` leaves them): a real run
    takes each smoke key's value from HEAD, not from the workspace; a key HEAD does not have keeps the workspace's."""
    from tests.conftest import copy_repo

    repo = copy_repo(tmp_path / "repo")
    params = repo / "params.yaml"
    text = params.read_text()
    left = (text.replace("  max_samples: null ", "  max_samples: 48 ", 1).replace("  max_steps: null ", "  max_steps: 4 ", 1)
            .replace("smoke: false ", "smoke: true ", 1))
    assert left != text
    params.write_text(left)
    (repo / "configs/smoke.yaml").write_text((repo / "configs/smoke.yaml").read_text() + "train.newer_than_head: 3\n")
    monkeypatch.chdir(repo)
    from icdstudy.study import run_values

    values = run_values("full-study", smoke=False)
    assert values["decoding.max_samples"] is None and values["recipe.max_steps"] is None and values["smoke"] is False
    assert values["train.newer_than_head"] is None  # not in HEAD's params, nor in the workspace's: as it is
    assert values["recipe.eval_steps"] == 96  # the study's own value wins over both
    smoke = run_values("full-study", smoke=True)
    assert smoke["decoding.max_samples"] == 48 and smoke["smoke"] is True and smoke["recipe.max_steps"] == 4


def test_editing_a_test_row_retrains_nothing(tmp_path):
    """The test split is no input of training or checkpoint choice: with the committed dvc.lock, editing a test
    row changes the predicting stages' inputs and no training stage's."""
    from tests.conftest import copy_repo

    repo = copy_repo(tmp_path / "repo")
    dvc(repo, "repro", "prepare")  # the demo's data, byte for byte what dvc.lock records

    def data_changes(status):
        return {stage: sorted(p for r in reasons if isinstance(r, dict) for p in (r.get("changed deps") or {})
                              if p.startswith("data/")) for stage, reasons in status.items()}

    before = data_changes(json.loads(dvc(repo, "status", "--json")))
    assert not any(before.values()), f"dvc.lock does not match the demo's data: {before}"
    test = repo / "data/processed/test.jsonl"
    rows = test.read_text().splitlines()
    edited = rows[0].replace('"input": "', '"input": "(edited) ', 1)
    assert edited != rows[0]
    test.write_text("\n".join([edited, *rows[1:]]) + "\n")
    after = data_changes(json.loads(dvc(repo, "status", "--json")))
    training = [s for s in after if s.startswith("train@")]
    assert training and all(after[s] == [] for s in training), after
    assert after["predict@zeroshot-smollm2-135m"] == ["data/processed"] and "data/processed/test.jsonl" in after["score"]



def test_every_full_study_key_equal_to_the_demos_is_marked_a_pin():
    """A key of configs/full-study.yaml that repeats the demo's value says so (`# pin`): a reader knows it is
    deliberate, and a key marked a pin that no longer equals the demo's is caught too."""
    demo = yaml.safe_load((REPO / "params.yaml").read_text())
    lines = (REPO / "configs/full-study.yaml").read_text().splitlines()
    full = yaml.safe_load("\n".join(lines))

    marked = {line.split(":")[0] for line in lines if "# pin" in line and not line.startswith("#")}
    equal = {k for k, v in full.items() if not isinstance(v, dict) and _dotted(demo, k, KeyError) == v}
    assert marked == equal, f"mark with `# pin`: {sorted(equal - marked)}; no longer pins: {sorted(marked - equal)}"
