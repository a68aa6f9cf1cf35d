"""Predict one system on a split: prompts, resumable batched generation.

Zero-shot models and LoRA adapters, every prompt style, go through this same function, so their
numbers are comparable (icdstudy.analysis.scoring turns the predictions into metrics). Finished batches
are appended to a resume file; a rerun with the same model, data and settings skips them and ends
with the same predictions as an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from icdstudy.core.io import JsonlAppender, iter_jsonl
from icdstudy.inference import prompts
from icdstudy.inference.generation import GenerationSettings, run_generation
from icdstudy.neighbours.retrieval import Retriever
from icdstudy.neighbours.shortlist import SHORTLIST

def few_shot_examples(train_rows: list[dict], test_rows: list[dict], k: int, retrieval: dict | None) -> list[list[dict]]:
    """The training rows shown before each test row, nearest first: the row's own ``k`` TF-IDF neighbours (params
    `retrieval`), never the row itself or a training row with the same text."""
    if k <= 0 or not train_rows:
        return [[] for _ in test_rows]
    retriever = Retriever.from_params(train_rows, retrieval)
    return [[train_rows[n.index] for n in found] for found in retriever.search(test_rows, k)]


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
             resume_file: str | Path | None = None, progress: bool = True,
             retrieval: dict | None = None) -> list[dict]:
    """Per-sample predictions, in the order of ``test_rows`` (any split's rows); icdstudy.analysis.scoring scores them."""
    shots = few_shot_examples(list(train_rows), test_rows, settings.few_shot, retrieval)
    # The best neighbour goes last, next to the encounter it resembles.
    built = [prompts.prompt_for(tokenizer, r["input"], input_kind, settings.max_input_tokens, s[::-1],
                                settings.max_shot_tokens, r.get(SHORTLIST)) for r, s in zip(test_rows, shots)]
    texts = [p for p, _ in built]
    fingerprint = hashlib.sha256(json.dumps({
        "settings": asdict(settings), "input": input_kind, "labels": sorted(label_codes),
        "test": [(r["id"], r["code"], r["input"], r.get(SHORTLIST)) for r in test_rows], **(fingerprint_parts or {}),
        "shots": [[x["id"] for x in s] for s in shots],
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
            if settings.few_shot:
                row["shot_ids"] = [x["id"] for x in shots[i]]
            if SHORTLIST in test_rows[i]:
                row[SHORTLIST] = [c["code"] for c in test_rows[i][SHORTLIST]]
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
    return predictions


@dataclass(frozen=True, eq=False)
class Decoding:
    """How a system's rows are decoded: its label set, its settings (eval, its `decoding`, its prompt style's),
    the training rows its shown examples come from, and the retrieval settings that pick them. The predict@
    stages and training's checkpoint probe both decode through ``run``."""
    labels: tuple
    settings: GenerationSettings
    train_rows: tuple = ()
    retrieval: dict | None = None

    def run(self, model, tokenizer, rows: list[dict], input_kind: str, **kwargs) -> list[dict]:
        return evaluate(model, tokenizer, rows, self.labels, self.settings, input_kind, self.train_rows,
                        retrieval=self.retrieval, **kwargs)

    def fingerprint(self) -> dict:
        """What decides its predictions besides the model and the rows (a training run's identity)."""
        return {"labels": sorted(self.labels), "settings": asdict(self.settings),
                "shots_from": [r["id"] for r in self.train_rows] if self.settings.few_shot else [],
                "retrieval": self.retrieval if self.settings.few_shot else None}
