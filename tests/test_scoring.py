"""Stage `score`: both splits scored by one code path with the same keys, the deployment view (coverage at a
target precision, thresholds chosen on validation only, risk-coverage area, cost), and the checks that keep
predictions of other data out."""
import json
import random

import pytest

from icdstudy import deploy, metrics, systems
from icdstudy.io import read_json, read_jsonl, write_json, write_jsonl
from icdstudy.scoring import ScoreError, check_rows, score_system
from tests.conftest import REPO
from tests.stage_project import system_for, tables_for
from tests.stage_project import run_stage

DEPLOY = {"target_precision": [0.9, 0.95], "usd_per_hour": 3.6, "cpu_usd_per_hour": 0.36, "price_source": "test"}


def score_only(project, system: str) -> dict:
    """One system's metrics ({split: metrics}) from a project's predictions, without the retriever's votes."""
    s = system_for(system)
    rows = {split: read_jsonl(project / f"data/processed/{split}.jsonl") for split in systems.SPLITS}
    preds = {split: read_jsonl(project / s.predictions(split)) for split in systems.SPLITS}
    record = read_json(project / s.run_record)
    seeds = {f"seed-{n}": read_jsonl(project / "predictions/seeds" / s.id / f"seed-{n}.jsonl")
             for n in record.get("seeds", [])[1:]}
    return score_system(preds, {k: v[:len(preds[k])] for k, v in rows.items()}, record,
                        {split: {} for split in systems.SPLITS}, DEPLOY, seeds)


def pred(i, gold, right, conf, second=None, latency=0.5):
    code = gold if right else ("I10" if gold != "I10" else "E119")
    cands = [{"code": code, "score": conf}] + ([{"code": second, "score": round(1 - conf, 3)}] if second else [])
    return {"id": f"r{i}", "gold": gold, "pred": code, "raw": code, "valid": True, "candidates": cands,
            "confidence": conf, "latency_s": latency, "input_truncated": False}


# --- the deployment view on hand-built cases --------------------------------------------------------
def test_the_threshold_is_the_lowest_confidence_whose_rows_reach_the_target():
    # most confident first: right, right, right, wrong, right, wrong (confidences .9 .8 .7 .6 .5 .4)
    conf = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    right = [True, True, True, False, True, False]
    assert deploy.choose_threshold(conf, right, 0.95) == (0.7, None)  # 3 of 3 right; 4 of 4 would be 75%
    assert deploy.choose_threshold(conf, right, 0.75) == (0.5, None)  # 3 of 4 reach 75%, 4 of 5 too: more coverage
    assert deploy.choose_threshold(conf, right, 0.8) == (0.5, None)   # 4 of 5 = 80%
    assert deploy.choose_threshold(conf, right, 0.81) == (0.7, None)  # 80% falls short: back to the 3 sure rows
    assert deploy.choose_threshold([0.5, 0.4], [False, False], 0.9) == (None, "no validation prediction is right")
    none, why = deploy.choose_threshold([0.9, 0.5], [False, True], 0.9)
    assert none is None and why == "validation precision never reaches 90% (at best 50.0%, on the 100.0% most confident rows)"


def test_rows_of_equal_confidence_are_coded_together():
    # four rows at 0.8 (three right), one at 0.9 (right): no threshold can code some of the 0.8 rows alone
    curve = deploy.risk_coverage([0.8, 0.9, 0.8, 0.8, 0.8], [True, True, False, True, True])
    assert curve == [(0.9, 0.2, 0.0), (0.8, 1.0, 0.2)]
    assert deploy.choose_threshold([0.8, 0.9, 0.8, 0.8, 0.8], [True, True, False, True, True], 0.85) == (0.9, None)


def test_aurc_on_hand_built_curves():
    assert deploy.aurc([0.9, 0.8, 0.7, 0.6], [True, True, False, False]) == pytest.approx((0 + 0 + 1 / 3 + 2 / 4) / 4, abs=1e-4)
    assert deploy.aurc([0.6, 0.7, 0.8, 0.9], [True, True, False, False]) == pytest.approx((1 + 1 + 2 / 3 + 2 / 4) / 4, abs=1e-4)
    assert deploy.aurc([0.5] * 4, [True, False, True, False]) == pytest.approx(0.5)  # one group: its error rate


def test_coverage_and_precision_at_a_threshold_with_wilson_intervals():
    at = deploy.at_threshold([0.9, 0.8, 0.7, 0.6], [True, True, False, True], 0.75)
    assert (at["coverage"], at["precision"], at["coded"]) == (0.5, 1.0, 2)
    lo, hi = at["precision_ci95"]
    assert lo == pytest.approx(0.3424, abs=1e-4) and hi == 1.0  # Wilson interval of 2 of 2
    assert deploy.at_threshold([0.9], [True], None)["coverage"] is None


def test_cost_per_thousand_encounters():
    assert deploy.usd_per_1k(2.0, 3.6) == pytest.approx(0.5)  # 500 s per 1,000 at $3.60/h
    assert deploy.usd_per_1k(None, 3.6) is None
    assert deploy.price("cuda", DEPLOY) == 3.6 and deploy.price("cpu", DEPLOY) == 0.36


def test_the_signal_with_the_smallest_validation_area_is_chosen():
    # top-1 probability ranks these rows backwards; the margin over the second ranks them right
    val = [pred(0, "E119", True, 0.5, "Z23"), pred(1, "E119", True, 0.55, "Z23"), pred(2, "I10", False, 0.6, "Z23"),
           pred(3, "I10", False, 0.65, "Z23")]
    val[0]["candidates"][1]["score"], val[1]["candidates"][1]["score"] = 0.0, 0.05
    signal, areas = deploy.choose_signal(val, {})
    assert signal == "margin" and areas["margin"] < areas["top1"]


# --- one code path, both splits ----------------------------------------------------------------------
def _rows(n, seed):
    rng = random.Random(seed)
    return [{"id": f"r{i}", "code": rng.choice(["E119", "I10", "Z23"]), "input": f"encounter {seed}-{i}"} for i in range(n)]


def _system(rows, seed):
    rng = random.Random(seed)
    return [pred(i, r["code"], rng.random() < 0.6, round(rng.uniform(0.3, 0.99), 3), "Z23") for i, r in enumerate(rows)]


RECORD = {"system": "zeroshot-x", "prompt": "plain", "model": "x", "params_total": 1000, "peak_mem_mb": 10.0,
          "device": "cuda", "constrained": True, "top_k": 2, "few_shot": 0, "inputs_truncated": {"val": 1, "test": 2}}


def test_validation_and_test_get_the_same_keys_and_their_own_split():
    rows = {"val": _rows(40, 1), "test": _rows(40, 2)}
    preds = {split: _system(rows[split], seed) for split, seed in (("val", 3), ("test", 4))}
    out = score_system(preds, rows, RECORD, {"val": {}, "test": {}}, DEPLOY)
    assert set(out["val"]) == set(out["test"])
    assert (out["val"]["split"], out["test"]["split"]) == ("val", "test")
    assert out["val"]["split_fingerprint"] != out["test"]["split_fingerprint"]
    assert out["val"]["exact_match"] == metrics.quality(preds["val"])["exact_match"]
    for k in ("p90", "p95"):
        assert out["val"][f"threshold_at_{k}"] == out["test"][f"threshold_at_{k}"]  # chosen once, on validation
        for key in (f"coverage_at_{k}", f"precision_at_{k}", "usd_per_1k", "aurc"):
            assert key in out["test"]
    assert out["test"]["inputs_truncated"] == 2 and out["test"]["usd_per_hour"] == 3.6
    assert out["test"]["usd_per_1k"] == pytest.approx(1000 * 0.5 / 3600 * 3.6, rel=1e-3)


def test_shuffling_the_test_gold_codes_moves_no_threshold():
    rows = {"val": _rows(60, 5), "test": _rows(60, 6)}
    preds = {split: _system(rows[split], seed) for split, seed in (("val", 7), ("test", 8))}
    before = score_system(preds, rows, RECORD, {"val": {}, "test": {}}, DEPLOY)
    golds = [r["code"] for r in rows["test"]]
    random.Random(9).shuffle(golds)
    rows2 = {"val": rows["val"], "test": [{**r, "code": g} for r, g in zip(rows["test"], golds)]}
    preds2 = {"val": preds["val"], "test": [{**p, "gold": g} for p, g in zip(preds["test"], golds)]}
    after = score_system(preds2, rows2, RECORD, {"val": {}, "test": {}}, DEPLOY)
    assert after["test"]["exact_match"] != before["test"]["exact_match"]  # the shuffle reached the test metrics
    for key in ("threshold_at_p90", "threshold_at_p95", "confidence_signal"):
        assert after["test"][key] == before["test"][key]
    assert after["val"] == before["val"]


def test_predictions_of_other_rows_or_codes_are_refused():
    rows = _rows(4, 1)
    preds = _system(rows, 2)
    check_rows(preds, rows, "p.jsonl", "zeroshot@x")
    with pytest.raises(ScoreError, match=r"does not cover the split's rows .* run `dvc repro zeroshot@x`"):
        check_rows(preds[:3], rows, "p.jsonl", "zeroshot@x")
    with pytest.raises(ScoreError, match="row r1 has gold code"):
        check_rows([*preds[:1], {**preds[1], "gold": "J069"}, *preds[2:]], rows, "p.jsonl", "zeroshot@x")


@pytest.mark.parametrize("change", ["id", "code", "input"])
def test_split_fingerprints_differ_when_an_id_a_code_or_an_input_differs(change):
    rows = _rows(5, 1)
    other = [dict(r) for r in rows]
    other[2][change] = other[2][change] + "X"
    assert metrics.split_fingerprint(rows) != metrics.split_fingerprint(other)
    assert metrics.split_fingerprint(rows) == metrics.split_fingerprint([dict(r) for r in rows])


# --- the stage ---------------------------------------------------------------------------------------
def fixture_study(root, params_overrides=None) -> dict:
    """A project folder holding predictions of every system its params select (zero-shot, few-shot and one
    fine-tuned model x, the floors) on small val and test splits, as the predicting stages write them."""
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["models"]["x"] = {"hub_id": "org/x", "dtype": "auto", "load_in_4bit": False}
    params["base_models"] = ["x"]
    params["training"], params["systems"]["llm"] = tables_for(zeroshot=["x"], finetune=["x"])
    params.update(params_overrides or {})
    params["datacard"]["tokenizer"] = "x"
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    rows = {"val": _rows(30, 11), "test": _rows(30, 12)}
    for split, r in rows.items():
        write_jsonl(root / f"data/processed/{split}.jsonl", r)
    for n, s in enumerate(systems.selected(params)):
        for split in systems.SPLITS:
            write_jsonl(root / s.predictions(split), _system(rows[split], 20 + 2 * n + (split == "test")))
        write_json(root / s.run_record, {**RECORD, "system": s.id, "prompt": s.prompt, "device": "cpu",
                                         **({"seeds": [42]} if s.fine_tuned else {})})
    return params


def test_the_stage_scores_exactly_the_selected_systems(tmp_path):
    fixture_study(tmp_path)
    write_jsonl(tmp_path / "predictions/val/shortlist-x.jsonl", [])  # a system the params do not select
    out = run_stage(tmp_path, "score", "--data", "data/processed")
    written = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "metrics").rglob("*.json"))
    ids = ["fewshot-x", "knn-tfidf", "lora-x", "tfidf-logreg", "zeroshot-x"]
    assert written == sorted([f"metrics/eval/{i}.json" for i in ids] + [f"metrics/val/{i}.json" for i in ids])
    assert "lora-x" in out and read_json(tmp_path / "metrics/val/lora-x.json")["split"] == "val"
    knn = read_jsonl(tmp_path / "predictions/knn-tfidf.jsonl")
    assert read_json(tmp_path / "metrics/eval/knn-tfidf.json")["signal_aurc_val"]["retriever_agreement"] is not None
    assert all(p["pred"] for p in knn)


def test_a_missing_prediction_file_names_the_stage_to_run(tmp_path):
    fixture_study(tmp_path)
    (tmp_path / "predictions/val/fewshot-x.jsonl").unlink()
    out = run_stage(tmp_path, "score", expect=1)
    assert "predictions/val/fewshot-x.jsonl is missing" in out and "dvc repro predict@fewshot-x" in out
    assert not (tmp_path / "metrics").exists()


def test_prices_and_targets_rerun_no_predicting_stage():
    """deploy is a param of stage score (and the report) only: a price or a target reruns no GPU stage."""
    from icdstudy.params import yaml_load

    stages = yaml_load((REPO / "dvc.yaml").read_text())["stages"]
    readers = sorted(name for name, st in stages.items()
                     if any((p if isinstance(p, str) else json.dumps(p)).startswith("deploy") for p in st.get("params", [])))
    assert readers == ["report", "score"]
