"""A real `dvc repro` of the data stage in a temporary copy of the repository."""
import json

from tests.conftest import copy_repo, dvc


def test_prepare_repro_is_deterministic_and_incremental(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    out = dvc(repo, "repro", "prepare")
    assert "Running stage 'prepare'" in out
    first = (repo / "data/processed/test.jsonl").read_bytes()
    metrics = json.loads((repo / "metrics/data.json").read_text())
    assert metrics["rows_out"] == metrics["train"] + metrics["val"] + metrics["calibration"] + metrics["test"]

    assert "didn't change" in dvc(repo, "repro", "prepare") or "up to date" in dvc(repo, "status", "prepare")
    assert "Running stage" not in dvc(repo, "repro", "prepare")

    # Same input and params: byte-identical outputs after a forced rerun.
    dvc(repo, "repro", "-f", "prepare")
    assert (repo / "data/processed/test.jsonl").read_bytes() == first

    # Changing split.seed invalidates prepare and what reads its outputs, not the model stages.
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("  seed: 42\n", "  seed: 7\n", 1))
    status = json.loads(dvc(repo, "status", "--json"))
    params_changed = [stage for stage, reasons in status.items()
                      if any("params.yaml" in (r.get("changed deps") or {}) for r in reasons if isinstance(r, dict))]
    assert "prepare" in params_changed and set(params_changed) <= {"prepare", "report"}, status  # report prints the seed
    assert status["prepare"] == [{"changed deps": {"params.yaml": {"split": "modified"}}}]
    dvc(repo, "repro", "prepare")
    assert (repo / "data/processed/test.jsonl").read_bytes() != first


def test_exp_run_on_a_local_medsynth_copy_with_notes(tmp_path, sample_x3_csv):
    repo = copy_repo(tmp_path / "repo")
    dvc(repo, "exp", "run", "-S", f"data.source={sample_x3_csv}", "-S", "data.input=note", "prepare")
    metrics = json.loads((repo / "metrics/data.json").read_text())
    assert metrics["rows_in"] == 1515 and metrics["input"] == "note" and metrics["code_mentions_after"] == 0
