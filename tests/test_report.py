"""The report stage on fixture metrics: content, plots, and no torch import."""
import json
import subprocess
import sys

from icdstudy import metrics
from tests.conftest import REPO

CODES = ["E119", "I10", "J069", "M25562", "S83512A", "Z23"]


def _write_system(root, system, hit_rate, ranked=True, latency=0.5, mem=1000.0, params=1e8):
    rows = []
    for i in range(60):
        gold = CODES[i % len(CODES)]
        right = (i * 7919 % 100) < hit_rate * 100
        pred = gold if right else CODES[(i + 1) % len(CODES)]
        cands = [{"code": pred, "score": 0.6}, {"code": gold if not right else "I10", "score": 0.2}] if ranked else None
        rows.append({"id": f"t{i}", "gold": gold, "raw": pred, "pred": pred, "valid": True, "candidates": cands,
                     "confidence": 0.6 if ranked else None, "latency_s": latency, "input_truncated": False})
    (root / "predictions").mkdir(exist_ok=True)
    (root / "predictions" / f"{system}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = {**metrics.quality(rows), **metrics.efficiency(rows), "params_total": params, "peak_mem_mb": mem, "device": "cpu"}
    (root / "metrics" / "eval").mkdir(parents=True, exist_ok=True)
    (root / "metrics" / "eval" / f"{system}.json").write_text(json.dumps(m))


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
    code = ("import runpy, sys; sys.argv = ['report', '--root', sys.argv[1], '--out', sys.argv[1] + '/reports/report.md', "
            "'--plots', sys.argv[1] + '/plots', '--params', sys.argv[2], '--systems', sys.argv[1] + '/systems.json']\n"
            "try:\n    runpy.run_path(sys.argv[0] if False else 'stages/report.py', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'the report stage imported torch'\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(REPO / "params.yaml")], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "reports" / "report.md").read_text()
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
                    "chapter_accuracy.png", "reliability.png", "training_curves.png"]
    assert all((tmp_path / "plots" / p).stat().st_size > 10_000 for p in pngs)
    assert "](../plots/accuracy_by_system.png)" in report
