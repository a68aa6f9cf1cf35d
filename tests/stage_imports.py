"""The project modules a stage script imports, directly or through other project modules (any import
statement, function-level ones included: a lazily imported module still decides what the stage computes)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    """Project module names (``icdstudy.x``) that ``path`` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = "icdstudy" if path.parent.name == "icdstudy" else None
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("icdstudy")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(filter(None, [package, base]))
            if not base.startswith("icdstudy"):
                continue
            if base == "icdstudy":  # from icdstudy import systems, metrics
                found |= {f"icdstudy.{a.name}" for a in node.names}
            else:
                found.add(base)
    return {m for m in found if (ROOT / (m.replace(".", "/") + ".py")).exists()}


def closure(script: str | Path) -> set[str]:
    """Repo-relative paths of every project module ``script`` imports, transitively."""
    todo, seen = [ROOT / script], set()
    while todo:
        for module in _imports(todo.pop()):
            path = module.replace(".", "/") + ".py"
            if path not in seen:
                seen.add(path)
                todo.append(ROOT / path)
    return seen
