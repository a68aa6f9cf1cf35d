"""Stage `score`: both splits scored by one code path with the same keys, the deployment view (coverage at a
target precision, thresholds certified on calibration only, risk-coverage area, cost with review), and the checks that keep
predictions of other data out."""
import json
import math
import random

import pytest

from icdstudy.analysis import thresholds
from icdstudy import systems
from icdstudy.analysis import metrics
from icdstudy.core.io import read_json, read_jsonl, write_json, write_jsonl
from icdstudy.analysis.scoring import ScoreError, check_rows, score_system
from tests.conftest import REPO
from tests.stage_project import system_for, tables_for
from tests.stage_project import run_stage

DEPLOY = {"target_precision": [0.9, 0.95], "usd_per_hour": 3.6, "cpu_usd_per_hour": 0.36, "price_source": "test",
          "delta": 0.1, "review_usd_per_chart": 2.0}
NO_VOTES = {"val": {}, "calibration": {}, "test": {}}


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
def test_a_certified_threshold_carries_an_exact_binomial_guarantee():
    from scipy.stats import binom

    # 45 right of 45 certify 95% at delta 0.1 (0.95 ** 45 = 0.099); 44 of 44 do not (0.105)
    assert thresholds.error_free_rows_needed(0.95, 0.1) == 45 and thresholds.error_free_rows_needed(0.90, 0.1) == 22
    sure = thresholds.certify([0.9] * 45 + [0.2] * 10, [True] * 45 + [False] * 10, 0.95, 0.1)
    assert (sure["threshold"], sure["accepted"], sure["errors"]) == (0.9, 45, 0)
    assert sure["p_value"] == pytest.approx(binom.cdf(0, 45, 0.05)) and sure["p_value"] <= 0.1
    short = thresholds.certify([0.9] * 44 + [0.2] * 11, [True] * 44 + [False] * 11, 0.95, 0.1)
    assert short["threshold"] is None and "95% precision" in short["reason"]
    # 42 calibration rows, all right, can never certify 95%: the reason names the rows it would take
    few = thresholds.certify([0.9] * 42, [True] * 42, 0.95, 0.1)
    assert few["threshold"] is None and "at least 45 accepted rows" in few["reason"] and few["error_free_rows_needed"] == 45


def test_certification_keeps_the_lowest_threshold_that_holds_from_the_top_down():
    from scipy.stats import binom

    rng = random.Random(3)
    conf = [round(rng.random(), 4) for _ in range(400)]
    right = [rng.random() < 0.4 + 0.6 * c for c in conf]  # surer rows are right more often
    got = thresholds.certify(conf, right, 0.9, 0.1)
    assert got["threshold"] is not None and got["calibration_rows"] == 400
    coded = [c >= got["threshold"] for c in conf]
    accepted, errors = sum(coded), sum(k and not r for k, r in zip(coded, right))
    assert (got["accepted"], got["errors"]) == (accepted, errors)
    assert binom.cdf(errors, accepted, 0.1) == pytest.approx(got["p_value"]) and got["p_value"] <= 0.1
    # every higher threshold (tested before it, in the fixed sequence) certifies too
    for t in sorted({c for c in conf if c > got["threshold"] and sum(x >= c for x in conf) >= 22}):
        k = [c >= t for c in conf]
        assert binom.cdf(sum(a and not r for a, r in zip(k, right)), sum(k), 0.1) <= 0.1


def test_rows_at_just_under_and_just_over_a_float_threshold_are_routed_alike_everywhere(tmp_path):
    """One threshold: score's coverage, the report's coded rows and predict's route apply the stored value with the
    same comparison, also for a threshold made by float arithmetic (0.3 - 0.1 = 0.19999999999999998)."""
    from icdstudy.core.io import write_json
    from icdstudy.predict import route, routing
    from icdstudy.systems import System

    made = 0.3 - 0.1
    conf = [made] * 30 + [0.2] * 5 + [made - 1e-12, made + 1e-12, 0.1]
    right = [True] * 38
    cert = thresholds.certify(conf, right, 0.9, 0.1)
    assert cert["threshold"] == 0.1  # everything right: the lowest tested threshold certifies
    threshold = made
    write_json(tmp_path / "s.json", {"confidence_signal": "top1", "threshold_at_p90": threshold, "precision_at_p90": 1.0,
                                     "coverage_at_p90": 1.0})
    rule = routing(System("s", model="m", prompt="plain"), tmp_path, 0.9)
    assert rule["threshold"] == threshold  # stored and read back exactly, not rounded
    rows = [{"id": f"r{i}", "pred": "E119", "gold": "E119", "confidence": c, "candidates": [{"code": "E119", "score": c}]}
            for i, c in enumerate(conf)]
    flags = thresholds.coded(rows, {}, "top1", threshold)
    routes = [route(r, rule, None) == "code" for r in rows]
    assert flags == routes == [c >= threshold for c in conf]
    assert flags[30:35] == [True] * 5  # 0.2 >= 0.19999999999999998
    assert flags[35:] == [False, True, False]  # just under, just over, far under
    assert thresholds.at_threshold(conf, right, threshold)["coded"] == sum(flags)


def test_the_cost_with_review_counts_every_encounter_not_coded():
    assert thresholds.with_review(0.5, 0.25, 2.0) == {"usd_per_1k_with_review": 1500.5, "review_saving_usd_per_1k": 499.5}
    assert thresholds.with_review(0.5, None, 2.0)["usd_per_1k_with_review"] == 2000.5  # nothing certified: all reviewed
    assert thresholds.usd_per_1k(1000.0, 0.0816) == pytest.approx(2.27e-05)  # a floor's cost is measured, never 0


def test_rows_of_equal_confidence_are_coded_together():
    # four rows at 0.8 (three right), one at 0.9 (right): no threshold can code some of the 0.8 rows alone
    curve = thresholds.risk_coverage([0.8, 0.9, 0.8, 0.8, 0.8], [True, True, False, True, True])
    assert curve == [(0.9, 0.2, 0.0), (0.8, 1.0, 0.2)]


def test_aurc_on_hand_built_curves():
    assert thresholds.aurc([0.9, 0.8, 0.7, 0.6], [True, True, False, False]) == pytest.approx((0 + 0 + 1 / 3 + 2 / 4) / 4, abs=1e-4)
    assert thresholds.aurc([0.6, 0.7, 0.8, 0.9], [True, True, False, False]) == pytest.approx((1 + 1 + 2 / 3 + 2 / 4) / 4, abs=1e-4)
    assert thresholds.aurc([0.5] * 4, [True, False, True, False]) == pytest.approx(0.5)  # one group: its error rate


def test_coverage_and_precision_at_a_threshold_with_wilson_intervals():
    at = thresholds.at_threshold([0.9, 0.8, 0.7, 0.6], [True, True, False, True], 0.75)
    assert (at["coverage"], at["precision"], at["coded"]) == (0.5, 1.0, 2)
    lo, hi = at["precision_ci95"]
    assert lo == pytest.approx(0.3424, abs=1e-4) and hi == 1.0  # Wilson interval of 2 of 2
    assert thresholds.at_threshold([0.9], [True], None)["coverage"] is None


def test_cost_per_thousand_encounters():
    assert thresholds.usd_per_1k(2.0, 3.6) == pytest.approx(0.5)  # 500 s per 1,000 at $3.60/h
    assert thresholds.usd_per_1k(None, 3.6) is None
    assert thresholds.price("cuda", DEPLOY) == 3.6 and thresholds.price("cpu", DEPLOY) == 0.36


def test_the_signal_with_the_smallest_validation_area_is_chosen():
    # top-1 probability ranks these rows backwards; the margin over the second ranks them right
    val = [pred(0, "E119", True, 0.5, "Z23"), pred(1, "E119", True, 0.55, "Z23"), pred(2, "I10", False, 0.6, "Z23"),
           pred(3, "I10", False, 0.65, "Z23")]
    val[0]["candidates"][1]["score"], val[1]["candidates"][1]["score"] = 0.0, 0.05
    signal, areas = thresholds.choose_signal(val, {})
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
    rows = {"val": _rows(40, 1), "calibration": _rows(40, 13), "test": _rows(40, 2)}
    preds = {split: _system(rows[split], seed) for split, seed in (("val", 3), ("calibration", 14), ("test", 4))}
    out = score_system(preds, rows, RECORD, NO_VOTES, DEPLOY)
    assert set(out) == {"val", "test"}  # calibration rows certify thresholds and are scored for nothing else
    fingerprints = {out["val"]["split_fingerprint"], out["test"]["split_fingerprint"], out["test"]["calibration_fingerprint"]}
    assert len(fingerprints) == 3 and out["val"]["calibration_fingerprint"] == out["test"]["calibration_fingerprint"]
    for k in ("p90", "p95"):
        cert = out["test"][f"certified_at_{k}"]
        assert cert["delta"] == 0.1 and cert["calibration_rows"] == 40
    assert out["test"]["usd_per_1k_with_review"] > out["test"]["usd_per_1k"] > 0
    fitted = {f"val_fitted_{x}_at_{k}" for x in ("threshold", "coverage") for k in ("p90", "p95")}
    assert set(out["val"]) == set(out["test"]) | fitted  # validation adds what choices rank by (fitted on its rows)
    assert (out["val"]["split"], out["test"]["split"]) == ("val", "test")
    assert out["val"]["split_fingerprint"] != out["test"]["split_fingerprint"]
    assert out["val"]["exact_match"] == metrics.quality(preds["val"])["exact_match"]
    for k in ("p90", "p95"):
        assert out["val"][f"threshold_at_{k}"] == out["test"][f"threshold_at_{k}"]  # certified once, on calibration
        for key in (f"coverage_at_{k}", f"precision_at_{k}", "usd_per_1k", "aurc"):
            assert key in out["test"]
    assert out["test"]["inputs_truncated"] == 2 and out["test"]["usd_per_hour"] == 3.6
    assert out["test"]["usd_per_1k"] == pytest.approx(1000 * 0.5 / 3600 * 3.6, rel=1e-3)


def test_shuffling_the_test_gold_codes_moves_no_threshold():
    rows = {"val": _rows(60, 5), "calibration": _rows(60, 15), "test": _rows(60, 6)}
    preds = {split: _system(rows[split], seed) for split, seed in (("val", 7), ("calibration", 16), ("test", 8))}
    before = score_system(preds, rows, RECORD, NO_VOTES, DEPLOY)
    golds = [r["code"] for r in rows["test"]]
    random.Random(9).shuffle(golds)
    rows2 = {**rows, "test": [{**r, "code": g} for r, g in zip(rows["test"], golds)]}
    preds2 = {**preds, "test": [{**p, "gold": g} for p, g in zip(preds["test"], golds)]}
    after = score_system(preds2, rows2, RECORD, NO_VOTES, DEPLOY)
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
    rows = {"val": _rows(30, 11), "calibration": _rows(30, 17), "test": _rows(30, 12)}
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
    assert "test" not in out  # re-scoring prints no test number: the test split is the report's to read
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
    from icdstudy.core.params import yaml_load

    stages = yaml_load((REPO / "dvc.yaml").read_text())["stages"]
    readers = sorted(name for name, st in stages.items()
                     if any((p if isinstance(p, str) else json.dumps(p)).startswith("deploy") for p in st.get("params", [])))
    assert readers == ["report", "score"]


def _mapie_rounds(accepted: int, errors: int) -> bool:
    """Whether MAPIE's error count, ceil(n x (1 - precision)) in floating point, is not the true count."""
    return math.ceil(accepted * (1 - (accepted - errors) / accepted)) != errors


def test_certification_agrees_with_mapie_in_both_directions_where_its_rounding_does_not_arise():
    """MAPIE's BinaryClassificationController (precision, fixed_sequence) runs the same Learn-then-Test over the same
    fixed sequence; its p-value is never below the exact binomial tail (it counts ceil(n x error rate) errors, which
    float rounding can lift by one). So up to the first threshold where that rounding arises both must stop at the
    same test, keeping the same threshold (an anti-conservative certify would stop later, a timid one earlier);
    after it MAPIE may stop earlier, never later. MAPIE walks the sequence in the direction its empirical risk
    mostly rises; draws where it would walk from the lowest threshold up (another procedure) are left out."""
    import warnings

    import numpy as np
    from mapie.risk_control import BinaryClassificationController
    from mapie.risk_control.methods import _check_risk_monotonicity

    rng = np.random.default_rng(11)
    decided = with_errors = failures = 0
    for trial in range(300):
        n, target = int(rng.integers(40, 400)), float(rng.choice([0.8, 0.9, 0.95]))
        conf = np.round(rng.random(n), 2)  # ties included
        right = rng.random(n) < np.clip(rng.uniform(0.4, 0.8) + rng.uniform(0.2, 0.6) * conf, 0, 1)
        ours = thresholds.certify(conf, right, target, 0.1)
        need = thresholds.error_free_rows_needed(target, 0.1)
        grid = np.unique(np.sort(conf)[::-1][need - 1:])[::-1]  # certify's fixed sequence, highest first
        counts = [(int((conf >= t).sum()), int(((conf >= t) & ~right).sum())) for t in grid]
        risk = np.array([1 - (a - e) / a for a, e in counts])
        if grid.size < 2:  # MAPIE needs a sequence
            continue
        direction = _check_risk_monotonicity(risk)
        if direction == "decreasing" or (direction == "none" and np.mean(np.diff(risk)) <= 0):
            continue
        mapie = BinaryClassificationController(lambda x: np.column_stack([1 - x, x]), risk="precision",
                                               target_level=target, confidence_level=0.9, list_predict_params=grid,
                                               fwer_method="fixed_sequence")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mapie.calibrate(conf, right.astype(int))
        stop_of = lambda t: 0 if t is None else int(np.flatnonzero(grid == t)[0]) + 1  # noqa: E731  tests passed
        ours_stop, mapie_stop = stop_of(ours["threshold"]), stop_of(mapie.best_predict_param)
        rounding = next((i for i, (a, e) in enumerate(counts) if _mapie_rounds(a, e)), len(grid))
        # the same decision at every test before the first rounding, in both directions; MAPIE never stops later
        assert min(ours_stop, rounding) <= mapie_stop <= ours_stop, (trial, ours_stop, mapie_stop, rounding)
        same = min(ours_stop + 1, rounding, len(grid))  # tests both decided alike (the failed one included)
        decided += same
        with_errors += sum(e > 0 for _, e in counts[:same])
        failures += ours_stop < min(rounding, len(grid))
    assert decided >= 3000 and with_errors >= 200 and failures >= 80, (decided, with_errors, failures)


def test_the_next_lower_threshold_fails_whenever_the_sequence_stopped():
    from scipy.stats import binom

    rng = random.Random(8)
    stopped = 0
    for _ in range(200):
        conf = [round(rng.random(), 2) for _ in range(rng.randint(30, 300))]
        right = [rng.random() < 0.5 + 0.5 * c for c in conf]
        got = thresholds.certify(conf, right, 0.9, 0.1)
        lower = sorted({c for c in conf if (got["threshold"] is None or c < got["threshold"])
                        and sum(x >= c for x in conf) >= got["error_free_rows_needed"]}, reverse=True)
        if got["stopped_at"] is None:  # every threshold held: there is no lower one to test
            assert not lower
            continue
        stopped += 1
        nxt = got["stopped_at"]
        assert nxt["threshold"] == lower[0]  # the test right after the kept threshold (or the first one, on a refusal)
        k = [c >= nxt["threshold"] for c in conf]
        errors = sum(a and not r for a, r in zip(k, right))
        assert (nxt["accepted"], nxt["errors"]) == (sum(k), errors)
        assert nxt["p_value"] == pytest.approx(binom.cdf(errors, sum(k), 0.1)) and nxt["p_value"] > 0.1
        if got["threshold"] is None:  # a refusal stores the failed test's counts, never nulls
            assert (got["accepted"], got["errors"], got["p_value"]) == (nxt["accepted"], nxt["errors"], nxt["p_value"])
    assert stopped >= 100
