"""The data card: what the splits hold, how long the inputs are in model tokens, what was dropped."""
from __future__ import annotations

from collections import Counter

import numpy as np

from icdstudy import icd10
from icdstudy.neighbours.retrieval import near_copies


def near_copy_rows(train_rows: list[dict], test_rows: list[dict], params: dict) -> dict:
    """The test rows with a near copy in training, as the data card and the report state them."""
    threshold = params["datacard"]["near_copy_similarity"]
    return {"threshold": threshold, "n": len(test_rows), "ngram_max": params["retrieval"]["ngram_max"],
            "ids": near_copies(train_rows, test_rows, threshold, params["retrieval"])}


def render(splits: dict[str, list[dict]], data_metrics: dict, token_lengths: dict[str, list[int]],
           tokenizer_name: str, source: str, near: dict | None = None) -> str:
    """``near``: the test rows with a near copy in training (threshold, n, ids)."""
    lines = ["# Data card", "", f"Source: `{source}`; input field: `{data_metrics['input']}`.", ""]
    lines += ["| | rows |", "|---|---:|", f"| read | {data_metrics['rows_in']} |", f"| kept | {data_metrics['rows_out']} |"]
    for reason, n in data_metrics["dropped"].items():
        lines.append(f"| dropped: {reason.replace('_', ' ')} | {n} |")
    lines += ["", f"Codes: {data_metrics['n_codes']} in the label set; {data_metrics['train_only_codes']} with too few rows "
              f"went to train only. Rows whose code is not in today's ICD-10-CM table (kept, placed by their prefix): "
              f"{data_metrics['codes_not_in_icd10cm_rows']}; rows with non-billable parent codes: "
              f"{data_metrics['nonbillable_code_rows']}.", "",
              f"Leakage: {data_metrics['code_mentions_before']} inputs mentioned an ICD-10 code before redaction, "
              f"{data_metrics['code_mentions_after']} after.", ""]
    if near is not None:
        share = len(near["ids"]) / near["n"] if near["n"] else 0.0
        lines += [f"Near copies: {len(near['ids'])} of {near['n']} test rows ({100 * share:.1f}%) have a training row with "
                  f"TF-IDF cosine similarity >= {near['threshold']} (`datacard.near_copy_similarity`; 1-{near['ngram_max']}-grams, "
                  "as the retriever). The floors, few-shot and shortlist systems can score on those by finding the copy: "
                  "the report splits every system's exact match by them.", ""]
    lines += ["## Rows per ICD-10-CM chapter", "", "| chapter | train | val | test |", "|---|---:|---:|---:|"]
    counts = {name: Counter(icd10.chapter(r["code"]) for r in rows) for name, rows in splits.items()}
    chapters = sorted({c for cnt in counts.values() for c in cnt if c}, key=int)
    for ch in chapters:
        lines.append(f"| {ch}. {icd10.CHAPTER_TITLES.get(ch, '')} | " + " | ".join(str(counts[s][ch]) for s in splits) + " |")
    lines += ["", f"## Input length in tokens ({tokenizer_name} tokenizer)", "",
              "| split | min | median | p90 | max |", "|---|---:|---:|---:|---:|"]
    for name, lengths in token_lengths.items():
        a = np.asarray(lengths)
        lines.append(f"| {name} | {a.min()} | {int(np.median(a))} | {int(np.quantile(a, 0.9))} | {a.max()} |")
    return "\n".join(lines) + "\n"
