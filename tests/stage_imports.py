"""The project modules a stage script imports, directly or through other project modules (any import
statement, function-level ones included: a lazily imported module still decides what the stage computes; and
the parent packages, which run on import), and the dependencies dvc.yaml must list for them: exactly those
modules, a sub-package named by its folder where the script reaches all of it."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _module_path(name: str) -> str | None:
    """Repo-relative file of a dotted project module (a package's ``__init__.py``), or None if not one."""
    base = name.replace(".", "/")
    for candidate in (f"{base}.py", f"{base}/__init__.py"):
        if (ROOT / candidate).exists():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """Repo-relative files of the project modules that ``path`` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(ROOT).parent.parts)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("icdstudy")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(filter(None, [*parent, base]))
            if not base.startswith("icdstudy"):
                continue
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # from icdstudy import systems: a module
    # a module's parent packages run on import: icdstudy/__init__.py (it pins the CPU kernels) and each sub-package's
    found |= {".".join(name.split(".")[:i]) for name in list(found) for i in range(1, name.count(".") + 1)}
    return {p for p in map(_module_path, found) if p}


def closure(script: str | Path) -> set[str]:
    """Repo-relative paths of every project module ``script`` imports, transitively."""
    todo, seen = [ROOT / script], set()
    while todo:
        for path in _imports(todo.pop()):
            if path not in seen:
                seen.add(path)
                todo.append(ROOT / path)
    return seen


def dependencies(script: str | Path) -> set[str]:
    """What dvc.yaml lists for ``script``'s code: itself, and the modules it reaches, each as its file, or as its
    sub-package's folder where the script reaches every module of it (the folder is shorter and no edit there can
    rerun the stage for a module it does not import)."""
    deps, used = {str(script)}, closure(script)
    for path in used:
        parts = Path(path).parts
        folder = "/".join(parts[:2]) if len(parts) > 2 else None
        whole = folder and {str(p.relative_to(ROOT)) for p in (ROOT / folder).glob("*.py")} <= used
        if whole or not inert(path):
            deps.add(folder if whole else path)
    return deps


def inert(path: str) -> bool:
    """A module of a docstring alone (a sub-package's __init__.py) computes nothing: no stage needs it listed."""
    body = ast.parse((ROOT / path).read_text(encoding="utf-8")).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)
