"""JSONL files: atomic writing, and reading rows that must carry some fields (errors name file, line, field)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["iter_jsonl_rows", "write_jsonl_atomic"]


def iter_jsonl_rows(
    path: str | Path,
    required: Sequence[str] = (),
    error: Callable[[str], Exception] = ValueError,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("<path>:<line>", row)`` for each non-blank line of a JSONL file.

    A line that is not JSON, not an object, or lacks a ``required`` field raises ``error``
    with a message naming the file and line (and the missing fields).
    """
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise error(f"{where}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise error(f"{where}: missing fields {missing}")
            yield where, row


def write_jsonl_atomic(rows: Iterable[Any], path: str | Path) -> Path:
    """Write one JSON object per row (UTF-8, not ASCII-escaped) to a temp file renamed into place.

    The parent folder is created; a row that raises while being produced (e.g. a validating
    generator) leaves any previous file untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
