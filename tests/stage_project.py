"""Shared test fixtures for running the pipeline's stage scripts directly: labelled rows, a small
training config, and a folder laid out like the project with a tiny model and those rows."""
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from icdstudy.io import write_json, write_jsonl
from tests.conftest import REPO

ROWS = [{"id": f"r{i}", "code": c, "input": f"Patient {i}: " + "thirsty and tired. " * (1 + i % 5)}
        for i, c in enumerate(["E119", "I10", "S83512A", "E784", "T814XXA", "Z23"] * 2)]

CFG = dict(lora_r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
           "gate_proj", "up_proj", "down_proj"], learning_rate=5e-3, lr_scheduler="linear", num_epochs=2,
           warmup_steps=0, weight_decay=0.0, batch_size=4, grad_accum=1, max_grad_norm=1.0, seed=0,
           logging_steps=1, eval_steps=2, save_steps=2, save_total_limit=2, early_stopping_patience=10,
           early_stopping_threshold=0.0, gradient_checkpointing=False, loss_on_prompt=False, sanity_steps=0)
TRAIN_ROWS = [{**r, "id": f"{r['id']}-{k}", "input": f"{r['input']} Visit {k}."} for k in range(2) for r in ROWS]


def project(path: Path, tiny_model_dir: Path, test_rows: list[dict] | None = None, eval_params: dict | None = None,
            **train) -> Path:
    """A folder laid out like the pipeline's, with a tiny model and data, for running stages directly."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["models"]["tiny"] = {"path": "models/base/tiny", "dtype": "float32", "load_in_4bit": False}
    params["train"].update({**{k: v for k, v in CFG.items() if k != "seed"}, "seeds": [0], "num_epochs": 2,
                            "save_steps": 2, "eval_steps": 2, "logging_steps": 1, "learning_rate": 2e-3, **train})
    params["eval"].update({"max_input_tokens": 64, "batch_size": 2, "top_k": 3, **(eval_params or {})})
    params["train_shortlist"] = {}  # the shortlist recipe trains as long as the plain one here (12 steps)
    path.mkdir(parents=True)
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    data = path / "data" / "processed"
    write_jsonl(data / "train.jsonl", TRAIN_ROWS)
    write_jsonl(data / "val.jsonl", ROWS[:4])
    write_jsonl(data / "test.jsonl", TRAIN_ROWS[:24] if test_rows is None else test_rows)
    write_json(data / "labels.json", sorted({r["code"] for r in ROWS}))
    shutil.copytree(tiny_model_dir, path / "models" / "base" / "tiny")
    return path


def stage(cwd: Path, *args) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return run
