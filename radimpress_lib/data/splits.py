"""Split assignment (seeded groups of equal findings), grouping by split and seeded limits."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import datasets

from radimpress_lib.core.schema import SPLITS, records_to_dataset
from radimpress_lib.data.benchmark import normalize_findings


def seeded_group_split(
    findings: Sequence[str], seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> list[str]:
    """Seeded train/validate/test assignment that keeps identical normalised findings together.

    Groups of equal normalised findings are shuffled with ``seed`` and dealt to test, then
    validate, until each holds its fraction of the rows (at least one row each when there
    are three or more groups); the rest is train. Equal findings never straddle splits.
    """
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")
    keys = [normalize_findings(t) for t in findings]
    sizes = Counter(keys)
    groups = sorted(sizes)
    random.Random(seed).shuffle(groups)
    n = len(keys)
    enough = len(groups) >= 3
    targets = {
        "test": max(int(round(n * fractions[2])), 1 if enough else 0),
        "validate": max(int(round(n * fractions[1])), 1 if enough else 0),
    }
    assignment: dict[str, str] = {}
    filled: Counter[str] = Counter()
    for group in groups:
        for split in ("test", "validate"):
            if filled[split] < targets[split]:
                break
        else:
            split = "train"
        assignment[group] = split
        filled[split] += sizes[group]
    return [assignment[k] for k in keys]


def _with_split(ds: datasets.Dataset, splits: list[str]) -> datasets.DatasetDict:
    """DatasetDict of the rows of ``ds`` grouped by ``splits`` (their ``split`` field set accordingly)."""
    grouped: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for record, split in zip(ds.to_list(), splits, strict=True):
        record["split"] = split
        grouped[split].append(record)
    return datasets.DatasetDict({s: records_to_dataset(grouped[s]) for s in SPLITS})


def _by_existing_split(ds: datasets.Dataset) -> datasets.DatasetDict:
    """DatasetDict of the rows of ``ds`` grouped by their own ``split`` field."""
    return _with_split(ds, list(ds["split"]))


def _subsample(ds: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    """Seeded subsample of ``limit`` rows, original order kept; unchanged when small enough."""
    if limit is None or len(ds) <= limit:
        return ds
    if limit <= 0:
        raise ValueError(f"limits must be positive, got {limit}")
    chosen = sorted(random.Random(seed).sample(range(len(ds)), limit))
    return ds.select(chosen)
