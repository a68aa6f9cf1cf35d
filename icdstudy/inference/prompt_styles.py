"""How each prompt style presents an encounter, one entry per style, found by a system's `prompt` key.

A style may change the decoding settings (examples: the `retrieved` nearest training examples are shown
as earlier chat turns) and what each row carries beside its encounter (shortlist: the `retrieved` codes
the TF-IDF retriever ranks highest, listed in the prompt by icdstudy.inference.prompts). Evaluation, training, the
plan and predict all ask this table; nothing else tests a style's name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from icdstudy.inference.generation import GenerationSettings
from icdstudy.neighbours.shortlist import shortlist_tokens, with_shortlists


def _same_settings(ecfg: dict, retrieved: int) -> dict:
    return ecfg


def _shown_examples(ecfg: dict, retrieved: int) -> dict:
    return {**ecfg, "few_shot": retrieved}


def _no_tokens(retrieved: int) -> int:
    return 0


def _same_rows(train_rows, rows, retrieved, retrieval, retriever=None):
    return rows


@dataclass(frozen=True)
class PromptStyle:
    name: str
    shows: str                                  # what the prompt shows beside the encounter, for logs
    settings: Callable[[dict, int], dict]       # decoding keys as this style decodes them
    rows: Callable                              # (train_rows, rows, retrieved, retrieval, retriever) -> rows
    shows_examples: bool                        # retrieved training examples as earlier chat turns
    shows_shortlist: bool                           # retrieved codes listed in the prompt
    shortlist_tokens: Callable[[int], int]         # retrieved -> tokens a listing adds (shown examples: `study plan`)

    @property
    def uses_retriever(self) -> bool:
        """It builds a TF-IDF retriever over the training split (and shows `retrieved` of what it finds)."""
        return self.shows_examples or self.shows_shortlist

    def check(self, retrieved: int, where: str) -> None:
        """A style that retrieves needs `retrieved` >= 1; one that does not, 0."""
        if self.uses_retriever and not retrieved:
            raise ValueError(f"{where}: prompt {self.name} needs retrieved >= 1 (how many it shows)")
        if not self.uses_retriever and retrieved:
            raise ValueError(f"{where}: retrieved = {retrieved} with prompt {self.name}, which shows nothing retrieved "
                             "(set prompt: examples or shortlist, or retrieved: 0)")

    @property
    def trainable(self) -> bool:
        """train@<run> can train on these prompts (examples are not implemented for training)."""
        return not self.shows_examples


STYLES = {s.name: s for s in (
    PromptStyle("plain", "the encounter alone", _same_settings, _same_rows, False, False, _no_tokens),
    PromptStyle("examples", "nearest training examples", _shown_examples, _same_rows, True, False, _no_tokens),
    # each row with its `retrieved` highest-ranked codes (a training row's from the other training rows)
    PromptStyle("shortlist", "shortlisted codes", _same_settings, with_shortlists, False, True, shortlist_tokens),
)}


def style(name: str) -> PromptStyle:
    if name not in STYLES:
        raise ValueError(f"prompt style {name!r}: use one of {', '.join(STYLES)}")
    return STYLES[name]


def generation_settings(ecfg: dict, decoding: dict, prompt: str, retrieved: int):
    """A system's GenerationSettings: params `decoding`'s defaults, its own `decoding` keys, then its style's."""
    return GenerationSettings.from_params(style(prompt).settings({**ecfg, **(decoding or {})}, retrieved))


def prompt_rows(prompt: str, train_rows: list[dict], rows: list[dict], retrieved: int, retrieval: dict,
                retriever=None) -> list[dict]:
    return style(prompt).rows(train_rows, rows, retrieved, retrieval, retriever)
