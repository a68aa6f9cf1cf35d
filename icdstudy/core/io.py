"""Atomic file writes and JSON-lines helpers: a crashed stage never leaves half a file."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_tree(src: str | Path, dest: str | Path, only: Iterable[str] | None = None) -> None:
    """Copy folder ``src`` to ``dest``, replacing what was there: copied beside it, then renamed,
    so a kill leaves the old folder or the new one, never half of it. ``only``: just these paths
    relative to ``src`` (those that exist)."""

    src, dest = Path(src), Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if only is None:
        shutil.copytree(src, tmp)
    else:
        tmp.mkdir(parents=True)
        for rel in only:
            if (src / rel).exists():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / rel, tmp / rel)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def write_json(path: str | Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: str | Path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    return list(iter_jsonl(path))


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield rows; a truncated last line (an interrupted append) is skipped, not fatal."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                return


class JsonlAppender:
    """Append rows and flush each one, so an interrupted run keeps what it finished."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_splits(data_dir: str | Path, *names: str) -> list[list[dict]]:
    """The named splits (``train``, ``test`` ...) of a processed data folder; ValueError naming
    the first one that is missing rows."""
    out = []
    for name in names:
        path = Path(data_dir) / f"{name}.jsonl"
        rows = read_jsonl(path) if path.exists() else []
        if not rows:
            raise ValueError(f"{path}: no {name} samples; rerun `dvc repro prepare` (it refuses empty splits)")
        out.append(rows)
    return out
