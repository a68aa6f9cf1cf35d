"""What counts as a copy of an encounter: the same text once case and whitespace are folded.

One definition for the whole study: `prepare` keeps one row of each set of copies (the others are
dropped and counted as duplicate_input), and the retriever never hands a row its own copy as an
example, a neighbour or a shortlist vote. So no system meets a copy of a test row in training that
another system was denied.
"""
from __future__ import annotations

import hashlib
import re


def copy_key(text: str) -> str:
    """Equal for two texts exactly when one is a copy of the other."""
    return hashlib.sha1(re.sub(r"\s+", " ", text).strip().lower().encode()).hexdigest()
