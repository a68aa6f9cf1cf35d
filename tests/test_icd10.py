import pytest

from icdstudy import icd10


@pytest.mark.parametrize("raw,expected", [
    ("E11.9", "E119"), (" e11.9 ", "E119"), (["M25.562"], "M25562"), ("['A04.7']", "A047"), ("S83.512A", "S83512A"),
])
def test_normalize(raw, expected):
    assert icd10.normalize(raw) == expected


def test_table_knows_seventh_character_and_parent_codes():
    assert icd10.is_valid("S83512A") and icd10.is_billable("S83512A")
    assert icd10.is_valid("E784") and not icd10.is_billable("E784")  # non-billable parent, a real MedSynth label
    assert not icd10.is_valid("T814XXA")  # retired: placed through its longest valid prefix
    assert icd10.longest_valid_prefix("T814XXA") == "T814"
    assert icd10.chapter("T814XXA") == "19"


def test_chapters_come_from_the_table_across_chapters():
    assert [icd10.chapter(c) for c in ["A047", "D509", "E119", "H6691", "I10", "M25562", "Z23"]] == \
        ["1", "3", "4", "8", "9", "13", "21"]
    assert icd10.chapter("D320") == "2"  # D00-D49 are neoplasms, D50-D89 blood: not the letter alone


@pytest.mark.parametrize("text", [
    "Assessment: left knee pain (ICD-10: M25.562).",
    "Diagnosis: type 2 diabetes (ICD-10 E11.9)",
    "ICD-10-CM code E784 recorded",
    "Dx: I10",
    "sprain S83.512A",
])
def test_redaction_removes_codes(text):
    out = icd10.redact(text)
    assert icd10.find_mentions(text) and not icd10.find_mentions(out)
    assert "[CODE]" in out and "ICD-10" not in out


def test_redaction_leaves_clinical_text_alone():
    text = "Vitamin B12 low, T4 normal, C3 complement, L4-L5 disc, H1N1 negative, A1C 7.2%, S1 S2 normal, G6PD ok."
    assert icd10.redact(text) == text
    assert icd10.find_mentions(text) == []


@pytest.mark.parametrize("code,chapter", [("B20", "1"), ("F99", "5"), ("P84", "16"), ("R99", "18"), ("Z66", "21")])
def test_codes_named_like_their_one_code_block_are_real_billable_codes(code, chapter):
    # simple-icd-10-cm gives these blocks their only code's name; they were counted as not in ICD-10-CM
    assert icd10.is_valid(code) and icd10.is_billable(code)
    assert icd10.chapter(code) == chapter and icd10.description(code)


def test_every_leaf_code_of_the_table_is_valid_billable_and_in_a_chapter():
    import simple_icd_10_cm as cm

    leaves = {c for c in cm.get_all_codes(False) if "-" not in c and not cm.is_chapter(c) and cm.is_leaf(c)}
    assert len(leaves) > 70_000
    bad = sorted(c for c in leaves if not (icd10.is_valid(c) and icd10.is_billable(c) and icd10.chapter(c)
                                           and icd10.description(c)))
    assert not bad, f"{len(bad)} leaf codes rejected, e.g. {bad[:10]}"
    assert not any(icd10.is_valid(c) for c in ("1", "A00-A09", "E08-E13", "B20-B20"))  # chapters and blocks
    # the cached table says what the package says, code by code
    for c in sorted(leaves)[::97]:
        assert icd10.description(c) == cm.get_description(c) and icd10.chapter(c) == cm.get_ancestors(c)[-1], c
    assert set(icd10.billable_codes()) == leaves


def test_the_code_table_is_cached_once_and_rebuilt_when_unreadable(tmp_path):
    import subprocess
    import sys

    env = {**__import__("os").environ, "ICDSTUDY_CACHE": str(tmp_path)}
    ask = "from icdstudy import icd10; print(icd10.is_billable('B20'), icd10.chapter('T814XXA'), icd10.description('E119'))"
    first = subprocess.run([sys.executable, "-c", ask], env=env, capture_output=True, text=True, check=True).stdout
    (cached,) = tmp_path.glob("icd10cm-table-*.json")
    assert first.split() == ["True", "19", "Type", "2", "diabetes", "mellitus", "without", "complications"]
    stamp = cached.stat().st_mtime_ns
    assert subprocess.run([sys.executable, "-c", ask], env=env, capture_output=True, text=True).stdout == first
    assert cached.stat().st_mtime_ns == stamp  # read, not rebuilt
    cached.write_text('{"E119": [tru')  # cut off
    assert subprocess.run([sys.executable, "-c", ask], env=env, capture_output=True, text=True).stdout == first
    assert cached.read_text().startswith('{"A00"')


def test_the_cache_is_keyed_by_what_builds_the_table(tmp_path, monkeypatch):
    """A change to build_table (a fix to how the table is read) must not be hidden by the old cached table."""
    monkeypatch.setenv("ICDSTUDY_CACHE", str(tmp_path))
    first = icd10._cache_file()
    assert first.parent == tmp_path and "simple" not in first.name
    import inspect

    fixed = inspect.getsource(icd10.build_table) + "    # a fix\n"
    monkeypatch.setattr(inspect, "getsource", lambda fn: fixed)
    assert icd10._cache_file() != first and icd10._cache_file().parent == tmp_path

