import json
import subprocess
import sys
from collections import Counter

import pandas as pd
import pytest

from icdstudy.corpus import data
from icdstudy import icd10
from tests.conftest import REPO


def _clean(path, input_field="note", **kw):
    frame = data.canonicalize(data.load_source(str(path)), input_field, origin=str(path))
    return frame, data.clean(frame, input_field, **kw)


def test_real_sample_loads_and_redacts_every_own_code(sample_csv):
    frame, cleaned = _clean(sample_csv)
    assert len(frame) == 505
    own_before = sum(icd10.normalize(c) in n.replace(".", "").upper() for c, n in zip(frame["code"], frame["note"]))
    assert 95 <= own_before <= 105  # the README says 99
    assert all(r["code"] not in r["input"].replace(".", "").upper() for r in cleaned.rows)
    assert cleaned.mentions_before >= own_before and cleaned.mentions_after == 0
    assert cleaned.rows_in == 505 and len(cleaned.rows) + sum(cleaned.dropped.values()) == 505
    assert set(cleaned.dropped) <= {"duplicate_input"}
    assert cleaned.nonbillable_rows > 0  # parent codes such as A047 are kept, and counted


def test_dialogue_input_drops_and_counts_empty_dialogues(sample_csv):
    _, cleaned = _clean(sample_csv, "dialogue")
    assert cleaned.dropped["empty_dialogue"] == 500 and len(cleaned.rows) == 5


def test_both_schema_versions_load_to_the_same_records(sample_csv, tmp_path):
    raw = pd.read_csv(sample_csv)
    new = raw.rename(columns={"icd10": "ICD10", "icd10_desc": "ICD10_desc", "note": " Note", "dialogue": "Dialogue"})
    old = pd.DataFrame({"ID": [f"row-{i:05d}" for i in range(len(raw))], "Note": raw["note"],
                        "Dialogue": raw["dialogue"], "ICD10": [[c] for c in raw["icd10"]]})
    new.to_csv(tmp_path / "new.csv", index=False)
    old.to_json(tmp_path / "old.jsonl", orient="records", lines=True)
    _, a = _clean(tmp_path / "new.csv")
    _, b = _clean(tmp_path / "old.jsonl")
    assert [(r["id"], r["code"], r["input"]) for r in a.rows] == [(r["id"], r["code"], r["input"]) for r in b.rows]
    # the old release has no descriptions: they come from the ICD-10-CM table
    assert b.rows[0]["description"].upper() == a.rows[0]["description"].upper()


def test_dotted_and_undotted_codes_agree(sample_csv, tmp_path):
    raw = pd.read_csv(sample_csv).head(40)
    dotted = raw.assign(icd10=[icd10.dotted(c).lower() for c in raw["icd10"]])
    dotted.to_csv(tmp_path / "dotted.csv", index=False)
    _, a = _clean(sample_csv)
    _, b = _clean(tmp_path / "dotted.csv")
    assert [r["code"] for r in b.rows] == [r["code"] for r in a.rows[:len(b.rows)]]


def test_malformed_and_unknown_codes_are_counted(tmp_path):
    rows = pd.DataFrame({"ICD10": ["E119", "not a code", "T814XXA", "H4011X1", ""],
                         "Note": ["a", "b", "c", "d", "e"]})
    rows.to_csv(tmp_path / "x.csv", index=False)
    _, keep = _clean(tmp_path / "x.csv")
    assert keep.dropped == {"malformed_code": 2} and keep.unknown_codes_kept == 2
    _, drop = _clean(tmp_path / "x.csv", unknown_codes="drop")
    assert drop.dropped == {"malformed_code": 2, "code_not_in_icd10cm": 2}
    assert [r["code"] for r in drop.rows] == ["E119"]


def test_description_redaction_ablation():
    frame = pd.DataFrame({"id": ["1"], "code": ["E119"], "description": ["TYPE 2 DIABETES MELLITUS WITHOUT COMPLICATIONS"],
                          "note": ["Assessment: Type 2 diabetes mellitus without complications, stable."],
                          "dialogue": [None]})
    out = data.clean(frame, "note", redact_descriptions=True).rows[0]["input"]
    assert "diabetes" not in out.lower() and "[DIAGNOSIS]" in out


def _demo_rows():
    frame = data.canonicalize(data.load_source("demo"), "dialogue", "demo")
    return data.clean(frame, "dialogue").rows


def test_demo_set_is_deterministic_and_varied():
    a, b = _demo_rows(), _demo_rows()
    assert a == b
    per_code = Counter(r["code"] for r in a)
    assert len(per_code) >= 24 and min(per_code.values()) >= 5
    chapters = {icd10.chapter(c) for c in per_code}
    assert len(chapters) >= 10
    texts = [r["input"] for r in a]
    assert len(set(texts)) == len(texts)
    notes = data.canonicalize(data.load_source("demo"), "note", "demo")
    assert data.clean(notes, "note").mentions_before > 20  # redaction is exercised


def test_split_properties():
    rows = _demo_rows()
    s1 = data.split_by_code(rows, 0.15, 0.15, seed=42)
    s2 = data.split_by_code(rows, 0.15, 0.15, seed=42)
    s3 = data.split_by_code(rows, 0.15, 0.15, seed=7)
    assert (s1.train, s1.val, s1.test) == (s2.train, s2.val, s2.test)
    assert [r["id"] for r in s1.test] != [r["id"] for r in s3.test]
    train_codes = {r["code"] for r in s1.train}
    assert {r["code"] for r in s1.val + s1.test} <= train_codes
    n = len(rows)
    assert len(s1.train) + len(s1.val) + len(s1.test) == n
    assert abs(len(s1.val) / n - 0.15) < 0.02 and abs(len(s1.test) / n - 0.15) < 0.02
    ids = [r["id"] for r in s1.train + s1.val + s1.test]
    assert len(ids) == len(set(ids))


def _with_copies(rows: list[dict], field: str) -> list[dict]:
    """``rows`` (canonical columns) plus a second copy of every tenth one with a ``field`` text: the same text up to
    case and spacing, under a new id."""
    extra = [{**r, "id": r["id"] + "-copy", field: "  " + r[field].upper() + " "}
             for r in rows[::10] if isinstance(r[field], str) and r[field].strip()]
    return rows + extra


@pytest.mark.parametrize("source", ["demo", "sample"])
def test_calibration_is_disjoint_from_train_validation_and_test_by_id_and_by_text(source, request):
    """The rows that certify thresholds are seen by no other split: no id and no text (up to case and whitespace,
    icdstudy.neighbours.copies) in two parts, also where the source holds copies (prepare keeps one of each)."""
    import pandas as pd

    from icdstudy.neighbours.copies import copy_key

    field = "dialogue" if source == "demo" else "note"  # the sample's dialogues are mostly empty
    path = "demo" if source == "demo" else str(request.getfixturevalue("sample_x3_csv"))
    records = _with_copies(data.canonicalize(data.load_source(path), field, source).to_dict("records"), field)
    cleaned = data.clean(pd.DataFrame(records), field)
    assert cleaned.dropped.get("duplicate_input", 0) >= len(records) // 12  # the copies were counted and dropped
    parts = data.split_by_code(cleaned.rows, 0.15, 0.15, seed=42, calibration=0.15)
    named = {"train": parts.train, "val": parts.val, "calibration": parts.calibration, "test": parts.test}
    assert len(parts.calibration) >= 0.1 * len(cleaned.rows)
    for other in ("train", "val", "test"):
        assert not {r["id"] for r in parts.calibration} & {r["id"] for r in named[other]}, other
        assert not {copy_key(r["input"]) for r in parts.calibration} & {copy_key(r["input"]) for r in named[other]}, other


def test_rare_codes_go_to_train_only():
    rows = [{"id": f"{c}{i}", "code": c, "input": f"{c} {i}"} for c, k in (("E119", 5), ("I10", 2)) for i in range(k)]
    s = data.split_by_code(rows, 0.2, 0.2, seed=1, min_rows_per_code=3)
    assert s.train_only_codes == 1 and all(r["code"] == "E119" for r in s.val + s.test)


# --- the prepare stage's failures: one clear line, non-zero exit, no partial outputs -----
def _run_prepare(tmp_path, source, input_field="dialogue"):
    params = (REPO / "params.yaml").read_text()
    params = params.replace("  source: demo ", f"  source: {json.dumps(str(source))} ", 1)
    params = params.replace("  input: dialogue ", f"  input: {input_field} ", 1)
    (tmp_path / "params.yaml").write_text(params)
    out = tmp_path / "processed"
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "prepare.py"), "--params", str(tmp_path / "params.yaml"),
                           "--out", str(out), "--metrics", str(tmp_path / "data.json")],
                          capture_output=True, text=True, cwd=tmp_path)
    return proc, out


@pytest.mark.parametrize("make_source,needle", [
    (lambda p: p / "missing.csv", "file not found"),
    (lambda p: (p / "x.xlsx").write_text("x") and p / "x.xlsx", "unknown format"),
    (lambda p: "s3://bucket/x.csv", "unknown source scheme"),
    (lambda p: (p / "bad.csv").write_bytes(b"\x00\xff\xfe garbage") and p / "bad.csv", "cannot read as csv"),
    (lambda p: pd.DataFrame({"ICD10": ["E119"], "Dialogue": [None]}).to_csv(p / "e.csv", index=False) or p / "e.csv",
     "no rows left"),
    (lambda p: pd.DataFrame({"code_x": ["E119"], "Note": ["x"]}).to_csv(p / "c.csv", index=False) or p / "c.csv",
     "missing column(s) ICD10, Dialogue; found 'code_x', 'Note'"),
    (lambda p: "hf:nobody/no-such-dataset", "set data.source to its local path"),
])
def test_prepare_bad_input_fails_with_one_clear_line(tmp_path, make_source, needle):
    proc, out = _run_prepare(tmp_path, make_source(tmp_path))
    assert proc.returncode == 1
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("prepare: error:") and needle in lines[0], proc.stderr
    assert not out.exists() and not (tmp_path / "data.json").exists()


def test_prepare_refuses_the_sample_alone_and_runs_on_enough_rows(tmp_path, sample_csv, sample_x3_csv):
    (tmp_path / "alone").mkdir()
    proc, _ = _run_prepare(tmp_path / "alone", sample_csv, "note")
    assert proc.returncode == 1 and "split.min_rows_per_code" in proc.stderr  # val/test would be empty
    proc, out = _run_prepare(tmp_path, sample_x3_csv, "note")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "data.json").read_text())
    assert metrics["rows_in"] == 1515 and metrics["code_mentions_after"] == 0 and metrics["test"] > 0
    assert metrics["rows_out"] + sum(metrics["dropped"].values()) == 1515
    for name in ("train", "val", "test"):
        for line in (out / f"{name}.jsonl").read_text().splitlines():
            assert set(json.loads(line)) == {"id", "input", "code", "description"}


@pytest.mark.parametrize("offset,counted", [(-1e-6, True), (0.0, True), (1e-6, False)])
def test_a_near_copy_is_a_row_at_or_above_the_similarity_threshold(offset, counted):
    """Just below, at and just above the threshold: the data card and the report count a test row as a near copy
    when its most similar training row reaches datacard.near_copy_similarity."""
    from icdstudy.reporting.datacard import near_copy_rows
    from icdstudy.neighbours.retrieval import Retriever

    cfg = {"ngram_max": 2, "min_df": 1, "sublinear_tf": True, "neighbours": 3}
    train = [{"id": "t0", "code": "E119", "input": "thirst polyuria metformin hba1c raised"},
             {"id": "t1", "code": "I10", "input": "blood pressure high amlodipine"}]
    test = [{"id": "q0", "code": "E119", "input": "thirst polyuria metformin hba1c"},
            {"id": "q1", "code": "Z23", "input": "influenza vaccine today"}]
    r = Retriever.from_params(train, cfg)
    best = float((r.vectorizer.transform([test[0]["input"]]) @ r.matrix.T).max())  # the exact cosine, unrounded
    assert 0.5 < best < 1
    near = near_copy_rows(train, test, {"datacard": {"near_copy_similarity": best + offset}, "retrieval": cfg})
    assert near["ids"] == (["q0"] if counted else []) and near["n"] == 2

