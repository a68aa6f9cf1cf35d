"""Reading the report's Markdown tables back: cells by system and column, and the numbers in a cell.

The README's demo table is held to the committed report with these (tests/test_readme.py), and
`make check-demo` compares a newcomer's fresh report with the committed one (tools/check_demo.py).
"""
from __future__ import annotations

import re

_NUMBER = re.compile(r"(?:(?<![\d.])[-+\u2212])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d+)?", re.I)


def split_row(line: str) -> list[str]:
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


def is_separator(line: str) -> bool:
    cells = split_row(line)
    return bool(cells) and all(re.fullmatch(r":?-{3,}:?", c) for c in cells)


def tables(lines: list[str]) -> list[tuple[int, list[str], list[list[str]]]]:
    """Every pipe table in ``lines`` outside fenced code, as (line index of its header, header cells, rows)."""
    found, i, fence = [], 0, False
    while i < len(lines):
        stripped = lines[i].lstrip()
        if stripped.startswith("```") or stripped.startswith("~~~"):
            fence = not fence
        if not fence and stripped.startswith("|") and i + 1 < len(lines) and is_separator(lines[i + 1]):
            header, rows, j = split_row(lines[i]), [], i + 2
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                rows.append(split_row(lines[j]))
                j += 1
            found.append((i, header, rows))
            i = j
            continue
        i += 1
    return found


def norm_header(cell: str) -> str:
    return re.sub(r"\s+", " ", cell.replace("*", "").replace("`", "")).strip().lower()


def system_id(cell: str) -> str:
    """A table's system cell: its first code span (`lora-smollm2-135m`: what it is), else the whole cell."""
    code = re.search(r"`([^`]+)`", cell)
    return (code.group(1) if code else cell.replace("*", "")).strip()


def numbers(cell: str) -> list[float]:
    return [float(m.replace(",", "").replace("\u2212", "-")) for m in _NUMBER.findall(cell)]


def same_cell(a: str, b: str) -> bool:
    """Two cells say the same: the same numbers, or (without numbers) the same words."""
    return numbers(a) == numbers(b) and (bool(numbers(a)) or norm_header(a) == norm_header(b))


def cells_by_system(text: str) -> tuple[list[str], dict[tuple[str, str], str]]:
    """The systems of the first table keyed by system, and every (system, column header) cell of every such
    table; where two tables share a header, the first table's cell is kept."""
    keyed = [t for t in tables(text.splitlines()) if t[1] and norm_header(t[1][0]) == "system"]
    if not keyed:
        return [], {}
    cells: dict[tuple[str, str], str] = {}
    for _, header, rows in keyed:
        names = [norm_header(h) for h in header]
        for row in rows:
            for name, cell in zip(names[1:], row[1:]):
                cells.setdefault((system_id(row[0]), name), cell)
    return [system_id(r[0]) for r in keyed[0][2]], cells
