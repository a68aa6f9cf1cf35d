"""Evaluate one system on a split: prompts, resumable batched generation, metrics.

Zero-shot models and LoRA adapters go through this same function, so their numbers are
comparable. Finished batches are appended to a resume file; a rerun with the same model, data
and settings skips them and ends with the same predictions as an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict
from pathlib import Path

from . import metrics, prompts
from .generation import GenerationSettings, run_generation
from .io import JsonlAppender, iter_jsonl


def few_shot_examples(train_rows: list[dict], k: int, seed: int = 42) -> list[dict]:
    if k <= 0:
        return []
    return random.Random(seed).sample(train_rows, k=min(k, len(train_rows)))


def model_fingerprint(*dirs) -> str:
    """Content hash of configs plus weight sizes: changes whenever the weights are rebuilt."""
    h = hashlib.sha256()
    for d in dirs:
        if not d:
            continue
        for f in sorted(Path(d).glob("*")):
            if f.suffix == ".json":
                h.update(f.read_bytes())
            elif f.suffix == ".safetensors":
                h.update(f"{f.name}:{f.stat().st_size}".encode())
                with open(f, "rb") as fh:  # the header holds every tensor's offsets
                    h.update(fh.read(1 << 16))
    return h.hexdigest()[:16]


def _resume_rows(path: Path, fingerprint: str) -> dict[str, dict]:
    if not path.exists():
        return {}
    rows = iter_jsonl(path)
    header = next(rows, None)
    if not header or header.get("_fingerprint") != fingerprint:
        path.unlink()
        return {}
    return {r["id"]: r for r in rows}


def evaluate(model, tokenizer, test_rows: list[dict], label_codes, settings: GenerationSettings,
             input_kind: str, train_rows: list[dict] = (), fingerprint_parts: dict | None = None,
             resume_file: str | Path | None = None, progress: bool = True) -> tuple[list[dict], dict]:
    """Returns (per-sample predictions in test order, quality + speed metrics)."""
    shots = few_shot_examples(list(train_rows), settings.few_shot)
    built = [prompts.prompt_for(tokenizer, r["input"], input_kind, settings.max_input_tokens, shots) for r in test_rows]
    texts = [p for p, _ in built]
    fingerprint = hashlib.sha256(json.dumps({
        "settings": asdict(settings), "input": input_kind, "labels": sorted(label_codes),
        "test": [(r["id"], r["code"], r["input"]) for r in test_rows], **(fingerprint_parts or {}),
    }, sort_keys=True).encode()).hexdigest()[:16]

    done: dict[str, dict] = {}
    appender = None
    if resume_file:
        resume_file = Path(resume_file)
        done = _resume_rows(resume_file, fingerprint)
        if done:
            print(f"resuming: {len(done)} of {len(test_rows)} predictions already written in {resume_file}")
        appender = JsonlAppender(resume_file)
        if not done:
            appender.write({"_fingerprint": fingerprint})

    def on_batch(indices, results, seconds):
        for i, res in zip(indices, results):
            row = {"id": test_rows[i]["id"], "gold": test_rows[i]["code"], **res,
                   "latency_s": round(seconds / len(indices), 5), "input_truncated": built[i][1]}
            done[row["id"]] = row
            if appender:
                appender.write(row)

    index_done = {i for i, r in enumerate(test_rows) if r["id"] in done}
    try:
        run_generation(model, tokenizer, texts, settings, label_codes, done=index_done, on_batch=on_batch,
                       progress=progress)
    finally:
        if appender:
            appender.close()
    predictions = [done[r["id"]] for r in test_rows]
    result = metrics.quality(predictions)
    result.update(metrics.efficiency(predictions))
    result["inputs_truncated"] = sum(p["input_truncated"] for p in predictions)
    return predictions, result
