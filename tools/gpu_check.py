"""The GPU host check: what the full study's first run depends on, measured on this machine.

    tools/gpu_check.sh              on a CUDA machine (installs .whl/ from tools/gpu_wheels.sh first)
    tools/gpu_check.sh --cpu-smoke  the same driver at tiny sizes on CPU (CI runs it)

Parts, each timed and recorded even when another fails:
  environment  GPU, driver-visible memory, package versions, a 4-bit matmul through bitsandbytes
  tests        the tests that exercise CUDA when it is present (DVC-dependent tests skip with a reason)
  plan         `study plan full-study --measure --weights random` for train@lora-llama32-3b, train@lora-qwen25-3b,
               train@lora-shortlist-qwen25-3b (the study's tightest fit), predict@zeroshot-llama31-8b and
               predict@fewshot-mistral-7b: peak memory planned vs measured, tokens/s,
               samples/s, MFU (on CPU: scaled-down architectures against the same formulas)
  benchmarks   benchmarks/run.py (training and evaluation against the naive way) on a random-weight
               Llama-3.2-3B with its real tokenizer (on CPU: a scaled-down one, --quick), and constrained
               decoding's cost per step at the full study's shapes (48 prompts x 1,536 tokens, 5 beams)

Writes gpu_check.json and gpu_check.md into $OUT when set, else benchmarks/results/ (after every
part, atomically, so a run stopped at its time limit still leaves what it measured).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STAGES = ["train@lora-llama32-3b", "train@lora-qwen25-3b", "train@lora-shortlist-qwen25-3b", "predict@zeroshot-llama31-8b",
          "predict@fewshot-mistral-7b"]
TEST_FILES = ["tests/test_gpu_host.py", "tests/test_training.py", "tests/test_generation.py",
              "tests/test_model_families.py", "tests/test_predict.py"]
# --cpu-smoke: one quick test of each kind, so the driver's every path runs in CI in about 75 s (2 cores)
SMOKE_TESTS = "answer_ids_are or each_process or tf32 or mistral_answers or same_losses"
PACKAGES = ["torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "tokenizers",
            "huggingface-hub", "safetensors", "pydantic", "simple-icd-10-cm", "dvc"]
PARTS = ["environment", "tests", "plan", "benchmarks"]


def run(cmd: list[str], timeout: int) -> subprocess.CompletedProcess:
    print("gpu_check: $ " + " ".join(cmd), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# --- parts ---------------------------------------------------------------------------------------
def environment(args) -> dict:
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    out = {"python": platform.python_version(), "packages": versions, "cuda": torch.cuda.is_available(),
           "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=torch.cuda.get_device_name(), gpu_count=torch.cuda.device_count(),
                   gpu_mem_gb=round(props.total_memory / 2**30, 1), torch_cuda=torch.version.cuda,
                   bf16=torch.cuda.is_bf16_supported())
    import bitsandbytes as bnb

    device = "cuda" if torch.cuda.is_available() else "cpu"
    layer = bnb.nn.Linear4bit(256, 256, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    layer = layer.to(device)
    y = layer(torch.randn(4, 256, dtype=torch.bfloat16, device=device))
    out["bnb_4bit_matmul"] = f"ok on {device} ({tuple(y.shape)})"
    return out


def tests(args) -> dict:
    junit = Path(tempfile.mkdtemp()) / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", f"--junitxml={junit}", *TEST_FILES]
    if args.cpu_smoke:
        cmd += ["-k", SMOKE_TESTS]
    proc = run(cmd, timeout=args.test_timeout)
    if not junit.exists():
        raise RuntimeError(f"pytest wrote no report (exit {proc.returncode}):\n{tail(proc.stdout + proc.stderr)}")
    suite = ET.parse(junit).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    failed, skipped = [], {}
    for case in suite.iter("testcase"):
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                failed.append({"test": f"{case.get('classname')}::{case.get('name')}",
                               "message": (node.get("message") or "")[:300]})
        node = case.find("skipped")
        if node is not None:
            reason = (node.get("message") or "").split(": ", 1)[-1][:120]
            skipped[reason] = skipped.get(reason, 0) + 1
    total = int(suite.get("tests", 0))
    return {"exit_code": proc.returncode, "tests": total, "failed": len(failed), "skipped": sum(skipped.values()),
            "passed": total - len(failed) - sum(skipped.values()), "failures": failed, "skip_reasons": skipped,
            "seconds": float(suite.get("time", 0)), "ok": proc.returncode == 0}


def plan(args) -> dict:
    cmd = [sys.executable, "-m", "icdstudy.study", "plan", "full-study", "--measure", "--weights", "random", "--json",
           "--steps", "2" if args.cpu_smoke else "3"]
    for stage in STAGES:
        cmd += ["--only", stage]
    proc = run(cmd, timeout=args.plan_timeout)
    if proc.returncode not in (0, 1):  # 1 = some stage does not fit this GPU: still a result
        raise RuntimeError(f"plan --measure failed (exit {proc.returncode}):\n{tail(proc.stderr)}")
    result = json.loads(proc.stdout)
    planned = {s["stage"]: s for s in result["stages"]}
    rows = [{**m, "planned_peak_gb": planned[m["stage"]]["peak_gb"], "fits": planned[m["stage"]]["fits"]}
            for m in result["measured"]]
    return {"gpu": result["gpu"], "gpu_mem_gb": result["gpu_mem_gb"], "fits": result["fits"], "measured": rows,
            "total_est_hours": result["total_est_hours"]}


def benchmarks(args) -> dict:
    from icdstudy.planning.architectures import PUBLIC_CONFIGS
    from icdstudy.planning.measure import scaled_down
    from tests.family_models import random_model_folder

    import torch

    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    arch = PUBLIC_CONFIGS["meta-llama/Llama-3.2-3B-Instruct"]
    if args.cpu_smoke:
        arch = scaled_down(arch, hidden=256, layers=2)
    t0 = time.time()
    model = random_model_folder("llama", arch, work / "llama32-3b-random", "cuda" if torch.cuda.is_available() else "cpu")
    built = time.time() - t0
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    cmd = [sys.executable, "benchmarks/run.py", "--model", str(model), "--model-key", "llama32-3b", "--data", "demo",
           "--input", "note", "--only", "train", "eval", "constrained", "--out", str(work / "results")]
    if args.cpu_smoke:
        cmd.append("--quick")
    proc = run(cmd, timeout=args.bench_timeout)
    if proc.returncode:
        raise RuntimeError(f"benchmarks/run.py failed (exit {proc.returncode}):\n{tail(proc.stdout + proc.stderr)}")
    summary = json.loads((work / "results/summary.json").read_text())
    return {"model": f"random-weight Llama-3.2-3B architecture ({arch.layers} layers x {arch.hidden})",
            "build_s": round(built, 1), "table": (work / "results/summary.md").read_text(), "summary": summary}


# --- report --------------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    env = report["parts"].get("environment", {}).get("result", {})
    lines = [f"# GPU host check ({report['mode']})", "",
             f"{env.get('gpu') or 'CPU ' + str(env.get('cpu'))}"
             + (f", {env.get('gpu_mem_gb')} GiB" if env.get("gpu") else "")
             + f"; Python {env.get('python')}; " + ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items() if v)
             + f". Started {report['started']}, {report['seconds']:.0f} s in all.", ""]
    for name, part in report["parts"].items():
        head = f"## {name}: {part['status']} ({part['seconds']:.0f} s)"
        lines += [head, ""]
        if part["status"] != "ok":
            lines += ["```", part.get("error", ""), "```", ""]
            continue
        res = part["result"]
        if name == "tests":
            lines.append(f"{res['passed']} passed, {res['failed']} failed, {res['skipped']} skipped of {res['tests']} "
                         f"({res['seconds']:.0f} s).")
            lines += [f"- FAILED {f['test']}: {f['message']}" for f in res["failures"]]
            lines += [f"- skipped {n}: {reason}" for reason, n in res["skip_reasons"].items()]
        elif name == "plan":
            lines += [f"Planned for {res['gpu']} with {res['gpu_mem_gb']} GB; every stage fits: {res['fits']}.", "",
                      "| stage | shape | what | planned GB | measured GB | error | tokens/s | samples/s | TFLOP/s | MFU |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for m in res["measured"]:
                lines.append(f"| {m['stage']} | {m['batch']} x {m['seq_len']} ({m['architecture']}) | {m['what']} | "
                             f"{m['predicted_gb']:.4g} | {m['measured_gb']:.4g} | {100 * m['plan_error']:+.1f}% | "
                             f"{m.get('tokens_per_s') or m.get('prompt_tokens_per_s') or ''} | "
                             f"{m.get('samples_per_s') or ''} | {m['achieved_tflops']} | {m['mfu'] if m['mfu'] is not None else ''} |")
        elif name == "benchmarks":
            lines += [f"On a {res['model']} (built in {res['build_s']} s):", "", res["table"]]
        elif name == "environment":
            lines.append(f"bitsandbytes 4-bit matmul: {res['bnb_4bit_matmul']}.")
        lines.append("")
    return "\n".join(lines)


def write(report: dict, out: Path) -> None:
    from icdstudy.core.io import write_json, write_text_atomic

    write_json(out / "gpu_check.json", report)
    write_text_atomic(out / "gpu_check.md", markdown(report))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU: checks the driver, not the machine")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS, help="which parts to run (default: all)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "benchmarks" / "results"),
                   help="report folder (default: $OUT, else benchmarks/results)")
    p.add_argument("--test-timeout", type=int, default=900)
    p.add_argument("--plan-timeout", type=int, default=900)
    p.add_argument("--bench-timeout", type=int, default=900)
    args = p.parse_args(argv)
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        p.error("no CUDA device here; use --cpu-smoke to check the driver on CPU")
    out = Path(args.out)
    t_start = time.time()
    report = {"mode": "cpu-smoke" if args.cpu_smoke else "gpu", "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "seconds": 0.0, "parts": {}}
    for name in args.parts:
        t0 = time.time()
        print(f"gpu_check: {name} ...", flush=True)
        try:
            part = {"status": "ok", "result": globals()[name](args)}
            if name == "tests" and not part["result"]["ok"]:
                part["status"] = "failed"
                part["error"] = "\n".join(f"{f['test']}: {f['message']}" for f in part["result"]["failures"])
        except Exception as exc:  # record it and go on: the other parts still tell something
            part = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:4000]}
        part["seconds"] = round(time.time() - t0, 1)
        report["parts"][name] = part
        report["seconds"] = round(time.time() - t_start, 1)
        write(report, out)
        print(f"gpu_check: {name}: {part['status']} in {part['seconds']:.0f} s", flush=True)
    print(markdown(report))
    print(f"gpu_check: wrote {out / 'gpu_check.md'} and gpu_check.json")
    return 0 if all(p["status"] == "ok" for p in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
