"""ICD-10-CM codes: normalization, validity, hierarchy, and finding codes inside free text.

The code table is the CDC's, shipped by the PyPI package ``simple-icd-10-cm``. Codes are kept
undotted internally (as MedSynth stores them) and dotted only for display.

Importing that package parses its XML table, about 2 seconds, in every stage and command that
touches a code. The codes this module asks about (every category, subcategory and 7th-character
code, with leaf flag, chapter and description) are read from it once and kept as JSON in the user's
cache folder, keyed by the package's version and by the source of ``build_table`` (what builds it): a
fix to how the table is read builds a new one. 0.3 seconds to import this module then.
"""
# simple_icd_10_cm is imported where used: only building the cached code table needs it (about a second).
from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from icdstudy.core.io import write_text_atomic

# Letter, digit, alphanumeric, then up to four more alphanumerics (7th-character codes).
CODE_SHAPE = re.compile(r"^[A-Z][0-9][0-9A-Z](?:[0-9A-Z]{1,4})?$")

CHAPTER_TITLES = {
    "1": "Certain infectious and parasitic diseases (A00-B99)",
    "2": "Neoplasms (C00-D49)",
    "3": "Blood and immune mechanism (D50-D89)",
    "4": "Endocrine, nutritional and metabolic (E00-E89)",
    "5": "Mental and behavioral (F01-F99)",
    "6": "Nervous system (G00-G99)",
    "7": "Eye and adnexa (H00-H59)",
    "8": "Ear and mastoid process (H60-H95)",
    "9": "Circulatory system (I00-I99)",
    "10": "Respiratory system (J00-J99)",
    "11": "Digestive system (K00-K95)",
    "12": "Skin and subcutaneous tissue (L00-L99)",
    "13": "Musculoskeletal and connective tissue (M00-M99)",
    "14": "Genitourinary system (N00-N99)",
    "15": "Pregnancy, childbirth and the puerperium (O00-O9A)",
    "16": "Perinatal period (P00-P96)",
    "17": "Congenital malformations (Q00-Q99)",
    "18": "Symptoms, signs and abnormal findings (R00-R99)",
    "19": "Injury, poisoning and external causes (S00-T88)",
    "20": "External causes of morbidity (V00-Y99)",
    "21": "Factors influencing health status (Z00-Z99)",
    "22": "Codes for special purposes (U00-U85)",
}


def normalize(code) -> str:
    """Upper case, no dots, no spaces; a one-element list (older MedSynth release) is unwrapped,
    also when a CSV export wrote it as the text "['A047']"."""
    if isinstance(code, str) and code.strip().startswith("["):
        code = re.findall(r"[^\[\]'\", ]+", code)
    if isinstance(code, (list, tuple)) or getattr(code, "ndim", 0) == 1:
        code = code[0] if len(code) == 1 else ""
    if code is None:
        return ""
    return re.sub(r"[\s.]", "", str(code)).upper()


def is_code_shaped(code: str) -> bool:
    return bool(CODE_SHAPE.match(code))


def _cache_file() -> Path:
    root = os.environ.get("ICDSTUDY_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "icdstudy"
    builder = hashlib.sha256(inspect.getsource(build_table).encode()).hexdigest()[:12]
    return Path(root) / f"icd10cm-table-{metadata.version('simple-icd-10-cm')}-{builder}.json"


def build_table() -> dict[str, list]:
    """code -> [billable (a leaf), chapter, description] for every category, subcategory and
    7th-character code of the table; chapters and blocks are left out. Asked as "is it a category or
    below", not "is it no block": the package names the five one-code blocks (B20, F99, P84, R99,
    Z66) like their only code, so ``is_chapter_or_block`` is true for those real, billable codes."""
    import simple_icd_10_cm as cm

    return {code: [cm.is_leaf(code), cm.get_ancestors(code)[-1], cm.get_description(code)]
            for code in cm.get_all_codes(False)
            if "-" not in code and (cm.is_category_or_subcategory(code) or cm.is_extended_subcategory(code))}


@lru_cache(maxsize=1)
def _table() -> dict[str, list]:
    path = _cache_file()
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    table = build_table()
    try:  # written beside, then renamed: a process reading it never sees half a file

        write_text_atomic(path, json.dumps(table, separators=(",", ":")))
    except OSError:
        pass  # a read-only home: rebuilt in every process, correct but slower
    return table


def is_valid(code: str) -> bool:
    """True for any code in the current ICD-10-CM table (billable or not), chapters and blocks excluded."""
    return bool(code) and code in _table()


def is_billable(code: str) -> bool:
    return bool(code) and _table().get(code, [False])[0]


def billable_codes() -> list[str]:
    """Every billable (leaf) code of the table, undotted, in the table's order."""
    return [code for code, (leaf, _, _) in _table().items() if leaf]


@lru_cache(maxsize=None)
def longest_valid_prefix(code: str) -> str | None:
    """Retired codes such as T814XXA keep their place in the tree through their prefix (T814)."""
    for end in range(len(code), 2, -1):
        if is_valid(code[:end]):
            return code[:end]
    return None


def category(code: str) -> str:
    return code[:3]


@lru_cache(maxsize=None)
def chapter(code: str) -> str | None:
    """ICD-10-CM chapter number as a string ('1'..'22'), from the real code table."""
    anchor = longest_valid_prefix(code)
    return _table()[anchor][1] if anchor else None


@lru_cache(maxsize=None)
def description(code: str) -> str | None:
    anchor = longest_valid_prefix(code)
    return _table()[anchor][2] if anchor else None


def coder_description(code: str, own: str | None = None) -> str | None:
    """A code's description as a coder reads it: the table's for a valid code, else the data set's own
    words ``own`` (MedSynth keeps retired codes such as T814XXA), else its nearest valid parent's."""
    return (description(code) if is_valid(code) else own) or description(code)


def dotted(code: str) -> str:
    return code if len(code) <= 3 else f"{code[:3]}.{code[3:]}"


# --- codes inside free text -------------------------------------------------------------
# A dotted code (M25.562) is unambiguous. An undotted one must also be a real code or a known
# label, and a bare 3-character one needs an "ICD" cue nearby, so that ordinary clinical text
# (vitamin B12, T4, C3 complement, L4-L5, H1N1) survives.
_PREFIX = r"(?:\bICD[- ]?10(?:[- ]?CM)?(?:\s+codes?)?\s*[:#-]?\s*)"
_TOKEN = r"\b([A-Za-z][0-9][0-9A-Za-z](?:\.[0-9A-Za-z]{1,4}|[0-9A-Za-z]{1,4})?)\b"
_MENTION = re.compile(_PREFIX + "?" + _TOKEN)
_CUE = re.compile(r"ICD|\bCODES?\b|\bDX\b|DIAGNOS")


def _is_mention(match: re.Match, known: frozenset[str]) -> bool:
    raw = match.group(1)
    code = normalize(raw)
    if not is_code_shaped(code):
        return False
    before = match.string[max(0, match.start() - 40):match.start()].upper()
    has_cue = match.group(0) != raw or bool(_CUE.search(before))
    real = is_valid(code) or code in known
    if "." in raw:
        return real or has_cue
    if len(code) >= 4:
        return real and (has_cue or code in known or not raw.islower())
    return real and has_cue


def find_mentions(text: str, known: frozenset[str] = frozenset()) -> list[str]:
    """Undotted codes mentioned in ``text``."""
    return [normalize(m.group(1)) for m in _MENTION.finditer(text) if _is_mention(m, known)]


def redact(text: str, known: frozenset[str] = frozenset(), placeholder: str = "[CODE]") -> str:
    """Replace every code mention (and an "ICD-10:" label in front of it) with ``placeholder``."""
    return _MENTION.sub(lambda m: placeholder if _is_mention(m, known) else m.group(0), text)
