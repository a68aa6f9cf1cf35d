"""Shared test fixtures for running the pipeline's stage scripts directly: labelled rows, a small
training config, a folder laid out like the project with a tiny model and those rows, and a runner
that calls a stage's main() in this process (no interpreter start, no imports repeated) or, where a
test needs a real process (a kill, a no-torch check), as a subprocess."""
import importlib.util
import io
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import yaml

from icdstudy.core.io import write_json, write_jsonl
from tests.conftest import REPO

ROWS = [{"id": f"r{i}", "code": c, "input": f"Patient {i}: " + "thirsty and tired. " * (1 + i % 5)}
        for i, c in enumerate(["E119", "I10", "S83512A", "E784", "T814XXA", "Z23"] * 2)]

CFG = dict(lora_r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
           "gate_proj", "up_proj", "down_proj"], learning_rate=5e-3, lr_scheduler="linear", num_epochs=2,
           warmup_steps=0, weight_decay=0.0, batch_size=4, grad_accum=1, max_grad_norm=1.0, seed=0,
           logging_steps=1, eval_steps=2, save_steps=2, save_total_limit=2, early_stopping_patience=10,
           early_stopping_threshold=0.0, gradient_checkpointing=False, loss_on_prompt=False, sanity_steps=0,
           select_by="loss")
TRAIN_ROWS = [{**r, "id": f"{r['id']}-{k}", "input": f"{r['input']} Visit {k}."} for k in range(2) for r in ROWS]


def project(path: Path, tiny_model_dir: Path, test_rows: list[dict] | None = None, eval_params: dict | None = None,
            **train) -> Path:
    """A folder laid out like the pipeline's, with a tiny model and data, for running stages directly."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["models"]["tiny"] = {"path": "models/base/tiny", "dtype": "float32", "load_in_4bit": False}
    params["recipe"].update({**{k: v for k, v in CFG.items() if k not in ("seed", "select_by")}, "seeds": [0],
                            "num_epochs": 2, "save_steps": 2, "eval_steps": 2, "logging_steps": 1, "learning_rate": 2e-3,
                            **train})
    params["decoding"].update({"max_input_tokens": 64, "batch_size": 2, "top_k": 3, **(eval_params or {})})
    params["base_models"] = [*params["base_models"], "tiny"]
    params["training"], params["systems"]["llm"] = tiny_tables()  # the shortlist run trains as long as the plain one
    path.mkdir(parents=True)
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    data = path / "data" / "processed"
    write_jsonl(data / "train.jsonl", TRAIN_ROWS)
    write_jsonl(data / "val.jsonl", ROWS[:4])
    write_jsonl(data / "calibration.jsonl", ROWS[4:8])
    write_jsonl(data / "test.jsonl", TRAIN_ROWS[:24] if test_rows is None else test_rows)
    write_json(data / "labels.json", {c: {"description": "x"} for c in sorted({r["code"] for r in ROWS})})
    shutil.copytree(tiny_model_dir, path / "models" / "base" / "tiny")
    return path


def tiny_tables(model: str = "tiny", candidates: int = 5) -> tuple[dict, dict]:
    """The demo's training runs and language-model systems, on ``model``: (training, systems.llm)."""
    training = {f"lora-{model}": {"model": model, "prompt": "plain", "recipe": {}},
                f"lora-shortlist-{model}": {"model": model, "prompt": "shortlist", "retrieved": candidates, "recipe": {}}}
    base = {"model": model, "weights": f"models/base/{model}"}
    llm = {f"lora-{model}": {"model": model, "weights": f"models/adapters/lora-{model}", "prompt": "plain",
                             "run": f"lora-{model}", "adds": {"to": f"zeroshot-{model}", "what": f"Fine-tuning {model}"}},
           f"lora-shortlist-{model}": {"model": model, "weights": f"models/adapters/lora-shortlist-{model}",
                                       "prompt": "shortlist", "retrieved": candidates, "run": f"lora-shortlist-{model}",
                                       "adds": {"to": f"lora-{model}", "what": f"Shortlists for fine-tuned {model}"}},
           f"zeroshot-{model}": {**base, "prompt": "plain"},
           f"fewshot-{model}": {**base, "prompt": "examples", "retrieved": 3},
           f"shortlist-{model}": {**base, "prompt": "shortlist", "retrieved": candidates}}
    return training, llm


_LOADED: dict = {}


def stage_module(name: str):
    """stages/<name>.py as a module (loaded once per test session)."""
    if name not in _LOADED:
        spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "stages" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _LOADED[name] = module
    return _LOADED[name]


def run_stage(cwd: Path, name: str, *args, expect: int = 0) -> str:
    """stages/<name>.py's main(args) in this process, from ``cwd``; its output (stdout and stderr)."""
    out = io.StringIO()
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with redirect_stdout(out), redirect_stderr(out):
            rc = stage_module(name).main([str(a) for a in args])
    finally:
        os.chdir(here)
    assert rc == expect, f"stages/{name}.py {' '.join(map(str, args))} returned {rc}:\n{out.getvalue()[-4000:]}"
    return out.getvalue()


def stage(cwd: Path, *args) -> subprocess.CompletedProcess:
    """A stage (or any script) as a process of its own."""
    run = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return run


def tables_for(zeroshot=(), finetune=(), shortlist=(), finetune_shortlist=(), candidates: int = 5) -> tuple[dict, dict]:
    """(training, systems.llm) selecting the demo's kinds of system on these models, named as the demo names them:
    zeroshot-/fewshot-<m> for ``zeroshot``, shortlist-<m>, lora-<m> and lora-shortlist-<m>; an `adds` where its
    base is selected too."""
    training, llm = {}, {}
    for m in dict.fromkeys([*zeroshot, *finetune, *shortlist, *finetune_shortlist]):
        runs, systems_ = tiny_tables(m, candidates)
        picked = ([f"zeroshot-{m}", f"fewshot-{m}"] if m in zeroshot else []) + ([f"shortlist-{m}"] if m in shortlist else [])
        picked += ([f"lora-{m}"] if m in finetune else []) + ([f"lora-shortlist-{m}"] if m in finetune_shortlist else [])
        for sid in picked:
            llm[sid] = dict(systems_[sid])
            if sid in runs:
                training[sid] = runs[sid]
    for entry in llm.values():
        if "adds" in entry and entry["adds"]["to"] not in llm:
            del entry["adds"]
    return training, llm


def system_for(system_id: str):
    """The icdstudy.systems.System a demo-style id names (zeroshot-<m>, lora-shortlist-<m>, a floor ...)."""
    from icdstudy import systems

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for prefix in ("lora-shortlist-", "lora-", "zeroshot-", "fewshot-", "shortlist-"):
        if system_id.startswith(prefix):
            m = system_id[len(prefix):]
            params["training"], params["systems"]["llm"] = tiny_tables(m)
            break
    return systems.get(params, system_id)
