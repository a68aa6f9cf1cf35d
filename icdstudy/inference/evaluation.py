"""Predict one system on a split: prompts, resumable batched generation.

Zero-shot models and LoRA adapters, every prompt style, go through this same function, so their
numbers are comparable (icdstudy.analysis.scoring turns the predictions into metrics). Finished batches
are appended to a resume file; a rerun with the same model, data and settings skips them and ends
with the same predictions as an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from icdstudy.inference import prompts
from icdstudy.inference.generation import GenerationSettings, run_generation
from icdstudy.core.io import JsonlAppender, iter_jsonl
from icdstudy.neighbours.shortlist import LISTED

RETRIEVAL_DEFAULTS = {"ngram_max": 2, "min_df": 1, "sublinear_tf": True}


def few_shot_examples(train_rows: list[dict], test_rows: list[dict], k: int, strategy: str = "random",
                      seed: int = 42, retrieval: dict | None = None) -> list[list[dict]]:
    """The training rows shown before each test row, best first.

    random: one seeded draw for every row (the seed notebooks' way); nearest: the row's own ``k``
    TF-IDF neighbours. Neither ever shows the row itself or a training row with the same text.
    """
    if k <= 0 or not train_rows:
        return [[] for _ in test_rows]
    from icdstudy.core.copies import copy_key
    from icdstudy.neighbours.retrieval import Retriever

    if strategy == "nearest":
        retriever = Retriever.from_params(train_rows, retrieval or RETRIEVAL_DEFAULTS)
        return [[train_rows[n.index] for n in found] for found in retriever.search(test_rows, k)]
    if strategy != "random":
        raise ValueError(f"eval.few_shot_strategy = {strategy!r}: use random or nearest")
    order = random.Random(seed).sample(range(len(train_rows)), k=min(len(train_rows), 4 * k + 4))
    keys = {i: copy_key(train_rows[i]["input"]) for i in order}
    out = []
    for row in test_rows:
        own = copy_key(row["input"])
        out.append([train_rows[i] for i in order if train_rows[i]["id"] != row.get("id") and keys[i] != own][:k])
    return out


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
    shots = few_shot_examples(list(train_rows), test_rows, settings.few_shot, settings.few_shot_strategy,
                              settings.seed, retrieval)
    # The best neighbour goes last, next to the encounter it resembles.
    built = [prompts.prompt_for(tokenizer, r["input"], input_kind, settings.max_input_tokens, s[::-1],
                                settings.max_shot_tokens, r.get(LISTED)) for r, s in zip(test_rows, shots)]
    texts = [p for p, _ in built]
    fingerprint = hashlib.sha256(json.dumps({
        "settings": asdict(settings), "input": input_kind, "labels": sorted(label_codes),
        "test": [(r["id"], r["code"], r["input"], r.get(LISTED)) for r in test_rows], **(fingerprint_parts or {}),
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
            if LISTED in test_rows[i]:
                row[LISTED] = [c["code"] for c in test_rows[i][LISTED]]
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
                "retrieval": self.retrieval if self.settings.few_shot_strategy == "nearest" else None}
