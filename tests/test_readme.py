"""The README stays a newcomer's page, and what it says matches the project.

- README.md has at most 400 lines;
- every relative link in README.md and docs/*.md points at a file or folder in the repository (and, for a
  link into a Markdown file with an anchor, at one of its headings);
- every number in the README's demo results table equals the cell of reports/report.md for the same system
  and the same column header, so a rerun of the demo that changes the report fails here until the README's
  table is refreshed.

Plain text parsing only: no project import, no model, no DVC.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
REPORT = ROOT / "reports" / "report.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 400
# The README's demo table is the first table after this marker (an HTML comment, invisible on the web).
DEMO_TABLE_MARKER = "<!-- demo-results"


# --- Markdown helpers ------------------------------------------------------------------------------------

def _without_code(text: str) -> str:
    """The text with fenced code blocks and inline code spans blanked (line count kept)."""
    out, fence = [], None
    for line in text.splitlines():
        stripped = line.lstrip()
        if fence is None and (stripped.startswith("```") or stripped.startswith("~~~")):
            fence = stripped[:3]
            out.append("")
            continue
        if fence is not None:
            if stripped.startswith(fence):
                fence = None
            out.append("")
            continue
        out.append(re.sub(r"(`+)(?:(?!\1).)+?\1", "", line))
    return "\n".join(out)


def _split_row(line: str) -> list[str]:
    """The cells of one Markdown table row (a `|` inside a code span does not split)."""
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    cells, cell, in_code = [], "", False
    for ch in line:
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code and not cell.endswith("\\"):
            cells.append(cell.strip())
            cell = ""
        else:
            cell += ch
    cells.append(cell.strip())
    return cells


def _is_separator(line: str) -> bool:
    cells = _split_row(line)
    return bool(cells) and all(re.fullmatch(r":?-{3,}:?", c) for c in cells)


def _tables(lines: list[str]) -> list[tuple[int, list[str], list[list[str]]]]:
    """Every pipe table in `lines` as (line index of its header, header cells, rows of cells)."""
    tables, i, fence = [], 0, False
    while i < len(lines):
        stripped = lines[i].lstrip()
        if stripped.startswith("```") or stripped.startswith("~~~"):
            fence = not fence
        if (not fence and stripped.startswith("|") and i + 1 < len(lines)
                and _is_separator(lines[i + 1])):
            header = _split_row(lines[i])
            rows, j = [], i + 2
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                rows.append(_split_row(lines[j]))
                j += 1
            tables.append((i, header, rows))
            i = j
            continue
        i += 1
    return tables


def _norm_header(cell: str) -> str:
    return re.sub(r"\s+", " ", cell.replace("*", "").replace("`", "")).strip().lower()


def _system_id(cell: str) -> str:
    """A table's system cell: its first code span (`lora-smollm2-135m`: what it is), else the whole cell."""
    code = re.search(r"`([^`]+)`", cell)
    return (code.group(1) if code else cell.replace("*", "")).strip()


_NUMBER = re.compile(r"(?:(?<![\d.])[-+\u2212])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d+)?", re.I)


def _numbers(cell: str) -> list[float]:
    return [float(m.replace(",", "").replace("\u2212", "-")) for m in _NUMBER.findall(cell)]


def _text(cell: str) -> str:
    return re.sub(r"\s+", " ", cell.replace("*", "").replace("`", "")).strip().lower()


# --- (a) length ------------------------------------------------------------------------------------------

def test_readme_is_at_most_400_lines():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, (
        f"README.md has {n} lines, more than {MAX_README_LINES}: move depth into docs/ and link it")


# --- (b) links -------------------------------------------------------------------------------------------

_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)


def _links(path: Path) -> list[str]:
    text = _without_code(path.read_text(encoding="utf-8"))
    return _INLINE_LINK.findall(text) + _REFERENCE_LINK.findall(text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").strip().lower()
    kept = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LMN")
    return kept.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors, seen = set(), {}
    for line in _without_code_keep_headings(path.read_text(encoding="utf-8")):
        m = re.match(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        anchors.add(slug if n == 0 else f"{slug}-{n}")
        seen[slug] = n + 1
    anchors.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", path.read_text(encoding="utf-8")))
    return anchors


def _without_code_keep_headings(text: str) -> list[str]:
    """Lines outside fenced code blocks (a `# comment` in a shell block is no heading)."""
    out, fence = [], None
    for line in text.splitlines():
        stripped = line.lstrip()
        if fence is None and (stripped.startswith("```") or stripped.startswith("~~~")):
            fence = stripped[:3]
        elif fence is not None and stripped.startswith(fence):
            fence = None
        elif fence is None:
            out.append(line)
    return out


PAGES = [README, *DOCS]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page):
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
            continue  # http:, https:, mailto: ...
        file_part, _, anchor = target.partition("#")
        file_part = file_part.split("?", 1)[0]
        dest = (page.parent / file_part).resolve() if file_part else page
        if ROOT not in dest.parents and dest != ROOT:
            broken.append(f"{target} (outside the repository)")
            continue
        if not dest.exists():
            broken.append(f"{target} (no such file: {dest.relative_to(ROOT)})")
            continue
        if anchor and dest.is_file() and dest.suffix == ".md" and anchor.lower() not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links:\n  " + "\n  ".join(broken)


def test_docs_pages_exist_and_readme_links_each():
    assert DOCS, "docs/ holds no page"
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in _links(README)}
    missing = [str(p.relative_to(ROOT)) for p in DOCS if p.resolve() not in linked]
    assert not missing, f"README.md links no docs page {missing}"


# --- (c) the demo table against the report ---------------------------------------------------------------

def _readme_demo_table() -> tuple[list[str], list[list[str]]]:
    lines = README.read_text(encoding="utf-8").splitlines()
    marks = [i for i, line in enumerate(lines) if line.strip().startswith(DEMO_TABLE_MARKER)]
    assert marks, f"README.md has no {DEMO_TABLE_MARKER} ... --> marker before its demo results table"
    after = [t for t in _tables(lines) if t[0] > marks[0]]
    assert after, "README.md: no table after the demo-results marker"
    _, header, rows = after[0]
    assert _norm_header(header[0]) == "system", f"README demo table: first column is {header[0]!r}, not system"
    return header, rows


def _report_cells() -> tuple[list[str], dict[tuple[str, str], str]]:
    """The report's systems in its first (main) table, and every (system, column header) cell of every table
    keyed by system; where two tables share a header, the first table's cell is kept."""
    lines = REPORT.read_text(encoding="utf-8").splitlines()
    tables = [t for t in _tables(lines) if t[1] and _norm_header(t[1][0]) == "system"]
    assert tables, "reports/report.md has no table keyed by system"
    main_systems = [_system_id(r[0]) for r in tables[0][2]]
    cells: dict[tuple[str, str], str] = {}
    for _, header, rows in tables:
        names = [_norm_header(h) for h in header]
        for row in rows:
            system = _system_id(row[0])
            for name, cell in zip(names[1:], row[1:]):
                cells.setdefault((system, name), cell)
    return main_systems, cells


def test_demo_table_has_the_reports_systems():
    _, rows = _readme_demo_table()
    main_systems, _ = _report_cells()
    readme_systems = [_system_id(r[0]) for r in rows]
    assert len(readme_systems) == len(set(readme_systems)), f"a system twice in README's table: {readme_systems}"
    assert set(readme_systems) == set(main_systems), (
        f"README demo table systems {sorted(readme_systems)} differ from reports/report.md's "
        f"{sorted(main_systems)}")


def test_demo_table_numbers_equal_the_report():
    header, rows = _readme_demo_table()
    _, cells = _report_cells()
    columns = [_norm_header(h) for h in header]
    report_headers = {name for (_, name) in cells}
    unknown = [h for h in columns[1:] if h not in report_headers]
    assert not unknown, f"README demo table columns not in reports/report.md: {unknown}"
    assert len(columns) >= 3, "README demo table compares fewer than two columns"
    compared, wrong = 0, []
    for row in rows:
        assert len(row) == len(columns), f"README demo table row has {len(row)} cells, header {len(columns)}: {row}"
        system = _system_id(row[0])
        for name, cell in zip(columns[1:], row[1:]):
            key = (system, name)
            assert key in cells, f"reports/report.md has no {name!r} for {system}"
            ours, theirs = _numbers(cell), _numbers(cells[key])
            if ours != theirs or (not ours and _text(cell) != _text(cells[key])):
                wrong.append(f"{system} / {name}: README {cell!r}, report {cells[key]!r}")
            compared += len(ours) or 1
    assert not wrong, "README demo table differs from reports/report.md:\n  " + "\n  ".join(wrong)
    assert compared >= len(rows), "README demo table compared nothing"


# --- the parsers themselves: a changed number must fail --------------------------------------------------

def test_number_parsing_sees_a_changed_digit():
    assert _numbers("23.3 (11.6–37.2)") == [23.3, 11.6, 37.2]
    assert _numbers("$0.015") == [0.015]
    assert _numbers("1,390") == [1390.0]
    assert _numbers("-16.3 to +0.0") == [-16.3, 0.0]
    assert _numbers("none") == []
    assert _numbers("23.3 (11.6–37.2)") != _numbers("23.3 (11.6–37.3)")
    assert _system_id("**`lora-shortlist-smollm2-135m`**: LoRA on shortlists (5 codes)") == "lora-shortlist-smollm2-135m"
    assert _split_row("| `a|b` | 1 |") == ["`a|b`", "1"]
