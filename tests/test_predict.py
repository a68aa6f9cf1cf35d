"""The prediction CLI on a tiny real model with a real LoRA adapter."""
import json

import pytest

from icdstudy.predict import DISCLAIMER, main
from tests.conftest import REPO

CODES = ["A047", "E119", "E784", "I10", "I4891", "M5450", "S83512A", "T814XXA", "Z23"]
TEXT = "[doctor] What brings you in?\n[patient] I'm thirsty all the time. Assessment: diabetes (ICD-10: E11.9)."


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    from icdstudy.finetune.training import fine_tune
    from tests.test_training import CFG, ROWS

    root = tmp_path_factory.mktemp("predict")
    fine_tune(tiny_model_dir, {"key": "tiny"}, ROWS, ROWS[:4], {**CFG, "num_epochs": 1}, "dialogue", 64,
              adapter_dir=root / "adapter", work_dir=root / "work")
    labels = root / "codes.txt"
    labels.write_text("\n".join(CODES))
    return {"model": str(tiny_model_dir), "adapter": str(root / "adapter"), "labels": str(labels), "root": root}


def _run(setup, *args):
    return main(["--model", setup["model"], "--labels", setup["labels"], "--params", str(REPO / "params.yaml"), *args])


def test_single_encounter_json_output_is_ranked_and_described(setup, capsys):
    assert _run(setup, "--adapter", setup["adapter"], "--json", "--top-k", "5", "--text", TEXT) == 0
    out = json.loads(capsys.readouterr().out)
    cands = out["candidates"]
    assert len(cands) == 5 and out["system"].startswith("lora-")
    scores = [c["score"] for c in cands]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    assert all("." in c["code"] or len(c["code"]) == 3 for c in cands)
    assert {c["code"].replace(".", "") for c in cands} <= set(CODES)
    by_code = {c["code"]: c for c in cands}
    for c in cands:
        assert c["description"] and c["chapter"]
    if "T81.4XXA" in by_code:  # retired code: described through its prefix
        assert by_code["T81.4XXA"]["chapter"] == "19"
    assert out["note"] == DISCLAIMER and out["abstained"] is False


def test_stdin_and_human_output(setup, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(TEXT))
    assert _run(setup, "--top-k", "3") == 0
    out = capsys.readouterr().out
    assert out.count("\n1. ") + out.startswith("1. ") == 1 and "\n3. " in out and DISCLAIMER in out


def test_abstains_below_min_confidence(setup, capsys):
    assert _run(setup, "--json", "--min-confidence", "0.999", "--text", TEXT) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["abstained"] is True and out["top_score"] < 0.999


def test_batch_scores_good_rows_and_reports_bad_ones(setup, capsys, tmp_path):
    batch = tmp_path / "batch.csv"
    batch.write_text('dialogue\n"I have a fever"\n""\n"My knee hurts"\n')
    out = tmp_path / "out.jsonl"
    assert _run(setup, "--input", str(batch), "--output", str(out), "--top-k", "2") == 0
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r["row"] for r in rows] == [1, 3, 2] and rows[2]["error"] == "empty input"
    assert all(len(r["candidates"]) == 2 for r in rows[:2])
    assert "row 2: empty input" in capsys.readouterr().err


@pytest.mark.parametrize("args,needle", [
    (["--text", "   "], "encounter is empty"),
    (["--model", "no-such-model", "--text", "x"], "--model no-such-model"),
    (["--adapter", "/nonexistent/adapter", "--text", "x"], "no adapter_config.json"),
    (["--input", "/nonexistent/batch.csv"], "cannot read"),
])
def test_errors_are_one_clear_line(setup, capsys, args, needle):
    argv = ["--labels", setup["labels"], "--params", str(REPO / "params.yaml")]
    if "--model" not in args:
        argv += ["--model", setup["model"]]
    assert main(argv + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("predict: error:") and needle in err[0]


def test_a_shortlist_prompt_lists_the_retrieved_codes(setup, capsys, tmp_path):
    from icdstudy.core.io import write_jsonl
    from tests.test_training import ROWS

    data = tmp_path / "processed"
    write_jsonl(data / "train.jsonl", [{**r, "id": f"t{i}"} for i, r in enumerate(ROWS)])
    assert _run(setup, "--adapter", setup["adapter"], "--shortlist", "--data", str(data), "--json", "--top-k", "3",
                "--text", TEXT) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["system"] == "lora-shortlist-" + setup["model"].rstrip("/").split("/")[-1]
    assert len(out["shortlist"]) == 5 and len(set(out["shortlist"])) == 5
    assert {c.replace(".", "") for c in out["shortlist"]} <= {r["code"] for r in ROWS}
    assert _run(setup, "--shortlist", "--data", str(tmp_path / "nowhere"), "--text", TEXT) == 2
    assert "--shortlist: " in capsys.readouterr().err


NEW = "[doctor] How is the knee today?\n[patient] It gives way on the stairs since the football game, and it swells."


@pytest.mark.parametrize("system", ["fewshot-tiny", "shortlist-tiny"])
def test_predict_serves_a_system_as_its_stage_predicts_it(tiny_model_dir, tmp_path, monkeypatch, capsys, system):
    """A new encounter through predict gets what predict@<system> gives it as a test row: the same shown examples
    or listed codes, the same ranked codes and scores (one Decoding for both)."""
    from tests.stage_project import project, run_stage

    root = project(tmp_path / "p", tiny_model_dir, test_rows=[{"id": "new-1", "code": "E119", "input": NEW}])
    run_stage(root, "predict", system)
    staged = [json.loads(line) for line in (root / "predictions" / f"{system}.jsonl").read_text().splitlines()]
    staged = next(r for r in staged if r.get("id") == "new-1")
    monkeypatch.chdir(root)
    assert main(["--system", system, "--json", "--text", NEW]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["system"] == system and len(out["candidates"]) == 3
    assert [(c["code"].replace(".", ""), round(c["score"], 4)) for c in out["candidates"]] == \
        [(c["code"], round(c["score"], 4)) for c in staged["candidates"][:3]]
    if system.startswith("fewshot"):
        assert out["shown_examples"] == staged["shot_ids"] and len(out["shown_examples"]) == 3
    else:
        assert [c.replace(".", "") for c in out["shortlist"]] == staged["shortlist"]


def test_all_labels_are_every_billable_code_of_the_table():
    from icdstudy.predict import _label_set

    labels = _label_set("all", REPO / "data" / "processed")
    assert len(labels) > 70_000 and {"B20", "Z66", "E119", "S83512A"} <= set(labels)
    assert "E11" not in labels and "E08-E13" not in labels  # a category with children, a block


def _thresholds(tmp_path, system: str, **keys) -> str:
    from icdstudy.core.io import write_json

    write_json(tmp_path / "val" / f"{system}.json", {"confidence_signal": "top1", "threshold_at_p90": 0.5,
                                                     "precision_at_p90": 0.91, "coverage_at_p90": 0.4, **keys})
    return str(tmp_path / "val")


@pytest.fixture
def table_project(setup, tiny_model_dir, tmp_path, monkeypatch):
    """A project whose table holds lora-tiny (decoding.top_k 3) with the trained adapter as its own, run from its root."""
    import shutil

    from tests.stage_project import project

    root = project(tmp_path / "project", tiny_model_dir)
    shutil.copytree(setup["adapter"], root / "models/adapters/lora-tiny")
    monkeypatch.chdir(root)
    return root


def _route(capsys, root, *args, **thresholds) -> dict:
    assert main(["--system", "lora-tiny", "--json", "--text", TEXT, "--target", "0.9",
                 "--metrics", _thresholds(root, "lora-tiny", **thresholds), *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_each_encounter_is_routed_by_the_threshold_certified_for_its_system(table_project, capsys):
    first = _route(capsys, table_project)
    rule = first["routing"]
    assert (rule["system"], rule["target"], rule["threshold"], rule["validation_precision"]) == ("lora-tiny", 0.9, 0.5, 0.91)
    assert rule["source"].endswith("val/lora-tiny.json") and rule["signal"] == "top1" and "uncertified" not in rule
    assert first["route"] == ("code" if first["top_score"] >= 0.5 else "review")
    # the same encounter against a threshold just above and just below its confidence
    for threshold, route in ((first["top_score"] + 1e-6, "review"), (first["top_score"], "code")):
        assert _route(capsys, table_project, threshold_at_p90=threshold)["route"] == route
    assert _route(capsys, table_project, "--top-k", "2", threshold_at_p90=first["top_score"])["route"] == "code"
    # calibration certified no threshold: every encounter goes to a coder, and the output says why
    assert main(["--system", "lora-tiny", "--text", TEXT, "--target", "0.9", "--metrics", _thresholds(
        table_project, "lora-tiny", threshold_at_p90=None, threshold_at_p90_reason="no threshold certifies 90%")]) == 0
    assert "Route: REVIEW" in capsys.readouterr().out


@pytest.mark.parametrize("change, why", [
    (["--adapter", "ADAPTER"], "is not lora-tiny's own"),
    (["--no-adapter"], "is not lora-tiny's own"),
    (["--labels", "LABELS"], "label set the thresholds were certified on"),
    (["--top-k", "5"], "searches more beams than lora-tiny's 3"),
    (["--input-kind", "note"], "is not the study's data.input"),
])
def test_a_threshold_applies_only_to_the_decoding_it_was_certified_on(table_project, setup, capsys, change, why):
    """Another adapter, label set, wider top-k or input field ranks other confidences: the certified threshold (here
    one every encounter reaches) does not route them, every encounter goes to review with the reason."""
    import shutil

    shutil.copytree(setup["adapter"], table_project / "other-adapter")
    args = [{"ADAPTER": "other-adapter", "LABELS": setup["labels"]}.get(a, a) for a in change]
    out = _route(capsys, table_project, *args, threshold_at_p90=0.0)
    assert out["route"] == "review" and why in out["routing"]["uncertified"]
    assert out["routing"]["reason"].startswith("uncertified routing: ")


def test_without_scores_there_is_no_route_and_the_output_says_what_to_run(setup, capsys, tmp_path):
    assert _run(setup, "--adapter", setup["adapter"], "--json", "--text", TEXT, "--metrics", str(tmp_path / "none")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["route"] is None and "run `dvc repro score`" in out["routing"]["reason"]


