"""The report on fixture predictions scored by the real score stage: the answer in a coding team's terms, led by
systems chosen on validation, Holm-corrected paired tests, exactly the selected systems, errors, no torch."""
import json
import random
import subprocess
import sys

import pytest
import yaml

from icdstudy.core.io import write_json, write_jsonl
from tests.conftest import REPO
from tests.stage_project import run_stage, system_for, tables_for

CODES = ["E119", "I10", "J069", "M25562", "S83512A", "Z23"]


def _rows(split: str, n: int = 60, codes=CODES) -> list[dict]:
    return [{"id": f"{split[0]}{i}", "code": codes[i % len(codes)], "input": f"{split} encounter {i}: left knee pain"}
            for i in range(n)]


def write_system(root, system: str, val: float, test: float, seed: int = 0, latency: float = 0.5, mem: float = 1000.0,
                 params: float = 1e8, codes=CODES, seeds=None, device: str = "cpu", calibration: float | None = None):
    """Predictions of ``system`` on the three splits, right at the given rates (calibration's: validation's unless
    given); a right answer is surer than a wrong one (confidence 0.9 against 0.5), so the deployment view has
    thresholds to find."""
    s = system_for(system)
    for split, rate in (("val", val), ("calibration", val if calibration is None else calibration), ("test", test)):
        rng = random.Random(f"{system}-{split}-{seed}")
        out = []
        for r in _rows(split, codes=codes):
            right = rng.random() < rate
            p = r["code"] if right else codes[(codes.index(r["code"]) + 1) % len(codes)]
            conf = round(rng.uniform(0.8, 0.95) if right else rng.uniform(0.3, 0.85), 3)
            out.append({"id": r["id"], "gold": r["code"], "raw": p, "pred": p, "valid": True,
                        "candidates": [{"code": p, "score": conf}, {"code": "Z23", "score": round(1 - conf, 3)}],
                        "confidence": conf, "latency_s": latency, "input_truncated": False})
        write_jsonl(root / s.predictions(split), out)
    write_json(root / s.run_record, {"system": s.id, "prompt": s.prompt, "model": s.model or s.id, "params_total": params,
                                     "peak_mem_mb": mem, "device": device, "constrained": True, "top_k": 2,
                                     "few_shot": s.retrieved if s.prompt == "examples" else 0,
                                     **({"seeds": [42, *(seeds or [])]} if s.fine_tuned else {})})


def write_train(root, run: str, **extra):
    write_json(root / "metrics" / "train" / f"{run}.json", {
        "train_loss": 0.9, "eval_loss": 0.3, "steps": 100, "epochs": 3.0, "trainable_params": 1000,
        "train_tokens_per_s": 5000.0, "peak_mem_mb": 9000, "wall_s": 600, "select_by": "exact_match", "best_step": 50,
        "best_val_exact_match": 0.7, **extra})


def study(root, zeroshot=(), finetune=(), shortlist=(), finetune_shortlist=(), seeds=(42,), splits=None):
    """params.yaml selecting these systems, the splits, data.json; returns the params path."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    models = sorted(set(zeroshot) | set(finetune) | set(shortlist) | set(finetune_shortlist)) or ["smollm2-135m"]
    for m in models:
        params["models"].setdefault(m, {"hub_id": f"org/{m}", "dtype": "auto", "load_in_4bit": False})
    params["base_models"] = models
    params["training"], params["systems"]["llm"] = tables_for(zeroshot, finetune, shortlist, finetune_shortlist)
    params["datacard"]["tokenizer"] = models[0]
    params["recipe"]["seeds"] = list(seeds)
    params["deploy"]["target_precision"] = [0.90, 0.95]  # the full study's targets
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    for split in ("val", "calibration", "test"):
        write_jsonl(root / f"data/processed/{split}.jsonl", (splits or {}).get(split) or _rows(split))
    write_jsonl(root / "data/processed/train.jsonl", [{"id": f"t{i}", "code": c, "input": f"training row {i} {c}"}
                                                      for i, c in enumerate(CODES * 3)])
    write_json(root / "metrics" / "data.json", {"rows_in": 138, "rows_out": 138, "dropped": {}, "n_codes": 6, "train": 18,
                                                "val": 60, "test": 60, "code_mentions_before": 0,
                                                "code_mentions_after": 0, "input": "dialogue"})
    return path


def floors(root, **kw):
    write_system(root, "tfidf-logreg", 0.5, 0.5, latency=0.001, mem=400, params=5e5, **kw)
    write_system(root, "knn-tfidf", 0.45, 0.45, latency=0.001, mem=400, params=5e5, **kw)


def report(root, params, expect: int = 0) -> str:
    """Scores, then the report, both in this process; the report's text (or the error output)."""
    out = run_stage(root, "score", "--params", params, expect=expect if expect else 0)
    if expect and "error" in out:
        return out
    out = run_stage(root, "report", "--params", params, "--root", root, "--out", root / "reports/report.md",
                    "--plots", root / "plots", "--systems", root / "systems.json", expect=expect)
    return out if expect else (root / "reports" / "report.md").read_text()


def answer_of(text: str) -> str:
    return text.split("## Answer")[1].split("## All systems")[0]


def test_the_answer_leads_with_coverage_of_the_systems_chosen_on_validation(tmp_path):
    # a fine-tuned a (best on validation, worse on test) and b (the reverse); a large model's zero-shot (best large
    # on validation) and few-shot (better on test); the 3B models are fine-tuned, so they are not the large ones
    params = study(tmp_path, zeroshot=["big", "a"], finetune=["a", "b"])
    write_system(tmp_path, "lora-a", 0.9, 0.7)
    write_system(tmp_path, "lora-b", 0.6, 0.95)
    write_system(tmp_path, "zeroshot-big", 0.5, 0.3)
    write_system(tmp_path, "fewshot-big", 0.3, 0.6)
    write_system(tmp_path, "zeroshot-a", 0.1, 0.1)
    write_system(tmp_path, "fewshot-a", 0.2, 0.2)
    floors(tmp_path)
    write_train(tmp_path, "lora-a")
    write_train(tmp_path, "lora-b")
    text = report(tmp_path, params)
    lines = [l for l in answer_of(text).splitlines() if l.startswith("- ")]
    assert lines[0].startswith("- **At 95% precision** (certified with δ = 0.1 on 60 calibration rows): `lora-a` "
                               "(fine-tuned a) codes ")
    assert lines[1].startswith("- **At 90% precision**")
    cert = json.loads((tmp_path / "metrics/eval/zeroshot-big.json").read_text())["certified_at_p95"]
    assert (f"`zeroshot-big` (zero-shot big), the best large system, is not certified (its first test accepts "
            f"{cert['accepted']} calibration rows with {cert['errors']} errors" in lines[0])
    assert "`tfidf-logreg` (the TF-IDF baseline), the best floor," in lines[0]
    m = json.loads((tmp_path / "metrics/eval/lora-a.json").read_text())
    lo, hi = m["precision_ci_at_p95"]
    assert (f"codes {100 * m['coverage_at_p95']:.1f}% of test encounters without review (95% CI " in lines[0]
            and f"at {100 * m['precision_at_p95']:.1f}% precision on test (95% CI {100 * lo:.1f}–{100 * hi:.1f})" in lines[0])
    assert lines[2].startswith("- Against the best large prompted system: `lora-a` against `zeroshot-big`, exact match ")
    assert "at its Holm step" in lines[2] and "Holm-adjusted" in lines[2]
    assert "Coverage:" not in lines[2]  # one of the two is not certified at 95%: coverage is not compared
    assert lines[3].startswith("- Against the best floor: `lora-a` against `tfidf-logreg`")
    assert "With a coder reviewing every encounter" in lines[4] and "CPU time" in lines[4]
    assert any(l.startswith("- **Fine-tuning a**: `lora-a` against `zeroshot-a`") for l in lines)
    assert "b (`lora-b` vs" not in answer_of(text)  # no adds line without the base system
    tally = next(l for l in lines if "primary tests are significant" in l)
    assert tally.startswith("- 3 of 3 ") and "within the primary family" in tally
    assert len(lines) <= 10  # read in a minute: every other pairing is in the table
    assert "## Paired comparisons" in text and "| exploratory | lora-b | fewshot-big |" in text


def test_every_paired_test_is_corrected_by_holm_and_significant_means_adjusted(tmp_path):
    from icdstudy.analysis.stats import holm

    params = study(tmp_path, zeroshot=["big"], finetune=["a"])
    write_system(tmp_path, "lora-a", 0.8, 0.8)
    write_system(tmp_path, "zeroshot-big", 0.2, 0.62)
    write_system(tmp_path, "fewshot-big", 0.3, 0.3)
    floors(tmp_path)
    write_train(tmp_path, "lora-a")
    text = report(tmp_path, params)
    table = text.split("## Paired comparisons")[1].split("\n\n")[1].splitlines()[2:]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in table]
    assert {c[0] for c in cells} == {"primary", "exploratory"}
    # Holm within each family, never across: the primary family is the primary pairs' exact-match tests; every
    # coverage test is exploratory (it exists only where calibration certified both systems)
    families = {"primary": ([float(c[6]) for c in cells if c[0] == "primary"],
                            [float(c[7].strip("*")) for c in cells if c[0] == "primary"]),
                "exploratory": ([float(c[6]) for c in cells if c[0] == "exploratory"] + [float(c[10]) for c in cells if c[10]],
                                [float(c[7].strip("*")) for c in cells if c[0] == "exploratory"]
                                + [float(c[11].strip("*")) for c in cells if c[11]])}
    for raw, adjusted in families.values():
        assert adjusted == pytest.approx([float(f"{p:.2g}") for p in holm(raw)], rel=0.1)
        assert all(a >= r for a, r in zip(adjusted, raw))
    for c in cells:  # bold where, and only where, the adjusted p is below 0.05
        assert c[4].startswith("**") == (float(c[7].strip("*")) < 0.05)
    assert "Holm p is adjusted within each family" in text


def test_the_primary_family_is_fixed_before_any_calibration_draw():
    """Coverage tests exist only where calibration certified both systems: they join the exploratory family, so the
    primary family (and every adjusted p and CI in it) is the declared pairs' exact-match tests, whatever certifies."""
    from icdstudy.analysis.comparisons import adjust, paired

    def pair(with_coverage):
        c = paired([True] * 30 + [False] * 10, [True] * 20 + [False] * 20)
        c["coverage"] = paired([True] * 25 + [False] * 15, [False] * 40) if with_coverage else None
        return c

    for certified in (True, False):
        comparisons = {("a", "b"): pair(certified), ("a", "c"): pair(False)}
        adjust(comparisons, {("a", "b")})
        assert comparisons[("a", "b")]["family"] == "primary"
        assert comparisons[("a", "b")]["p_holm"] == pytest.approx(comparisons[("a", "b")]["mcnemar"]["p_value"])  # alone
        assert comparisons[("a", "b")]["ci_level"] == pytest.approx(0.95)
        if certified:  # exploratory: ("a", "c")'s exact test and ("a", "b")'s coverage test, two tests, Holm over both
            cov = comparisons[("a", "b")]["coverage"]
            assert {cov["ci_level"], comparisons[("a", "c")]["ci_level"]} == {1 - 0.05 / 2, 0.95}


def test_holm_on_a_hand_built_family():
    from icdstudy.analysis.stats import holm

    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5] and holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])


def _selected_study(tmp_path):
    """A selected study (one fine-tuned, one zero-shot model) with the files of a finished earlier demo beside it:
    other systems, on another data set whose rows have the same ids."""
    params = study(tmp_path, zeroshot=["llama31-8b"], finetune=["qwen25-3b"])
    write_system(tmp_path, "lora-qwen25-3b", 0.7, 0.7)
    for s in ("zeroshot-llama31-8b", "fewshot-llama31-8b"):
        write_system(tmp_path, s, 0.4, 0.4)
    floors(tmp_path)
    for s in ("zeroshot-smollm2-135m", "fewshot-smollm2-135m", "lora-smollm2-135m"):
        write_system(tmp_path, s, 0.9, 0.9, codes=["J4520", "N1831", "M25561"])
    for run in ("lora-qwen25-3b", "lora-smollm2-135m"):
        write_train(tmp_path, run)
    return params


def test_the_report_covers_exactly_the_systems_the_params_select(tmp_path):
    text = report(tmp_path, _selected_study(tmp_path))
    assert "smollm2" not in text  # the earlier demo's files lie in the same folders
    table = text.split("## All systems")[1].split("\n\n")[1]
    expected = ["lora-qwen25-3b", "zeroshot-llama31-8b", "fewshot-llama31-8b", "tfidf-logreg", "knn-tfidf"]
    assert [line.split(" | ")[0][2:] for line in table.splitlines()[2:]] == expected
    assert sorted(r["system"] for r in json.loads((tmp_path / "systems.json").read_text())) == sorted(expected)
    assert "- Every system was scored on the same test rows (split fingerprint `" in text
    assert sorted(p.name for p in (tmp_path / "plots").glob("*.png")) == [
        "accuracy_by_system.png", "accuracy_vs_latency.png", "accuracy_vs_params.png", "chapter_accuracy.png",
        "error_breakdown.png", "reliability.png", "risk_coverage.png"]
    assert "](../plots/risk_coverage.png)" in text and "## Coded without review" in text
    assert "## Chosen on validation" in text and "| lora-qwen25-3b | exact_match | 50 | 100 | 70.0 | 0.3 |" in text


def test_a_selected_system_without_its_scores_names_the_stage_to_run(tmp_path):
    params = _selected_study(tmp_path)
    run_stage(tmp_path, "score", "--params", params)
    (tmp_path / "predictions" / "fewshot-llama31-8b.jsonl").unlink()
    out = run_stage(tmp_path, "report", "--params", params, "--root", tmp_path, "--out", tmp_path / "r.md", expect=1)
    assert "predictions/fewshot-llama31-8b.jsonl is missing" in out and "dvc repro predict@fewshot-llama31-8b" in out
    (tmp_path / "metrics/val/lora-qwen25-3b.json").unlink()
    out = run_stage(tmp_path, "report", "--params", params, "--root", tmp_path, "--out", tmp_path / "r.md", expect=1)
    assert "metrics/val/lora-qwen25-3b.json is missing" in out and "dvc repro score" in out
    assert not (tmp_path / "r.md").exists()


def test_systems_scored_on_different_splits_are_never_paired(tmp_path):
    params = _selected_study(tmp_path)
    run_stage(tmp_path, "score", "--params", params)
    # zero-shot llama's metrics recorded on another data set (another fingerprint)
    path = tmp_path / "metrics/eval/zeroshot-llama31-8b.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "split_fingerprint": "other-split"}))
    run_stage(tmp_path, "report", "--params", params, "--root", tmp_path, "--out", tmp_path / "r.md",
              "--plots", tmp_path / "plots", "--systems", tmp_path / "s.json")
    text = (tmp_path / "r.md").read_text()
    assert "- `lora-qwen25-3b` and `zeroshot-llama31-8b` were scored on different test splits" in answer_of(text)
    assert "| lora-qwen25-3b | zeroshot-llama31-8b |" not in text  # no row in the paired table
    assert "| lora-qwen25-3b | fewshot-llama31-8b |" in text and "paired only within a split" in text


def test_a_paired_row_with_another_gold_code_is_an_error_not_a_match(tmp_path):
    params = _selected_study(tmp_path)
    run_stage(tmp_path, "score", "--params", params)
    # the same fingerprint recorded, but the predictions were made on other rows: a stale or edited file
    path = tmp_path / "predictions/zeroshot-llama31-8b.jsonl"
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    write_jsonl(path, [{**rows[0], "gold": "J4520"}, *rows[1:]])
    out = run_stage(tmp_path, "report", "--params", params, "--root", tmp_path, "--out", tmp_path / "r.md", expect=1)
    assert "test row t0 has gold code E119 in lora-qwen25-3b but J4520 in zeroshot-llama31-8b" in out


def test_seeds_say_in_how_many_the_direction_holds(tmp_path):
    params = study(tmp_path, zeroshot=["big"], finetune=["q"], seeds=[42, 43])
    write_system(tmp_path, "lora-q", 0.8, 0.8, seeds=[43])
    s = system_for("lora-q")
    seed43 = [dict(r, pred="I10" if r["gold"] != "I10" else "E119") for r in
              (json.loads(l) for l in (tmp_path / s.predictions("test")).read_text().splitlines())]
    write_jsonl(tmp_path / "predictions/seeds/lora-q/seed-43.jsonl", seed43)  # seed 43 gets every row wrong
    write_system(tmp_path, "zeroshot-big", 0.3, 0.3)
    write_system(tmp_path, "fewshot-big", 0.5, 0.5)
    floors(tmp_path)
    write_train(tmp_path, "lora-q")
    text = report(tmp_path, params)
    assert "## Training seeds" in text and "| lora-q | 2 | 42: " in text and "43: 0.0" in text
    row = next(l for l in text.splitlines() if "| lora-q | fewshot-big |" in l)
    assert row.rstrip(" |").endswith("1 of 2")


def test_errors_are_split_by_where_they_land_with_examples(tmp_path):
    from icdstudy.analysis.errors import error_breakdown, error_kind

    assert error_kind("E119", "E119") is None
    assert error_kind("E119", "E1165") == "right category, wrong code"  # a sibling
    assert error_kind("E119", "E109") == "right chapter, wrong category"  # type 1 for type 2
    assert error_kind("E119", "J4520") == "wrong chapter"
    assert error_kind("E119", None) == "no prediction"
    pairs = [("E119", "E119"), ("E119", "E1165"), ("M25561", "M25562"), ("E119", "E109"), ("N184", "N390"),
             ("J4520", "I480"), ("Z23", None)]
    rows = [{"id": f"t{i}", "gold": g, "pred": p, "raw": p or "", "valid": bool(p), "candidates": None, "confidence": None,
             "latency_s": 0.1, "input_truncated": False} for i, (g, p) in enumerate(pairs)]
    assert error_breakdown({"lora-x": rows})["lora-x"] == {
        "correct": 1, "right category, wrong code": 2, "right chapter, wrong category": 2, "wrong chapter": 1,
        "no prediction": 1}


def test_error_examples_show_the_fine_tuned_systems_errors_with_input_excerpts(tmp_path):
    test_rows = [{"id": f"t{i}", "code": c, "input": f"Encounter t{i}: | left knee " + "pain " * 60}
                 for i, c in enumerate(["M25561", "E119", "J4520"] * 20)]
    params = study(tmp_path, finetune=["tiny"], splits={"test": test_rows,
                                                        "calibration": _rows("calibration", codes=["M25561", "E119", "J4520"])})
    write_system(tmp_path, "lora-tiny", 0.5, 0.0, codes=["M25561", "E119", "J4520"])
    path = tmp_path / "predictions/lora-tiny.jsonl"  # every test answer a near miss: the left knee for the right
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    write_jsonl(path, [{**r, "pred": {"M25561": "M25562", "E119": "E1165", "J4520": "I480"}[r["gold"]]} for r in rows])
    floors(tmp_path, codes=["M25561", "E119", "J4520"])
    write_train(tmp_path, "lora-tiny")
    for split in ("val", "test"):  # the floors on the same rows
        for s in ("tfidf-logreg", "knn-tfidf"):
            p = tmp_path / system_for(s).predictions(split)
            write_jsonl(p, [{**r, "id": t["id"], "gold": t["code"]} for r, t in
                            zip((json.loads(l) for l in p.read_text().splitlines()),
                                test_rows if split == "test" else _rows("val", codes=["M25561", "E119", "J4520"]))])
    write_jsonl(tmp_path / "data/processed/val.jsonl", _rows("val", codes=["M25561", "E119", "J4520"]))
    text = report(tmp_path, params)
    section = text.split("## Where the errors land")[1]
    assert "| lora-tiny | 0 | 40 (67%) | 0 (0%) | 20 (33%) | 0 (0%) |" in section
    assert ("| right category, wrong code | M25.561 Pain in right knee | M25.562 Pain in left knee | Encounter t0: / left knee"
            in section)
    assert "| wrong chapter | J45.20 " in section and " …" in section  # input excerpts are cut
    assert (tmp_path / "plots" / "error_breakdown.png").stat().st_size > 10_000


def test_the_report_stage_imports_no_torch(tmp_path):
    params = _selected_study(tmp_path)
    run_stage(tmp_path, "score", "--params", params)
    code = ("import runpy, sys; sys.argv = ['report', '--root', sys.argv[1], '--out', sys.argv[1] + '/r.md', "
            "'--plots', sys.argv[1] + '/plots', '--params', sys.argv[2], '--systems', sys.argv[1] + '/s.json']\n"
            "try:\n    runpy.run_path('stages/report.py', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'the report stage imported torch'\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(params)], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def test_shuffled_calibration_gold_changes_no_choice_and_no_sentence_but_the_certified_numbers(tmp_path):
    """The calibration rows certify the thresholds of systems already chosen and nothing else: in a copy whose
    calibration gold codes are shuffled, score and report rerun and the Answer leads with the same systems, says the
    same of every comparison, and differs only where it reports what was certified."""
    import re
    import shutil

    from icdstudy.core.io import read_jsonl

    (tmp_path / "a").mkdir()
    study(tmp_path / "a", zeroshot=["big", "a"], finetune=["a", "b"])
    # lora-a leads on validation, lora-b on calibration: a choice that read calibration rows would flip to lora-b
    # here and back to lora-a once shuffled gold codes certify nothing
    for s, val, test, cal in (("lora-a", 0.92, 0.7, 0.5), ("lora-b", 0.85, 0.95, 1.0), ("zeroshot-big", 0.5, 0.3, None),
                              ("fewshot-big", 0.3, 0.6, None), ("zeroshot-a", 0.1, 0.1, None),
                              ("fewshot-a", 0.2, 0.2, None)):
        write_system(tmp_path / "a", s, val, test, calibration=cal)
    floors(tmp_path / "a")
    for run in ("lora-a", "lora-b"):
        write_train(tmp_path / "a", run)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    rows = read_jsonl(tmp_path / "b/data/processed/calibration.jsonl")
    codes = [r["code"] for r in rows]
    random.Random(1).shuffle(codes)
    gold = {r["id"]: c for r, c in zip(rows, codes)}
    write_jsonl(tmp_path / "b/data/processed/calibration.jsonl", [{**r, "code": gold[r["id"]]} for r in rows])
    for f in (tmp_path / "b/predictions/calibration").glob("*.jsonl"):
        write_jsonl(f, [{**p, "gold": gold[p["id"]]} for p in read_jsonl(f)])

    texts = {x: report(tmp_path / x, tmp_path / x / "params.yaml") for x in ("a", "b")}
    assert texts["a"] != texts["b"]  # the certificates did change
    chosen = {x: re.search(r"the systems that lead the answer \(([^)]*)\)", t).group(1) for x, t in texts.items()}
    assert chosen["a"] == chosen["b"] == "fine-tuned `lora-a`, large prompted `zeroshot-big`, floor `tfidf-logreg`"

    def sentences(text):
        """The Answer without what calibration certified: the lines of coverage at each target and of the cost
        with review, and each comparison's coverage test."""
        lines = [l for l in answer_of(text).splitlines() if l.startswith("- ")]
        named = [re.findall(r"`([^`]+)`", l) for l in lines if l.startswith(("- **At ", "- **With a coder"))]
        kept = [l.split(" Coverage (exploratory family):")[0] for l in lines
                if not l.startswith(("- **At ", "- **With a coder"))]
        return named, kept

    assert sentences(texts["a"]) == sentences(texts["b"])
