"""Params are read as DVC reads them (YAML 1.2) and reach the stages with the schema's types: `1e-4` typed by hand,
or passed through `study ... -S`, is a number everywhere, never a string that crashes the optimizer."""
import json
import subprocess
import sys

import yaml

from icdstudy.core.params import load_params, run_recipe, yaml_load
from tests.conftest import REPO
from tests.stage_project import project, run_stage


def test_the_loader_reads_params_yaml_as_dvc_does():
    from dvc.utils.serialize import parse_yaml

    text = "a: 1e-4\nb: yes\nc: 2.0e-3\nd: on\ne: [1e-3, 0.5]\n"
    assert yaml_load(text) == parse_yaml(text, "params.yaml") == {"a": 1e-4, "b": "yes", "c": 2e-3, "d": "on",
                                                                   "e": [1e-3, 0.5]}
    assert yaml.safe_load(text)["a"] == "1e-4"  # what a YAML 1.1 loader makes of it
    whole = (REPO / "params.yaml").read_text()
    assert yaml_load(whole) == parse_yaml(whole, "params.yaml")


def test_a_hand_typed_exponent_is_a_number_in_every_stage(tmp_path):
    path = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text()
    path.write_text(text.replace("  learning_rate: 1.0e-3 ", "  learning_rate: 1e-4 ", 1)
                    .replace("    recipe: {}  ", "    recipe: {learning_rate: 3e-3}  ", 1))  # a run's own recipe
    assert "learning_rate: 1e-4" in path.read_text() and "learning_rate: 3e-3" in path.read_text()
    params = load_params(path)
    assert params["recipe"]["learning_rate"] == 1e-4 and isinstance(params["recipe"]["learning_rate"], float)
    recipe = run_recipe(params, "lora-shortlist-smollm2-135m")
    assert recipe["learning_rate"] == 3e-3 and isinstance(recipe["learning_rate"], float)
    assert recipe["weight_decay"] == params["recipe"]["weight_decay"]  # the keys it does not replace are `recipe`'s


def test_the_train_stage_trains_with_a_hand_typed_exponent(tiny_model_dir, tmp_path):
    run = project(tmp_path / "run", tiny_model_dir, num_epochs=1, select_by="loss")
    params = run / "params.yaml"
    text = params.read_text()
    assert "learning_rate: 0.002" in text
    params.write_text(text.replace("learning_rate: 0.002", "learning_rate: 1e-3"))
    out = run_stage(run, "train", "lora-tiny")  # crashed in the optimizer: '<=' between float and str
    assert "kept step" in out and json.loads((run / "metrics/train/lora-tiny.json").read_text())["steps"] == 6


def test_study_overrides_carry_numbers(tmp_path):
    dry = subprocess.run([sys.executable, "-m", "icdstudy.study", "full-study", "--dry-run", "-S",
                          "recipe.learning_rate=1e-3"], cwd=REPO, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "recipe.learning_rate=0.001" in dry.stdout and '"1e-3"' not in dry.stdout
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    applied = subprocess.run([sys.executable, "-m", "icdstudy.study", "apply", "-S", "recipe.learning_rate=1e-3",
                              "--params", str(params)], cwd=REPO, capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr
    assert load_params(params)["recipe"]["learning_rate"] == 1e-3
    assert yaml_load(params.read_text())["recipe"]["learning_rate"] == 1e-3  # a number in the file, as DVC reads it
