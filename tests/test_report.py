"""The report stage on fixture metrics: content, plots, and no torch import."""
import json
import subprocess
import sys

import yaml
from icdstudy import metrics
from tests.conftest import REPO

CODES = ["E119", "I10", "J069", "M25562", "S83512A", "Z23"]


def _write_system(root, system, hit_rate, ranked=True, latency=0.5, mem=1000.0, params=1e8, path=None, mix=7919,
                  extra=None, codes=CODES, split="fixture-split"):
    rows = []
    for i in range(60):
        gold = codes[i % len(codes)]
        right = (i * mix % 100) < hit_rate * 100
        pred = gold if right else CODES[(i + 1) % len(CODES)]
        cands = [{"code": pred, "score": 0.6}, {"code": gold if not right else "I10", "score": 0.2}] if ranked else None
        rows.append({"id": f"t{i}", "gold": gold, "raw": pred, "pred": pred, "valid": True, "candidates": cands,
                     "confidence": 0.6 if ranked else None, "latency_s": latency, "input_truncated": False})
    out = root / (path or f"predictions/{system}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = {**metrics.quality(rows), **metrics.efficiency(rows), "params_total": params, "peak_mem_mb": mem, "device": "cpu",
         "split_fingerprint": split, **(extra or {})}
    if path:
        return m
    (root / "metrics" / "eval").mkdir(parents=True, exist_ok=True)
    (root / "metrics" / "eval" / f"{system}.json").write_text(json.dumps(m))


def _params(tmp_path, zeroshot=(), finetune=(), shortlist=(), finetune_shortlist=(), seeds=(42,)):
    """The project's params.yaml selecting these systems (the report reads exactly those)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    models = sorted(set(zeroshot) | set(finetune) | set(shortlist) | set(finetune_shortlist)) or ["smollm2-135m"]
    for m in models:
        params["models"].setdefault(m, {"hub_id": f"org/{m}", "dtype": "auto", "load_in_4bit": False})
    params.update({"base_models": models, "zeroshot": list(zeroshot), "finetune": list(finetune),
                   "shortlist": list(shortlist), "finetune_shortlist": list(finetune_shortlist)})
    params["datacard"]["tokenizer"] = models[0]
    params["train"]["seeds"] = list(seeds)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _floors(tmp_path, **kw):
    _write_system(tmp_path, "tfidf-logreg", 0.5, latency=0.001, mem=400, params=5e5, mix=29, **kw)
    _write_system(tmp_path, "knn-tfidf", 0.45, latency=0.001, mem=400, params=5e5, mix=23, **kw)


def _data_json(tmp_path, n=60):
    (tmp_path / "metrics" / "data.json").write_text(json.dumps(
        {"rows_in": n, "rows_out": n, "dropped": {}, "n_codes": 6, "train": 30, "val": 0, "test": n,
         "code_mentions_before": 0, "code_mentions_after": 0, "input": "dialogue"}))


def _report_process(tmp_path, params):
    code = ("import runpy, sys; sys.argv = ['report', '--root', sys.argv[1], '--out', sys.argv[1] + '/reports/report.md', "
            "'--plots', sys.argv[1] + '/plots', '--params', sys.argv[2], '--systems', sys.argv[1] + '/systems.json']\n"
            "try:\n    runpy.run_path('stages/report.py', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'the report stage imported torch'\n")
    return subprocess.run([sys.executable, "-c", code, str(tmp_path), str(params)], cwd=REPO, capture_output=True, text=True)


def _run_report(tmp_path, params):
    proc = _report_process(tmp_path, params)
    assert proc.returncode == 0, proc.stderr
    return (tmp_path / "reports" / "report.md").read_text()


def test_verdicts_cover_fewshot_and_floors_and_say_in_how_many_seeds_they_hold(tmp_path):
    from icdstudy.metrics import seed_summary

    seed43 = _write_system(tmp_path, "lora-qwen25-3b", 0.3, path="predictions/seeds/lora-qwen25-3b/seed-43.jsonl", mix=31)
    first = _write_system(tmp_path, "lora-qwen25-3b", 0.8, path="predictions/lora-qwen25-3b.jsonl")
    _write_system(tmp_path, "lora-qwen25-3b", 0.8, extra={"seeds": seed_summary({42: first, 43: seed43})})
    _write_system(tmp_path, "zeroshot-llama31-8b", 0.2, mix=13)
    _write_system(tmp_path, "fewshot-llama31-8b", 0.5, mix=17, extra={"few_shot": 3, "few_shot_strategy": "nearest"})
    _floors(tmp_path)
    (tmp_path / "metrics" / "train").mkdir()
    (tmp_path / "metrics" / "train" / "qwen25-3b.json").write_text(json.dumps(
        {"train_loss": 0.9, "eval_loss": 0.3, "steps": 100, "epochs": 3.0, "trainable_params": 1000,
         "train_tokens_per_s": 5000.0, "peak_mem_mb": 9000, "wall_s": 600}))
    _data_json(tmp_path)
    report = _run_report(tmp_path, _params(tmp_path, zeroshot=["llama31-8b"], finetune=["qwen25-3b"], seeds=[42, 43]))
    answer = report.split("## All systems")[0]
    lines = [line for line in answer.splitlines() if line.startswith("- **")]
    assert [line.split("`")[3] for line in lines] == ["zeroshot-llama31-8b", "fewshot-llama31-8b", "tfidf-logreg",
                                                      "knn-tfidf"]
    lines = [lines[0], lines[1], lines[3]]
    assert "few-shot llama31-8b (3 retrieved examples)" in lines[1] and "nearest-neighbour floor" in lines[2]
    # seed 43 (30%) loses to the 50% few-shot system where seed 42 (80%) wins: 1 of 2 seeds
    assert "It holds in 1 of 2 training seeds" in lines[1], lines[1]
    assert "It holds in 2 of 2 training seeds" in lines[0], lines[0]
    assert "## Training seeds" in report and "| lora-qwen25-3b | 2 | 42: 80.0, 43: 30.0 | 55.0 |" in report
    assert "Few-shot systems: each test input follows its 3 nearest training examples" in report


def test_report_from_fixture_metrics(tmp_path):
    _write_system(tmp_path, "lora-qwen25-3b", 0.7, latency=0.2, mem=7000, params=3.1e9)
    _write_system(tmp_path, "zeroshot-llama31-8b", 0.4, ranked=False, latency=0.6, mem=6000, params=8e9)
    _write_system(tmp_path, "zeroshot-mistral-7b", 0.35, latency=0.5, mem=5000, params=7.2e9)
    _floors(tmp_path)
    for m in ("llama31-8b", "mistral-7b"):
        _write_system(tmp_path, f"fewshot-{m}", 0.5, mix=17)
    (tmp_path / "metrics" / "train").mkdir()
    (tmp_path / "metrics" / "train" / "qwen25-3b.json").write_text(json.dumps(
        {"train_loss": 0.9, "eval_loss": 0.3, "steps": 100, "epochs": 3.0, "trainable_params": 1000,
         "train_tokens_per_s": 5000.0, "peak_mem_mb": 9000, "wall_s": 600}))
    live = tmp_path / "dvclive" / "qwen25-3b" / "plots" / "metrics"
    (live / "eval").mkdir(parents=True)
    (live / "loss.tsv").write_text("timestamp\tstep\tloss\n0\t0\t2.0\n0\t2\t1.0\n")
    (live / "eval" / "loss.tsv").write_text("timestamp\tstep\tloss\n0\t1\t1.5\n")
    (tmp_path / "metrics" / "data.json").write_text(json.dumps(
        {"rows_in": 100, "rows_out": 90, "dropped": {"duplicate_input": 10}, "n_codes": 6, "train": 30, "val": 0,
         "test": 60, "train_only_codes": 0, "code_mentions_before": 5, "code_mentions_after": 0, "input": "dialogue"}))
    report = _run_report(tmp_path, _params(tmp_path, zeroshot=["llama31-8b", "mistral-7b"], finetune=["qwen25-3b"]))
    for system in ("lora-qwen25-3b", "zeroshot-llama31-8b", "zeroshot-mistral-7b", "tfidf-logreg"):
        assert f"| {system} |" in report
    answer = report.split("## All systems")[0]
    acc = {s: json.loads((tmp_path / "metrics" / "eval" / f"{s}.json").read_text())["exact_match"]
           for s in ("lora-qwen25-3b", "zeroshot-llama31-8b")}
    diff = 100 * (acc["lora-qwen25-3b"] - acc["zeroshot-llama31-8b"])
    assert diff > 10
    assert f"**Fine-tuned qwen25-3b beats zero-shot llama31-8b** by {diff:.1f} points" in answer
    assert "**Fine-tuned qwen25-3b beats zero-shot mistral-7b**" in answer
    assert "the TF-IDF baseline" in answer and "McNemar p =" in answer and "throughput" in answer
    assert "| n/a |" in report  # the unranked zero-shot system has no top-3 / ECE
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["accuracy_by_system.png", "accuracy_vs_latency.png", "accuracy_vs_params.png",
                    "chapter_accuracy.png", "error_breakdown.png", "reliability.png", "training_curves.png"]
    assert all((tmp_path / "plots" / p).stat().st_size > 10_000 for p in pngs)
    assert "](../plots/accuracy_by_system.png)" in report


def test_errors_are_split_by_where_they_land_with_examples(tmp_path):
    from icdstudy.report import error_breakdown, error_kind

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

    pred_file = tmp_path / "predictions" / "lora-tiny.jsonl"
    pred_file.parent.mkdir(parents=True)
    pred_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "metrics" / "eval").mkdir(parents=True)
    (tmp_path / "metrics" / "eval" / "lora-tiny.json").write_text(json.dumps(
        {**metrics.quality(rows), **metrics.efficiency(rows), "params_total": 1e6, "peak_mem_mb": 10, "device": "cpu",
         "split_fingerprint": "seven"}))
    for floor in ("tfidf-logreg", "knn-tfidf"):
        (tmp_path / "predictions" / f"{floor}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tmp_path / "metrics" / "eval" / f"{floor}.json").write_text(json.dumps(
            {**metrics.quality(rows), **metrics.efficiency(rows), "split_fingerprint": "seven"}))
    _data_json(tmp_path, 7)
    (tmp_path / "metrics" / "train").mkdir()
    (tmp_path / "metrics" / "train" / "tiny.json").write_text(json.dumps(
        {"train_loss": 0.9, "eval_loss": 0.3, "steps": 10, "epochs": 1.0, "trainable_params": 10,
         "train_tokens_per_s": 50.0, "peak_mem_mb": 90, "wall_s": 6}))
    test = tmp_path / "data" / "processed" / "test.jsonl"
    test.parent.mkdir(parents=True)
    test.write_text("".join(json.dumps({"id": r["id"], "code": r["gold"], "input": f"Encounter {r['id']}: | left knee "
                                        + "pain " * 60}) + "\n" for r in rows))
    report = _run_report(tmp_path, _params(tmp_path, finetune=["tiny"]))
    section = report.split("## Where the errors land")[1]
    assert "| lora-tiny | 1 | 2 (33%) | 2 (33%) | 1 (17%) | 1 (17%) |" in section
    assert "| right category, wrong code | M25.561 Pain in right knee | M25.562 Pain in left knee | Encounter t2: / left knee" in section
    assert "| wrong chapter | J45.20 " in section and " …" in section  # input excerpts are cut
    assert (tmp_path / "plots" / "error_breakdown.png").stat().st_size > 10_000


def _study(tmp_path):
    """A selected study (one fine-tuned, one zero-shot model) with the files of a finished earlier demo
    beside it: other systems, scored on another data set whose rows have the same ids."""
    _write_system(tmp_path, "lora-qwen25-3b", 0.7)
    for s in ("zeroshot-llama31-8b", "fewshot-llama31-8b"):
        _write_system(tmp_path, s, 0.4, mix=13)
    _floors(tmp_path)
    demo_codes = ["J4520", "N1831", "M25561"]
    for s in ("zeroshot-smollm2-135m", "fewshot-smollm2-135m", "lora-smollm2-135m"):
        _write_system(tmp_path, s, 0.9, codes=demo_codes, split="demo-split")
    (tmp_path / "metrics" / "train").mkdir()
    for run in ("qwen25-3b", "smollm2-135m"):
        (tmp_path / "metrics" / "train" / f"{run}.json").write_text(json.dumps(
            {"train_loss": 0.9, "eval_loss": 0.3, "steps": 100, "epochs": 3.0, "trainable_params": 1000,
             "train_tokens_per_s": 5000.0, "peak_mem_mb": 9000, "wall_s": 600}))
    _data_json(tmp_path)
    return _params(tmp_path, zeroshot=["llama31-8b"], finetune=["qwen25-3b"])


def test_the_report_covers_exactly_the_systems_the_params_select(tmp_path):
    report = _run_report(tmp_path, _study(tmp_path))
    assert "smollm2" not in report  # the earlier demo's files lie in the same folders
    table = report.split("## All systems")[1].split("\n\n")[1]
    assert [line.split(" | ")[0][2:] for line in table.splitlines()[2:]] == [
        "lora-qwen25-3b", "zeroshot-llama31-8b", "fewshot-llama31-8b", "tfidf-logreg", "knn-tfidf"]
    assert sorted(r["system"] for r in json.loads((tmp_path / "systems.json").read_text())) == sorted(
        ["lora-qwen25-3b", "zeroshot-llama31-8b", "fewshot-llama31-8b", "tfidf-logreg", "knn-tfidf"])
    assert "- Every system was scored on the same test rows (split fingerprint `fixture-split`)." in report


def test_a_selected_system_without_its_file_names_the_stage_to_run(tmp_path):
    params = _study(tmp_path)
    (tmp_path / "predictions" / "fewshot-llama31-8b.jsonl").unlink()
    proc = _report_process(tmp_path, params)
    assert proc.returncode != 0
    assert "predictions/fewshot-llama31-8b.jsonl is missing" in proc.stderr and "dvc repro fewshot@llama31-8b" in proc.stderr
    assert not (tmp_path / "reports" / "report.md").exists()


def test_systems_scored_on_different_splits_are_never_paired(tmp_path):
    params = _study(tmp_path)
    # zero-shot llama scored on another data set (the demo's codes under the same row ids)
    _write_system(tmp_path, "zeroshot-llama31-8b", 0.9, codes=["J4520", "N1831", "M25561"], split="other-split")
    report = _run_report(tmp_path, params)
    answer = report.split("## All systems")[0]
    assert ("- `lora-qwen25-3b` and `zeroshot-llama31-8b` were scored on different test splits (split fingerprints "
            "`fixture-split` and `other-split`): not compared.") in answer
    assert "beats zero-shot llama31-8b" not in report and "trails zero-shot llama31-8b" not in report
    assert "| lora-qwen25-3b | zeroshot-llama31-8b |" not in report  # no row in the paired table
    assert "| lora-qwen25-3b | fewshot-llama31-8b |" in report
    assert "paired only within a split" in report


def test_a_paired_row_with_another_gold_code_is_an_error_not_a_match(tmp_path):
    params = _study(tmp_path)
    # the same fingerprint recorded, but the predictions were made on other rows: a stale or edited file
    _write_system(tmp_path, "zeroshot-llama31-8b", 0.4, codes=["J4520", "N1831", "M25561"])
    proc = _report_process(tmp_path, params)
    assert proc.returncode != 0
    assert "test row t0 has gold code E119 in lora-qwen25-3b but J4520 in zeroshot-llama31-8b" in proc.stderr
