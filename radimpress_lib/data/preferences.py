"""Preference pairs: the one format shared by reward modelling, DPO and physician feedback.

Every source of preferences (style pairs and factual-corruption pairs built from the
data, physician judgements exported from the review store) writes the same JSONL rows::

    {"report_id": "...",                      # the report the pair is about
     "record": {"findings": ..., "indication": ..., "comparison": ..., ...},  # prompt fields
                                              # (+ similar_impressions: retrieval context)
     "style": null | "...",                   # style slot of the prompt (radiologist id / examples)
     "chosen": "...", "rejected": "...",      # two impressions, chosen preferred
     "pair_type": "style" | "factual:<corruption>" | "review:<edited|preferred|rating>",
     "source": "..."}                         # who made it (generator name, reviewer id, ...)

and :func:`radimpress_lib.train.reward.to_trl_dataset` turns them into TRL's *explicit prompt*
preference format (the prompt rendered with the layout of fine-tuning), which ``DPOTrainer`` and
``RewardTrainer`` read directly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from radimpress_lib.core.jsonl import iter_jsonl_rows, write_jsonl_atomic

__all__ = [
    "PAIR_FIELDS",
    "PairError",
    "make_pair",
    "pair_type_counts",
    "read_pairs_jsonl",
    "validate_pair",
    "write_pairs_jsonl",
]

#: Required keys of a pair row.
PAIR_FIELDS = ("report_id", "record", "style", "chosen", "rejected", "pair_type", "source")

#: Prompt fields copied from a canonical record into a pair (the rest is not needed to rebuild the prompt).
_RECORD_FIELDS = ("findings", "indication", "comparison", "modality", "body_part", "similar_impressions")

#: Allowed pair-type families (the part before ':').
PAIR_FAMILIES = ("style", "factual", "review")


class PairError(ValueError):
    """A malformed preference pair."""


def make_pair(
    record: Mapping[str, Any],
    chosen: str,
    rejected: str,
    pair_type: str,
    source: str,
    style: str | None = None,
) -> dict[str, Any]:
    """Build a validated pair row from a canonical record and two impressions."""
    pair = {
        "report_id": str(record.get("report_id", "")),
        "record": {k: record.get(k) for k in _RECORD_FIELDS if record.get(k) is not None},
        "style": style,
        "chosen": chosen,
        "rejected": rejected,
        "pair_type": pair_type,
        "source": source,
    }
    validate_pair(pair)
    return pair


def validate_pair(pair: Mapping[str, Any], where: str = "pair") -> None:
    """Raise :class:`PairError` naming ``where`` and the field when ``pair`` is malformed."""
    missing = [k for k in PAIR_FIELDS if k not in pair]
    if missing:
        raise PairError(f"{where}: missing fields {missing}")
    if not isinstance(pair["record"], Mapping) or not str(pair["record"].get("findings") or "").strip():
        raise PairError(f"{where}: field 'record' must hold non-empty 'findings'")
    for key in ("chosen", "rejected"):
        if not isinstance(pair[key], str) or not pair[key].strip():
            raise PairError(f"{where}: field {key!r} must be a non-empty string")
    if pair["chosen"].strip() == pair["rejected"].strip():
        raise PairError(f"{where}: 'chosen' and 'rejected' are the same text")
    family = str(pair["pair_type"]).split(":", 1)[0]
    if family not in PAIR_FAMILIES:
        raise PairError(f"{where}: field 'pair_type' {pair['pair_type']!r} must start with one of {PAIR_FAMILIES}")
    if pair["style"] is not None and not isinstance(pair["style"], str):
        raise PairError(f"{where}: field 'style' must be a string or null")


def write_pairs_jsonl(pairs: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Validate and write pairs as JSONL, atomically (temp file renamed into place)."""
    def rows() -> Iterator[dict[str, Any]]:
        for i, pair in enumerate(pairs):
            validate_pair(pair, where=f"pair {i}")
            yield {k: pair[k] for k in PAIR_FIELDS}

    return write_jsonl_atomic(rows(), path)


def read_pairs_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read pairs; a bad line is an error naming the file, line and field."""
    out = []
    for where, pair in iter_jsonl_rows(path, error=PairError):
        validate_pair(pair, where=where)
        out.append(pair)
    return out


def pair_type_counts(pairs: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Number of pairs per ``pair_type``."""
    return dict(sorted(Counter(p["pair_type"] for p in pairs).items()))


