"""A team's project for the tests of DVC's workflow: the project's own dvc.yaml on the demo data with a tiny
random model registered in params (every stage runs in seconds), pushed to a bare git remote and a DVC remote
folder, and clones of it."""
from pathlib import Path

import yaml

from tests.conftest import copy_repo, dvc, sh
from tests.stage_project import tiny_tables


def small_study(params_file: Path, model_dir: Path, key: str = "tiny") -> None:
    """The demo study with a tiny random model in every role (registered as ``key``): the same stages,
    seconds each; the shortlist systems are left out (the smoke run of the full study runs them)."""
    params = yaml.safe_load(params_file.read_text())
    params["models"][key] = {"path": str(model_dir), "dtype": "float32", "load_in_4bit": False}
    params["base_models"] = [key]
    training, llm = tiny_tables(key)
    params["training"] = {f"lora-{key}": training[f"lora-{key}"]}
    params["systems"]["llm"] = {s: llm[s] for s in (f"lora-{key}", f"zeroshot-{key}", f"fewshot-{key}")}
    params["datacard"]["tokenizer"] = key
    params["recipe"].update(num_epochs=1, eval_steps=10, save_steps=10, logging_steps=5, sanity_steps=0, lora_r=4,
                           lora_alpha=8)
    params["decoding"].update(max_samples=6, batch_size=6, top_k=2, max_input_tokens=96, max_shot_tokens=48)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def build_team(root: Path, model_dir: Path) -> dict:
    """Clone A ran the small study and pushed it (git to a bare repo, data to a DVC remote folder)."""
    origin, remote = root / "origin.git", root / "dvc-remote"
    sh(root, "git", "init", "-q", "--bare", "-b", "main", origin)
    a = copy_repo(root / "a")
    sh(a, "git", "branch", "-M", "main")
    sh(a, "git", "remote", "add", "origin", origin)
    small_study(a / "params.yaml", model_dir)
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
