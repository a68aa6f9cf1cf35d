"""MedSynth loading, cleaning, leakage control and per-code splitting.

Every row that does not reach the splits is counted under a named reason; every failure
raises DataError with one line that names the file or parameter at fault and what to do.
"""
# datasets and huggingface_hub are imported where used: only a hub source needs them (seconds to import).
from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from icdstudy import icd10
from icdstudy.corpus.demo_data import build_demo_frame
from icdstudy.neighbours.copies import copy_key


class DataError(Exception):
    """Bad input: the message names what is wrong and how to fix it."""


INPUT_FIELDS = ("dialogue", "note")
# Canonical field -> names seen across MedSynth releases and copies (after strip + lower).
COLUMN_ALIASES = {
    "code": ("icd10", "icd_10", "icd10_code", "code"),
    "description": ("icd10_desc", "icd10_description", "description"),
    "note": ("note",),
    "dialogue": ("dialogue",),
    "id": ("id",),
}


# --- loading ----------------------------------------------------------------------------
def load_source(source: str) -> pd.DataFrame:
    """``demo``, ``hf:<dataset id>[@<revision>][:<split>]``, or a local CSV / Parquet / JSONL path.

    ``frame.attrs["revision"]`` says which version was read: the hub commit hash, or
    ``sha256:<hash>`` of a local file's bytes (None for the demo, which the code defines)."""
    if source == "demo":
        return build_demo_frame()
    if source.startswith("hf:"):
        return _load_hub(source[3:])
    if "://" in source or (":" in source and not Path(source).exists() and len(source.split(":")[0]) > 1):
        raise DataError(f"data.source {source!r}: unknown source scheme; use 'demo', 'hf:<dataset id>' or a local file path")
    return _load_file(Path(source))


def parse_hub_source(spec: str) -> tuple[str, str | None, str]:
    """``<dataset id>[@<revision>][:<split>]`` -> (dataset id, revision or None, split)."""
    rest, _, split = spec.partition(":")
    dataset_id, _, revision = rest.partition("@")
    return dataset_id, revision or None, split or "train"


def _load_hub(spec: str) -> pd.DataFrame:
    dataset_id, revision, split = parse_hub_source(spec)
    try:
        import datasets
        from huggingface_hub import HfApi

        # Resolve the revision to its commit once and read exactly that commit.
        commit = HfApi().dataset_info(dataset_id, revision=revision).sha
        ds = datasets.load_dataset(dataset_id, split=split, revision=commit)
    except Exception as exc:  # offline, gated, misspelled: all end the same way for the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"data.source 'hf:{spec}': cannot load from the Hugging Face hub ({first}). "
            "Check the id and @revision, or download the CSV on a machine with access and set data.source to its local path."
        ) from None
    frame = ds.to_pandas()
    frame.attrs["revision"] = commit
    return frame


def _load_file(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"data.source {str(path)!r}: file not found; give a CSV, Parquet or JSONL path, 'demo' or 'hf:<id>'")
    suffix = "".join(path.suffixes[-1:]).lower()
    readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".jsonl": lambda p: pd.read_json(p, lines=True),
               ".json": pd.read_json}
    if suffix not in readers:
        raise DataError(f"data.source {str(path)!r}: unknown format {suffix or '(no suffix)'}; use .csv, .parquet or .jsonl")
    try:
        frame = readers[suffix](path)
    except Exception as exc:
        raise DataError(f"data.source {str(path)!r}: cannot read as {suffix[1:]}: {str(exc).splitlines()[0]}") from None
    frame.attrs["revision"] = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return frame


def canonicalize(df: pd.DataFrame, input_field: str, origin: str) -> pd.DataFrame:
    """Map any known MedSynth schema onto ``id, code, description, note, dialogue``."""
    if input_field not in INPUT_FIELDS:
        raise DataError(f"data.input {input_field!r}: must be one of {', '.join(INPUT_FIELDS)}")
    by_clean = {str(c).strip().lower(): c for c in df.columns}
    out = pd.DataFrame(index=df.index)
    for canon, aliases in COLUMN_ALIASES.items():
        found = next((by_clean[a] for a in aliases if a in by_clean), None)
        out[canon] = df[found] if found is not None else None
    missing = [name for name, col in (("ICD10", "code"), (input_field.capitalize(), input_field))
               if out[col].isna().all() and not any(a in by_clean for a in COLUMN_ALIASES[col])]
    if missing:
        raise DataError(f"{origin}: missing column(s) {', '.join(missing)}; found {', '.join(map(repr, df.columns))}")
    if out["id"].isna().all():
        out["id"] = [f"row-{i:05d}" for i in range(len(df))]
    out["id"] = out["id"].astype(str)
    return out.reset_index(drop=True)


# --- cleaning ---------------------------------------------------------------------------
@dataclass
class Cleaned:
    rows: list[dict]
    dropped: Counter = field(default_factory=Counter)
    rows_in: int = 0
    mentions_before: int = 0
    mentions_after: int = 0
    unknown_codes_kept: int = 0
    nonbillable_rows: int = 0


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).strip()


def clean(df: pd.DataFrame, input_field: str, unknown_codes: str = "keep",
          redact_descriptions: bool = False) -> Cleaned:
    if unknown_codes not in ("keep", "drop"):
        raise DataError(f"data.unknown_codes {unknown_codes!r}: must be 'keep' or 'drop'")
    result = Cleaned(rows=[], rows_in=len(df))
    codes = [icd10.normalize(c) for c in df["code"]]
    known = frozenset(c for c in codes if icd10.is_code_shaped(c))
    seen_inputs: set[str] = set()
    for rec, code in zip(df.to_dict("records"), codes):
        text = _text(rec[input_field])
        if not icd10.is_code_shaped(code):
            result.dropped["malformed_code"] += 1
            continue
        if not text:
            result.dropped[f"empty_{input_field}"] += 1
            continue
        if not icd10.is_valid(code):
            if unknown_codes == "drop":
                result.dropped["code_not_in_icd10cm"] += 1
                continue
            result.unknown_codes_kept += 1
        description = _text(rec["description"]) or (icd10.description(code) or "").upper()
        had_mention = bool(icd10.find_mentions(text, known))
        text = icd10.redact(text, known)
        if redact_descriptions and description:
            text = _redact_phrase(text, description)
        result.mentions_before += had_mention
        result.mentions_after += bool(icd10.find_mentions(text, known))
        if copy_key(text) in seen_inputs:  # the same text up to case and whitespace: one copy is kept
            result.dropped["duplicate_input"] += 1
            continue
        seen_inputs.add(copy_key(text))
        result.nonbillable_rows += icd10.is_valid(code) and not icd10.is_billable(code)
        result.rows.append({"id": rec["id"], "input": text, "code": code, "description": description})
    return result


def _redact_phrase(text: str, phrase: str, placeholder: str = "[DIAGNOSIS]") -> str:
    words = [re.escape(w) for w in re.split(r"[\s,]+", phrase.strip()) if w]
    if not words:
        return text
    return re.sub(r"\b" + r"[\s,]+".join(words) + r"\b", placeholder, text, flags=re.IGNORECASE)


# --- splitting --------------------------------------------------------------------------
@dataclass
class Split:
    train: list[dict]
    val: list[dict]
    test: list[dict]
    train_only_codes: int
    calibration: list[dict] = field(default_factory=list)


HELD_OUT = ("val", "calibration", "test")  # each code's rows are dealt in this order, the rest to train
CARRY = {"val": 0.0, "calibration": 0.25, "test": 0.5}  # offsets, so the held-out rows fall on different codes


def split_by_code(rows: list[dict], val: float, test: float, seed: int, min_rows_per_code: int = 3,
                  calibration: float = 0.0) -> Split:
    """Split each code's rows so every held-out code also occurs in train.

    Codes with fewer than ``min_rows_per_code`` rows go to train only. Fractional shares are carried
    from code to code (in a seeded order), so the overall proportions match the request even when each
    code has only five rows. The calibration split (thresholds with a guarantee) is dealt between
    validation and test; with ``calibration`` 0 the split is the one before it existed, row for row.
    """
    shares = {"val": val, "calibration": calibration, "test": test}
    if not (all(0 <= s < 1 for s in shares.values()) and sum(shares.values()) < 1):
        raise DataError(f"split.val={val}, split.calibration={calibration} and split.test={test}: each must be in "
                        "[0, 1) and their sum below 1")
    rng = np.random.default_rng(seed)
    by_code: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: (r["code"], r["id"])):
        by_code.setdefault(row["code"], []).append(row)
    codes = sorted(by_code)
    rng.shuffle(codes)
    out = Split([], [], [], 0)
    carry = dict(CARRY)
    for code in codes:
        members = by_code[code]
        order = rng.permutation(len(members))
        members = [members[i] for i in order]
        n = len(members)
        if n < min_rows_per_code:
            out.train.extend(members)
            out.train_only_codes += 1
            continue
        want = {name: n * shares[name] + carry[name] for name in HELD_OUT}
        k = {name: int(w) for name, w in want.items()}
        while sum(k.values()) > n - 1:  # keep at least one training row: the largest part gives one up (test first)
            largest = max(reversed(HELD_OUT), key=lambda name: k[name])
            k[largest] -= 1
        start = 0
        for name in HELD_OUT:
            carry[name] = want[name] - k[name]
            getattr(out, name).extend(members[start:start + k[name]])
            start += k[name]
        out.train.extend(members[start:])
    for part in (out.train, out.val, out.calibration, out.test):
        part.sort(key=lambda r: r["id"])
    return out


def check_split(parts: Split, scfg: dict, origin: str) -> None:
    """Refuse splits that would make a silently wrong study (empty evaluation, one class)."""
    codes = {r["code"] for r in parts.train}
    evaluated = {r["code"] for r in parts.val + parts.calibration + parts.test}
    if len(codes) < 2:
        raise DataError(f"{origin}: only {len(codes)} distinct code(s) after cleaning; a coding study needs at least two")
    if not evaluated:
        raise DataError(f"{origin}: no code has at least split.min_rows_per_code={scfg['min_rows_per_code']} rows, so "
                        "validation and test are empty; use a larger data set or lower split.min_rows_per_code")
    required = [name for name in HELD_OUT if name != "calibration" or scfg.get("calibration")]
    for name in required:
        share = scfg.get(name, 0.0)
        if not getattr(parts, name):
            raise DataError(f"{origin}: the {name} split is empty (split.{name}={share}, {len(parts.train)} training rows); "
                            f"raise split.{name} or use more rows per code")


def labels_table(train_rows: list[dict]) -> dict[str, dict]:
    """The label set (training codes) with description, category, chapter and table status."""
    labels = {}
    for row in sorted(train_rows, key=lambda r: r["code"]):
        code = row["code"]
        if code not in labels:
            labels[code] = {
                "description": row["description"],
                "category": icd10.category(code),
                "chapter": icd10.chapter(code),
                "in_icd10cm": icd10.is_valid(code),
                "billable": icd10.is_billable(code),
            }
    return labels
