"""Resolve hand-annotated gold sentences (stored as train-split references, never as text) from the data."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from radimpress_lib.clinical.labeler import split_sentences

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    env = os.environ.get("RADIMPRESS_DATA")
    return Path(env) if env else (REPO_ROOT / ".." / "shared" / "data").resolve()


def gold_sentences(gold: Iterable[Any]) -> dict[tuple[int, str, int], str]:
    """``{(idx, field, sentence_no): sentence}`` for gold rows with ``idx, field, sentence_no, sha256_8``.

    Skips the calling test when the benchmark data is absent; a changed sentence is a hash-drift error.
    """
    gold = list(gold)
    path = data_dir() / "opi-benchmark" / "train.jsonl"
    if not path.is_file():
        pytest.skip(f"Open-i benchmark data not found at {path} (set RADIMPRESS_DATA)")
    wanted = {(g.idx, g.field) for g in gold}
    texts: dict[tuple[int, str], str] = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            for field in ("inputs", "target"):
                if (row["idx"], field) in wanted:
                    texts[(row["idx"], field)] = row[field]
    out: dict[tuple[int, str, int], str] = {}
    for g in gold:
        sentence = split_sentences(texts[(g.idx, g.field)])[g.sentence_no]
        digest = hashlib.sha256(sentence.encode("utf-8")).hexdigest()[:8]
        assert digest == g.sha256_8, f"train idx {g.idx} {g.field} sentence {g.sentence_no}: hash drift"
        out[(g.idx, g.field, g.sentence_no)] = sentence
    return out
