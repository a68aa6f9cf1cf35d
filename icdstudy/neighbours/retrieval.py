"""TF-IDF nearest neighbours over the training inputs: the examples a few-shot prompt shows and
the `knn-tfidf` floor's votes come from this one retriever, so the report can say what a
model adds beyond retrieval.

A query never gets back its own row (same id) or a copy of its text (icdstudy.neighbours.copies): that would
hand the model its answer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from icdstudy.neighbours.copies import copy_key


@dataclass
class Neighbour:
    index: int      # position in the training rows
    id: str
    code: str
    score: float    # cosine similarity of the TF-IDF vectors, in [0, 1]


class Retriever:
    def __init__(self, train_rows: list[dict], ngram_max: int = 2, min_df: int = 1, sublinear_tf: bool = True):
        if not train_rows:
            raise ValueError("retrieval needs at least one training row")
        self.rows = train_rows
        self.vectorizer = TfidfVectorizer(ngram_range=(1, ngram_max), min_df=min_df, sublinear_tf=sublinear_tf)
        self.matrix = self.vectorizer.fit_transform([r["input"] for r in train_rows])  # rows are L2-normalized
        self.same_text: dict[str, list[int]] = {}
        for i, r in enumerate(train_rows):
            self.same_text.setdefault(copy_key(r["input"]), []).append(i)

    @classmethod
    def from_params(cls, train_rows: list[dict], cfg: dict) -> "Retriever":
        return cls(train_rows, cfg["ngram_max"], cfg["min_df"], cfg["sublinear_tf"])

    def _ranked(self, queries: list[dict], chunk: int = 512):
        """Per query: every training row's similarity (-inf for the row itself and copies of its text)
        and the rows' order, best first, ties to the earlier row. Queries go in chunks, so a dense
        block stays small for the full study's ~7,000 x 7,000 leave-one-out searches."""
        ids = {r["id"]: i for i, r in enumerate(self.rows)}
        for start in range(0, len(queries), chunk):
            part = queries[start:start + chunk]
            sims = (self.vectorizer.transform([q["input"] for q in part]) @ self.matrix.T).toarray()
            for q, row in zip(part, sims):
                banned = set(self.same_text.get(copy_key(q["input"]), []))
                if q.get("id") in ids:
                    banned.add(ids[q["id"]])
                row[list(banned)] = -np.inf
                order = np.argsort(-row, kind="stable")[:len(self.rows) - len(banned)]
                yield row, order

    def search(self, queries: list[dict], k: int) -> list[list[Neighbour]]:
        """The ``k`` most similar training rows for each query row (``id`` and ``input``), best first;
        ties go to the earlier training row, so results are deterministic."""
        if k <= 0 or not queries:
            return [[] for _ in queries]
        return [[Neighbour(int(i), self.rows[i]["id"], self.rows[i]["code"], round(float(row[i]), 6))
                 for i in order[:k]] for row, order in self._ranked(queries)]

    def shortlists(self, queries: list[dict], n: int, neighbours: int) -> list[list[dict]]:
        """The ``n`` codes ranked highest for each query: knn's ranking over its ``neighbours`` nearest
        training rows (summed similarity, scores as shares), then, where those carry fewer than ``n``
        codes, the codes of the next nearest rows in order of appearance (score 0). The query's own
        row and copies of its text are never among the neighbours."""
        out = []
        for row, order in self._ranked(queries):
            near = [Neighbour(int(i), self.rows[i]["id"], self.rows[i]["code"], round(float(row[i]), 6))
                    for i in order[:neighbours]]
            found = knn_candidates(near, n)
            seen = {c["code"] for c in found}
            for i in order[neighbours:]:
                if len(found) >= n:
                    break
                code = self.rows[i]["code"]
                if code not in seen:
                    seen.add(code)
                    found.append({"code": code, "score": 0.0})
            out.append(found)
        return out


def near_copies(train_rows: list[dict], rows: list[dict], threshold: float, cfg: dict) -> list[str]:
    """Ids of ``rows`` whose most similar training input (TF-IDF cosine, exact copies included) reaches
    ``threshold``: where a retrieval-based system can score by finding the copy."""
    if not rows:
        return []
    r = Retriever.from_params(train_rows, cfg)
    best = (r.vectorizer.transform([q["input"] for q in rows]) @ r.matrix.T).max(axis=1).toarray().ravel()
    return [q["id"] for q, sim in zip(rows, best) if sim >= threshold - 1e-9]


def knn_candidates(neighbours: list[Neighbour], top_k: int) -> list[dict]:
    """Codes ranked by the summed similarity of the neighbours that carry them; each score is
    that code's share of the total, so the top score reads as a confidence."""
    votes: dict[str, float] = {}
    best: dict[str, float] = {}
    for n in neighbours:
        votes[n.code] = votes.get(n.code, 0.0) + max(n.score, 0.0)
        best[n.code] = max(best.get(n.code, 0.0), n.score)
    total = sum(votes.values())
    ranked = sorted(votes, key=lambda c: (-votes[c], -best[c], c))[:top_k]
    share = (lambda c: votes[c] / total) if total > 0 else (lambda c: 1.0 / len(votes))
    return [{"code": c, "score": round(share(c), 6)} for c in ranked]
