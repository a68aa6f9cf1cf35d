"""The README stays a newcomer's page, and what it says matches the project.

- README.md has at most 400 lines;
- every relative link in README.md and docs/*.md points at a file or folder in the repository (and, for a
  link into a Markdown file with an anchor, at one of its headings);
- every number in the README's demo results table equals the cell of the committed reports/report.md (git's
  index: the version last committed or staged) for the same system and the same column header. A newcomer's
  own `make demo` rewrites reports/report.md in the working tree and changes nothing here: `make check-demo`
  compares their run with ours and says what differs.

Plain text parsing only (icdstudy.reporting.markdown_tables): no model, no DVC.
"""
from __future__ import annotations

import re
import subprocess
import unicodedata
from pathlib import Path

import pytest

from icdstudy.reporting.markdown_tables import cells_by_system, norm_header, numbers, same_cell, split_row, system_id, tables

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
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
    after = [t for t in tables(lines) if t[0] > marks[0]]
    assert after, "README.md: no table after the demo-results marker"
    _, header, rows = after[0]
    assert norm_header(header[0]) == "system", f"README demo table: first column is {header[0]!r}, not system"
    return header, rows


def committed_report(root: Path = ROOT) -> str:
    """reports/report.md as committed (or staged): git's index version; the file itself outside a git checkout."""
    try:
        return subprocess.run(["git", "show", ":reports/report.md"], cwd=root, capture_output=True, text=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return (root / "reports" / "report.md").read_text(encoding="utf-8")


def _report_cells() -> tuple[list[str], dict[tuple[str, str], str]]:
    main_systems, cells = cells_by_system(committed_report())
    assert main_systems, "reports/report.md has no table keyed by system"
    return main_systems, cells


def test_a_newcomers_rerun_changes_no_readme_check(tmp_path):
    """The README is held to the committed report: a rewritten reports/report.md in the working tree (a newcomer's
    own `make demo`, on another CPU) is not what it is compared with."""
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "report.md").write_text("| system | exact % |\n|---|---:|\n| `a` | 50.0 |\n")
    git("add", "reports/report.md")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "ours")
    (tmp_path / "reports" / "report.md").write_text("| system | exact % |\n|---|---:|\n| `a` | 47.6 |\n")
    assert cells_by_system(committed_report(tmp_path))[1][("a", "exact %")] == "50.0"


def test_demo_table_has_the_reports_systems():
    _, rows = _readme_demo_table()
    main_systems, _ = _report_cells()
    readme_systems = [system_id(r[0]) for r in rows]
    assert len(readme_systems) == len(set(readme_systems)), f"a system twice in README's table: {readme_systems}"
    assert set(readme_systems) == set(main_systems), (
        f"README demo table systems {sorted(readme_systems)} differ from reports/report.md's "
        f"{sorted(main_systems)}")


def test_demo_table_numbers_equal_the_report():
    header, rows = _readme_demo_table()
    _, cells = _report_cells()
    columns = [norm_header(h) for h in header]
    report_headers = {name for (_, name) in cells}
    unknown = [h for h in columns[1:] if h not in report_headers]
    assert not unknown, f"README demo table columns not in reports/report.md: {unknown}"
    assert len(columns) >= 3, "README demo table compares fewer than two columns"
    compared, wrong = 0, []
    for row in rows:
        assert len(row) == len(columns), f"README demo table row has {len(row)} cells, header {len(columns)}: {row}"
        system = system_id(row[0])
        for name, cell in zip(columns[1:], row[1:]):
            key = (system, name)
            assert key in cells, f"reports/report.md has no {name!r} for {system}"
            if not same_cell(cell, cells[key]):
                wrong.append(f"{system} / {name}: README {cell!r}, report {cells[key]!r}")
            compared += len(numbers(cell)) or 1
    assert not wrong, "README demo table differs from reports/report.md:\n  " + "\n  ".join(wrong)
    assert compared >= len(rows), "README demo table compared nothing"


# --- the parsers themselves: a changed number must fail --------------------------------------------------

def test_number_parsing_sees_a_changed_digit():
    assert numbers("23.3 (11.6–37.2)") == [23.3, 11.6, 37.2]
    assert numbers("$0.015") == [0.015]
    assert numbers("1,390") == [1390.0]
    assert numbers("-16.3 to +0.0") == [-16.3, 0.0]
    assert numbers("none") == []
    assert numbers("23.3 (11.6–37.2)") != numbers("23.3 (11.6–37.3)")
    assert system_id("**`lora-shortlist-smollm2-135m`**: LoRA on shortlists (5 codes)") == "lora-shortlist-smollm2-135m"
    assert split_row("| `a|b` | 1 |") == ["`a|b`", "1"]


def test_benchmark_numbers_in_the_docs_are_the_committed_results():
    """docs/benchmarks.md quotes benchmarks/results/summary.md verbatim, and the demo-input speedup from its json."""
    import json

    page = (ROOT / "docs" / "benchmarks.md").read_text()
    quoted = page.split("-->\n", 1)[1].split("\n<!-- end summary.md -->")[0] if "<!-- end summary.md -->" in page else ""
    assert quoted == (ROOT / "benchmarks/results/summary.md").read_text().strip(), \
        "docs/benchmarks.md: the block between the summary.md markers differs from benchmarks/results/summary.md: copy it again"
    demo = json.loads((ROOT / "benchmarks/results/summary-demo-inputs.json").read_text())["train_padding_speedup"]
    assert f"{demo:.2f}x on the demo's dialogues" in page

