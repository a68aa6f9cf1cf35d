"""Candidate shortlists: retrieve, then let the language model rank.

The TF-IDF retriever (knn-tfidf's ranking) proposes a system's ``retrieved`` codes for each input; the
prompt shows each with its dotted code, its official description and the retriever's score, and
the model picks one. Decoding stays constrained to the whole label set, so a gold code the list
misses is still reachable. A training row's shortlist comes from the other training rows (never
itself or a copy of its text), exactly as a test row's does, so the model trains on lists as good
as the ones it is tested on.
"""
from __future__ import annotations

from icdstudy import icd10
from icdstudy.neighbours.retrieval import Retriever

SHORTLIST = "shortlist"  # the field of a row (and of its prediction) holding the codes its prompt lists


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
    return [{**r, SHORTLIST: [{"code": c["code"], "description": descriptions[c["code"]], "score": c["score"]}
                                for c in found]} for r, found in zip(rows, lists)]


def shortlist_codes(row: dict) -> list[str]:
    """The codes a row's prompt listed, best first: a row carries dicts (code, description, score), its
    prediction the codes alone."""
    return [c["code"] if isinstance(c, dict) else c for c in row[SHORTLIST]]


def candidate_recall(rows: list[dict]) -> float:
    """The share of rows (or predictions) whose gold code is on their list: the most a pure reranker can reach."""
    gold = lambda r: r["code"] if "code" in r else r["gold"]  # noqa: E731
    return round(sum(gold(r) in shortlist_codes(r) for r in rows) / len(rows), 4) if rows else 0.0


def shortlist_metrics(predictions: list[dict]) -> dict:
    """Candidate recall, and where a system's answers sit on the lists it was shown: the share that took
    the retriever's first candidate, another listed one, or a code off the list."""
    n = len(predictions) or 1
    ranks = [shortlist_codes(p).index(p["pred"]) + 1 if p["pred"] in shortlist_codes(p) else None for p in predictions]
    return {
        "candidates": max((len(shortlist_codes(p)) for p in predictions), default=0),
        "candidate_recall": candidate_recall(predictions),
        "picked_first_candidate": round(sum(k == 1 for k in ranks) / n, 4),
        "picked_other_candidate": round(sum(k is not None and k > 1 for k in ranks) / n, 4),
        "picked_off_list": round(sum(k is None for k in ranks) / n, 4),
    }


# A shortlist (a system's `retrieved` codes): its header, then one "1. E11.22 <official description> (0.41)" line per
# code. Measured with the Llama-3.2 tokenizer on the 503 codes of the MedSynth sample: 14 tokens of
# header, 20 per line on average, 26 at p90, 44 at the longest; the plan takes 30 per line.
SHORTLIST_HEADER_TOKENS = 16
CANDIDATE_LINE_TOKENS = 30


def shortlist_tokens(candidates: int) -> int:
    """Prompt tokens a shortlist of ``candidates`` codes adds: its header and one line per code."""
    return SHORTLIST_HEADER_TOKENS + candidates * CANDIDATE_LINE_TOKENS if candidates else 0
