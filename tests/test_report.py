"""The report stage on fixture metrics: content, plots, and no torch import."""
import json
import subprocess
import sys

from icdstudy import metrics
from tests.conftest import REPO

CODES = ["E119", "I10", "J069", "M25562", "S83512A", "Z23"]


def _write_system(root, system, hit_rate, ranked=True, latency=0.5, mem=1000.0, params=1e8, path=None, mix=7919,
                  extra=None):
    rows = []
    for i in range(60):
        gold = CODES[i % len(CODES)]
        right = (i * mix % 100) < hit_rate * 100
        pred = gold if right else CODES[(i + 1) % len(CODES)]
        cands = [{"code": pred, "score": 0.6}, {"code": gold if not right else "I10", "score": 0.2}] if ranked else None
        rows.append({"id": f"t{i}", "gold": gold, "raw": pred, "pred": pred, "valid": True, "candidates": cands,
                     "confidence": 0.6 if ranked else None, "latency_s": latency, "input_truncated": False})
    out = root / (path or f"predictions/{system}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = {**metrics.quality(rows), **metrics.efficiency(rows), "params_total": params, "peak_mem_mb": mem, "device": "cpu",
         **(extra or {})}
    if path:
        return m
    (root / "metrics" / "eval").mkdir(parents=True, exist_ok=True)
    (root / "metrics" / "eval" / f"{system}.json").write_text(json.dumps(m))


def _run_report(tmp_path):
    code = ("import runpy, sys; sys.argv = ['report', '--root', sys.argv[1], '--out', sys.argv[1] + '/reports/report.md', "
            "'--plots', sys.argv[1] + '/plots', '--params', sys.argv[2], '--systems', sys.argv[1] + '/systems.json']\n"
            "try:\n    runpy.run_path('stages/report.py', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'the report stage imported torch'\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(REPO / "params.yaml")], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return (tmp_path / "reports" / "report.md").read_text()


def test_verdicts_cover_fewshot_and_floors_and_say_in_how_many_seeds_they_hold(tmp_path):
    from icdstudy.metrics import seed_summary

    seed43 = _write_system(tmp_path, "lora-qwen25-3b", 0.3, path="predictions/seeds/lora-qwen25-3b/seed-43.jsonl", mix=31)
    first = _write_system(tmp_path, "lora-qwen25-3b", 0.8, path="predictions/lora-qwen25-3b.jsonl")
    _write_system(tmp_path, "lora-qwen25-3b", 0.8, extra={"seeds": seed_summary({42: first, 43: seed43})})
    _write_system(tmp_path, "zeroshot-llama31-8b", 0.2, mix=13)
    _write_system(tmp_path, "fewshot-llama31-8b", 0.5, mix=17, extra={"few_shot": 3, "few_shot_strategy": "nearest"})
    _write_system(tmp_path, "knn-tfidf", 0.45, mix=23)
    (tmp_path / "metrics" / "train").mkdir()
    (tmp_path / "metrics" / "data.json").write_text(json.dumps(
        {"rows_in": 60, "rows_out": 60, "dropped": {}, "n_codes": 6, "train": 30, "val": 0, "test": 60,
         "code_mentions_before": 0, "code_mentions_after": 0, "input": "dialogue"}))
    report = _run_report(tmp_path)
    answer = report.split("## All systems")[0]
    lines = [line for line in answer.splitlines() if line.startswith("- **")]
    assert [line.split("`")[3] for line in lines] == ["zeroshot-llama31-8b", "fewshot-llama31-8b", "knn-tfidf"]
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
    _write_system(tmp_path, "tfidf-logreg", 0.5, latency=0.001, mem=400, params=5e5)
    (tmp_path / "metrics" / "train").mkdir()
    (tmp_path / "metrics" / "train" / "qwen25-3b.json").write_text(json.dumps(
        {"train_loss": 0.9, "eval_loss": 0.3, "steps": 100, "epochs": 3.0, "trainable_params": 1000,
         "train_tokens_per_s": 5000.0, "peak_mem_mb": 9000, "wall_s": 600}))
    live = tmp_path / "dvclive" / "qwen25-3b" / "plots" / "metrics"
    (live / "eval").mkdir(parents=True)
    (live / "epoch.tsv").write_text("timestamp\tstep\tepoch\n0\t0\t0.5\n0\t1\t1.0\n0\t2\t1.5\n")
    (live / "loss.tsv").write_text("timestamp\tstep\tloss\n0\t0\t2.0\n0\t2\t1.0\n")
    (live / "eval" / "loss.tsv").write_text("timestamp\tstep\tloss\n0\t1\t1.5\n")
    (tmp_path / "metrics" / "data.json").write_text(json.dumps(
        {"rows_in": 100, "rows_out": 90, "dropped": {"duplicate_input": 10}, "n_codes": 6, "train": 30, "val": 0,
         "test": 60, "train_only_codes": 0, "code_mentions_before": 5, "code_mentions_after": 0, "input": "dialogue"}))
    report = _run_report(tmp_path)
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
        {**metrics.quality(rows), **metrics.efficiency(rows), "params_total": 1e6, "peak_mem_mb": 10, "device": "cpu"}))
    (tmp_path / "metrics" / "data.json").write_text(json.dumps(
        {"rows_in": 7, "rows_out": 7, "dropped": {}, "n_codes": 6, "train": 7, "val": 0, "test": 7,
         "code_mentions_before": 0, "code_mentions_after": 0, "input": "dialogue"}))
    test = tmp_path / "data" / "processed" / "test.jsonl"
    test.parent.mkdir(parents=True)
    test.write_text("".join(json.dumps({"id": r["id"], "code": r["gold"], "input": f"Encounter {r['id']}: | left knee "
                                        + "pain " * 60}) + "\n" for r in rows))
    report = _run_report(tmp_path)
    section = report.split("## Where the errors land")[1]
    assert "| lora-tiny | 1 | 2 (33%) | 2 (33%) | 1 (17%) | 1 (17%) |" in section
    assert "| right category, wrong code | M25.561 Pain in right knee | M25.562 Pain in left knee | Encounter t2: / left knee" in section
    assert "| wrong chapter | J45.20 " in section and " …" in section  # input excerpts are cut
    assert (tmp_path / "plots" / "error_breakdown.png").stat().st_size > 10_000
