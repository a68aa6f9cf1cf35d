"""Candidate shortlists: retrieve, then let the language model rank.

The TF-IDF retriever (knn-tfidf's ranking) proposes ``eval.candidates`` codes for each input; the
prompt shows each with its dotted code, its official description and the retriever's score, and
the model picks one. Decoding stays constrained to the whole label set, so a gold code the list
misses is still reachable. A training row's shortlist comes from the other training rows (never
itself or a copy of its text), exactly as a test row's does, so the model trains on lists as good
as the ones it is tested on.
"""
from __future__ import annotations

from . import icd10
from .retrieval import Retriever


def code_descriptions(rows: list[dict]) -> dict[str, str]:
    """Each code's description as a coder reads it: the ICD-10-CM table's for a valid code, else the
    data set's own (MedSynth keeps some retired codes, T814XXA among them), else its parent's."""
    own = {}
    for r in rows:
        own.setdefault(r["code"], (r.get("description") or "").strip())
    return {code: icd10.coder_description(code, text[:1].upper() + text[1:].lower() if text.isupper() else text)
            or "(no description)" for code, text in own.items()}


def with_shortlists(train_rows: list[dict], rows: list[dict], n: int, retrieval: dict,
                    retriever: Retriever | None = None) -> list[dict]:
    """``rows`` with a ``shortlist`` field: the ``n`` candidates (code, description, score) the retriever
    over ``train_rows`` ranks highest. ``rows`` may be the training rows themselves: each then gets
    the shortlist of the other training rows."""
    retriever = retriever or Retriever.from_params(train_rows, retrieval)
    descriptions = code_descriptions(train_rows)
    lists = retriever.shortlists(rows, n, retrieval["neighbours"])
    return [{**r, "shortlist": [{"code": c["code"], "description": descriptions[c["code"]], "score": c["score"]}
                                for c in found]} for r, found in zip(rows, lists)]


def candidate_recall(rows: list[dict]) -> float:
    """The share of rows whose gold code is on their shortlist: the most a pure reranker can reach."""
    return round(sum(r["code"] in {c["code"] for c in r["shortlist"]} for r in rows) / len(rows), 4) if rows else 0.0


def gold_rank(row: dict) -> int | None:
    """1-based position of the gold code on the row's shortlist; None when it is not there."""
    codes = [c["code"] for c in row["shortlist"]]
    return codes.index(row["code"]) + 1 if row["code"] in codes else None


def shortlist_metrics(rows: list[dict], predictions: list[dict]) -> dict:
    """Candidate recall, and where the system's answers sit on the lists it was shown: the share that
    took the retriever's first candidate, another listed one, or a code off the list."""
    n = len(predictions) or 1
    ranks = [[c["code"] for c in r["shortlist"]].index(p["pred"]) + 1 if p["pred"] in {c["code"] for c in r["shortlist"]}
             else None for r, p in zip(rows, predictions)]
    return {
        "candidates": max((len(r["shortlist"]) for r in rows), default=0),
        "candidate_recall": candidate_recall(rows),
        "picked_first_candidate": round(sum(k == 1 for k in ranks) / n, 4),
        "picked_other_candidate": round(sum(k is not None and k > 1 for k in ranks) / n, 4),
        "picked_off_list": round(sum(k is None for k in ranks) / n, 4),
    }
