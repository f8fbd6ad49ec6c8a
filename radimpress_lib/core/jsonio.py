"""One atomic JSON writer for every result file (write, merge), and JSON-ready records.

Every JSON file a run writes (metrics, summaries, training results, manifests, timings) goes
through :func:`write_json`: UTF-8, indent 2, NaN / infinity written as ``null`` (strict JSON),
numpy scalars converted, no absolute machine path (the checkout becomes relative, the data
folder ``$RADIMPRESS_DATA``), and written to a temporary file in the same folder that then
replaces the target, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from radimpress_lib.core.paths import portable_text


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf) replaced by None and no absolute machine path in a
    string (:func:`radimpress_lib.core.paths.portable_text`), recursively."""
    if isinstance(value, str):
        return portable_text(value)
    if isinstance(value, Path):
        return portable_text(str(value))
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, Mapping):
        return {(portable_text(k) if isinstance(k, str) else k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: str | os.PathLike[str], payload: Any, *, sort_keys: bool = False) -> Path:
    """Write ``payload`` as JSON atomically (temporary file + rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(payload), indent=2, allow_nan=False, ensure_ascii=False, sort_keys=sort_keys,
                      default=_jsonable) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def merge_json(path: str | os.PathLike[str], entries: Mapping[str, Any], *,
               check: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Merge top-level keys into a JSON object file (other keys kept), e.g. ``reward_model`` into metrics.json.

    ``check(current)`` may raise before anything is written (e.g. a sample size that must agree).
    """
    path = Path(path)
    current: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if check is not None:
        check(current)
    current.update(entries)
    write_json(path, current)
    return current


def frame_records(frame) -> list[dict[str, Any]]:
    """A DataFrame as JSON-ready records: missing values (NaN / NA) become None."""
    import pandas as pd

    return [{k: (None if not isinstance(v, (list, dict)) and pd.isna(v) else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]
