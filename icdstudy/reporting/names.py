"""How the report and its figures name and colour a system: presentation only, read by the report stage alone
(a new colour or wording reruns the report and nothing else)."""
from __future__ import annotations

from icdstudy.systems import System

FLOOR_LABELS = {"tfidf-logreg": "the TF-IDF baseline", "knn-tfidf": "the TF-IDF nearest-neighbour floor"}
# Colours of the plots, by what a system is: fine-tuned or not, and its prompt style (a floor: its method).
COLORS = {(True, "plain"): "#1b9e77", (True, "shortlist"): "#0b5d47", (True, "examples"): "#66a61e",
          (False, "plain"): "#d95f02", (False, "examples"): "#e6ab02", (False, "shortlist"): "#a6761d",
          "tfidf-logreg": "#7570b3", "knn-tfidf": "#e7298a"}


def color(system: System) -> str:
    return COLORS[system.method] if system.floor else COLORS[(system.fine_tuned, system.prompt)]


def label(system: System) -> str:
    """How a sentence names a system: its entry's `label`, else what it is."""
    if system.settings.get("label"):
        return system.settings["label"]
    if system.floor:
        return FLOOR_LABELS[system.method]
    m, k = system.model, system.retrieved
    text = {(True, "plain"): f"fine-tuned {m}", (True, "shortlist"): f"fine-tuned {m} with shortlists",
            (True, "examples"): f"fine-tuned {m} with retrieved examples",
            (False, "plain"): f"zero-shot {m}", (False, "examples"): f"few-shot {m} ({k} retrieved example{'s' if k != 1 else ''})",
            (False, "shortlist"): f"zero-shot {m} with a shortlist ({k} retrieved codes)"}[(system.fine_tuned, system.prompt)]
    if system.decoding:
        text += " (" + ", ".join(f"{key} {value}" for key, value in system.decoding.items()) + ")"
    return text
