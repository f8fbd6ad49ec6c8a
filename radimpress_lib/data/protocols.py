"""The two evaluation protocols of the Open-i findings -> impression benchmark.

The benchmark (Van Veen et al., Nature Medicine 2024; ``opi-benchmark/``) repeats findings
across its splits: 93 of the 343 test reports (65 of the 250 the paper scored) have findings
text that also occurs in train + validate, mostly with the same impression. Results are
therefore reported under two protocols:

* ``published`` (protocol A, "as published"): what the paper did, so that its numbers can be
  set beside ours. Train and validate **as given** (no leakage guard: a training report whose
  findings equal a test report's is kept), test = the 250-report subset the paper scored
  (``test_subset250.json``; rule: ``numpy.random.seed(0);
  numpy.random.choice(sorted(test idx), 250, replace=False)``), and the paper's metric
  implementation (per-sample unstemmed ROUGE-L, per-sample BLEU without smoothing; see
  :mod:`radimpress_lib.evaluation.published`).
* ``deduplicated`` (protocol B, ours, the headline): the leakage guard of
  :func:`~radimpress_lib.data.loading.load_from_config` removes those training reports; all
  343 test reports; stemmed ROUGE and corpus sacreBLEU.

Under both, each test report is **leaky** (its normalised findings, see
:func:`~radimpress_lib.data.benchmark.normalize_findings`, occur in the benchmark's train +
validate as given) or **clean**, and every metric is also reported on each part.

Which benchmark ``idx`` a record is: a benchmark record's ``report_id`` is the Open-i uid it
joined to (``opi-<idx>`` only when it joined to none), but its ``source`` field keeps the line
of the benchmark file it was read from (``opi-benchmark/test.jsonl:<line>``; the join copies
clinical fields only). :func:`benchmark_idx` reads that line back and checks the findings, so
the mapping is exact even where findings repeat within the test split (one text occurs 8 times).

The test split is never used for training, tuning or in-context examples under either
protocol: :func:`published_training_data` returns train and validate only.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from radimpress_lib.core.artifacts import PROTOCOLS
from radimpress_lib.core.config import Params
from radimpress_lib.data.benchmark import load_benchmark, normalize_findings
from radimpress_lib.data.locate import (
    BENCHMARK_DIR_NAME,
    DataNotFoundError,
    _bench_paths,
    _openi_paths,
    resolve_data_dir,
)
from radimpress_lib.data.splits import _subsample

__all__ = [
    "DEDUPLICATED",
    "PROTOCOLS",
    "PUBLISHED",
    "SUBSET_FILE_NAME",
    "SUBSET_SEED",
    "SUBSET_SIZE",
    "ProtocolUnavailable",
    "PublishedTestSubset",
    "benchmark_dir",
    "benchmark_idx",
    "leaky_flags",
    "published_subset_rule",
    "published_test_subset",
    "published_training_data",
    "read_published_subset",
    "seen_findings",
]

DEDUPLICATED, PUBLISHED = PROTOCOLS

#: The file (in ``opi-benchmark/``) listing the benchmark idx of the 250 test reports the paper scored.
SUBSET_FILE_NAME = "test_subset250.json"
#: Its size and the numpy seed of its rule (clin-summ ``n_samples=250``, ``np.random.seed(0)``).
SUBSET_SIZE = 250
SUBSET_SEED = 0

_SOURCE_RE = re.compile(r"(?:^|/)(train|validate|test)\.jsonl:(\d+)$")


class ProtocolUnavailable(RuntimeError):
    """The ``published`` protocol cannot be run on this data (the message says why)."""


def benchmark_dir(params: Params) -> Path:
    """The run's ``opi-benchmark/`` folder (train/validate/test JSONL).

    Raises:
        ProtocolUnavailable: no data folder (e.g. the synthetic sample of a CI run) or no
            benchmark files in it.
    """
    try:
        root = resolve_data_dir(params.data.dir)
    except DataNotFoundError:  # messages stay free of machine paths: they are shown in rendered notebooks
        raise ProtocolUnavailable("no data folder was found (a run on the synthetic sample?), so there is no "
                                  "benchmark split") from None
    if _bench_paths(root) is None:
        raise ProtocolUnavailable(f"the data folder has no {BENCHMARK_DIR_NAME}/{{train,validate,test}}.jsonl")
    return root / BENCHMARK_DIR_NAME


# ---------------------------------------------------------------------------
# The 250-report subset
# ---------------------------------------------------------------------------


def published_subset_rule(test_idx: Iterable[int], size: int = SUBSET_SIZE, seed: int = SUBSET_SEED) -> list[int]:
    """The rule that made the paper's subset: ``np.random.seed(seed); np.random.choice(sorted(idx), size, replace=False)``.

    Uses a private ``numpy.random.RandomState(seed)`` (the legacy generator behind
    ``np.random.seed``, whose stream numpy keeps stable), so the global random state is not
    touched. Returns the chosen idx sorted (the file lists them sorted).
    """
    pool = np.array(sorted(int(i) for i in test_idx))
    if len(set(pool.tolist())) != len(pool):
        raise ValueError("test idx must be unique")
    if size > len(pool):
        raise ValueError(f"cannot choose {size} of {len(pool)} test reports")
    chosen = np.random.RandomState(seed).choice(pool, size, replace=False)
    return sorted(int(i) for i in chosen)


def read_published_subset(bench_dir: str | os.PathLike[str]) -> list[int]:
    """The benchmark idx of the paper's test subset, from ``<bench_dir>/test_subset250.json`` (sorted).

    Raises:
        ProtocolUnavailable: the file is missing.
        ValueError: the file is not ``{"idx": [unique integers]}``.
    """
    path = Path(bench_dir) / SUBSET_FILE_NAME
    if not path.is_file():
        raise ProtocolUnavailable(f"{BENCHMARK_DIR_NAME}/{SUBSET_FILE_NAME} (the published test subset) is missing")
    data = json.loads(path.read_text(encoding="utf-8"))
    idx = data.get("idx") if isinstance(data, Mapping) else None
    if not isinstance(idx, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
        raise ValueError(f"{path}: expected an object with 'idx': a list of integers")
    if len(set(idx)) != len(idx):
        raise ValueError(f"{path}: duplicate idx")
    return sorted(idx)


@lru_cache(maxsize=8)
def _cached_lines(path: str, mtime_ns: int) -> tuple[bytes, ...]:
    data = Path(path).read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return tuple(data.split(b"\n"))


def _benchmark_lines(path: Path) -> tuple[bytes, ...]:
    """The lines of a benchmark JSONL file, numbered as the loader numbers them (1-based, BOM dropped)."""
    return _cached_lines(str(path), path.stat().st_mtime_ns)


def _benchmark_rows(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a benchmark JSONL file (blank and malformed lines skipped, as the loader counts them)."""
    rows = []
    for line in _benchmark_lines(path):
        if line.strip():
            try:
                row = json.loads(line.decode("utf-8", errors="surrogateescape"))
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def benchmark_idx(records: Sequence[Mapping[str, Any]], bench_dir: str | os.PathLike[str]) -> list[int | None]:
    """The benchmark ``idx`` of each record, from the file line its ``source`` names.

    A benchmark record's ``source`` is ``opi-benchmark/<split>.jsonl:<line>``; that line of
    ``<bench_dir>/<split>.jsonl`` is read back and its ``idx`` returned. Records read from
    another file (Open-i CSV/XML, a user's file) get ``None``.

    Raises:
        ValueError: the line's findings differ from the record's (the file changed since loading).
    """
    bench_dir = Path(bench_dir)
    out: list[int | None] = []
    for record in records:
        match = _SOURCE_RE.search(str(record.get("source") or ""))
        if match is None:
            out.append(None)
            continue
        path = bench_dir / f"{match.group(1)}.jsonl"
        lines = _benchmark_lines(path)
        number = int(match.group(2))
        row = json.loads(lines[number - 1].decode("utf-8", errors="surrogateescape")) if number <= len(lines) else {}
        if normalize_findings(str(row.get("inputs", ""))) != normalize_findings(record["findings"]):
            raise ValueError(f"{path}:{number} does not hold the findings of record {record.get('report_id')!r}; "
                             "was the benchmark file changed after loading?")
        out.append(int(row["idx"]))
    return out


# ---------------------------------------------------------------------------
# Leaky / clean
# ---------------------------------------------------------------------------


def leaky_flags(records: Sequence[Mapping[str, Any]], seen: Iterable[str]) -> list[bool]:
    """Whether each record's normalised findings occur among ``seen`` (normalised findings keys)."""
    keys = seen if isinstance(seen, (set, frozenset)) else set(seen)
    return [normalize_findings(r["findings"]) in keys for r in records]


def seen_findings(params: Params, pool: Sequence[Mapping[str, Any]] = ()) -> tuple[set[str], str]:
    """Normalised findings a test report is *leaky* against, and where they come from.

    With the benchmark files: the findings of the benchmark's train + validate **as given**
    (all rows, before the leakage guard and the run's limits), so "leaky" means the same under
    both protocols and for every run. Without them (the synthetic sample, a user's reports):
    the findings of ``pool`` (the run's own train + validate, after the leakage guard: then
    nothing is leaky).
    """
    try:
        bench = benchmark_dir(params)
    except ProtocolUnavailable:
        return {normalize_findings(r["findings"]) for r in pool}, (
            "the run's train+validate after the leakage guard (no benchmark files)")
    keys = {normalize_findings(row["inputs"]) for split in ("train", "validate")
            for row in _benchmark_rows(bench / f"{split}.jsonl") if isinstance(row.get("inputs"), str)}
    return keys, "the benchmark's train+validate as given (before the leakage guard)"


# ---------------------------------------------------------------------------
# Protocol A: training data and the test subset
# ---------------------------------------------------------------------------


def published_training_data(params: Params) -> tuple[datasets.DatasetDict, dict[str, Any]]:
    """Train and validate **as given** for the ``published`` protocol; never the test split.

    The benchmark files are read and joined to the Open-i reports exactly as
    :func:`~radimpress_lib.data.load_data` does (same records, ``report_id`` and clinical
    fields), but **without** the leakage guard: training reports whose findings also occur
    in the test split stay (as in the paper). The run's limits apply (``data.limit_train``
    to train, ``data.limit_eval`` to validate, seeded by ``run.seed``). Train is for
    training and in-context / retrieval examples, validate for model selection.

    Returns:
        ``(DatasetDict{'train', 'validate'}, info)``; ``info`` holds ``protocol``,
        ``leakage_guard`` (False), ``sizes_before_limits``, ``split_sizes``, ``join`` counts and
        ``files_read``.

    Raises:
        ProtocolUnavailable: the run does not read the benchmark (``data.source`` other than
            ``benchmark``), or its files are missing.
    """
    d = params.data
    if d.source != "benchmark":
        raise ProtocolUnavailable(f"data.source is {d.source!r}: the published protocol needs the benchmark split "
                                  "(data.source: benchmark)")
    bench = benchmark_dir(params)
    openi = _openi_paths(bench.parent)
    dd, report = load_benchmark(bench, reports_csv=openi.get("csv"),
                                reports_xml=None if "csv" in openi else openi.get("xml"),
                                strict=d.strict, max_chars=d.max_chars)
    sizes = {s: len(dd[s]) for s in ("train", "validate")}
    limits = {"train": d.limit_train, "validate": d.limit_eval}
    out = datasets.DatasetDict({s: _subsample(dd[s], limits[s], params.run.seed) for s in ("train", "validate")})
    reports_file = openi.get("csv", openi.get("xml"))
    info = {
        "protocol": PUBLISHED,
        "leakage_guard": False,
        "sizes_before_limits": sizes,
        "limits": {"limit_train": d.limit_train, "limit_eval": d.limit_eval},
        "split_sizes": {s: len(out[s]) for s in out},
        "join": {s: asdict(v) for s, v in report.join.items() if s != "test"},
        "files_read": ([str(reports_file)] if reports_file else []) + [str(bench / f"{s}.jsonl")
                                                                      for s in ("train", "validate")],
    }
    return out, info


@dataclass
class PublishedTestSubset:
    """The run's test reports that belong to the paper's 250-report subset.

    Attributes:
        records: the run's test records in the subset (run order), each with ``benchmark_idx``.
        positions: their positions in the run's test split (to pick other systems' drafts).
        leaky: per record, whether its findings occur in the benchmark's train+validate as given.
        subset_size: the subset's size in the file (250).
        n_test_split: test reports in the run (343 on the full data, fewer with ``data.limit_eval``).
        rule_reproduced: whether :func:`published_subset_rule` over the benchmark's test idx
            gives the file's list.
    """

    records: list[dict[str, Any]]
    positions: list[int]
    leaky: list[bool]
    subset_size: int
    n_test_split: int
    rule_reproduced: bool
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Reports scored under the published protocol."""
        return len(self.records)

    @property
    def complete(self) -> bool:
        """Whether every report of the paper's subset is scored (False when the run's test split is limited)."""
        return self.n == self.subset_size

    def summary(self) -> str:
        """One honest sentence about what is scored."""
        text = (f"{self.n} of the {self.subset_size} test reports the paper scored "
                f"({sum(self.leaky)} leaky, {self.n - sum(self.leaky)} clean)")
        if not self.complete:
            text += (f": the run's test split holds {self.n_test_split} reports (data limited), so only their "
                     f"intersection with the subset is scored and the numbers are not comparable to the paper's")
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description (for ``metrics_published.json``)."""
        return {"file": f"{BENCHMARK_DIR_NAME}/{SUBSET_FILE_NAME}", "size": self.subset_size, "n_scored": self.n,
                "complete": self.complete, "n_test_split": self.n_test_split, "rule_reproduced": self.rule_reproduced,
                "rule": f"numpy.random.seed({SUBSET_SEED}); numpy.random.choice(sorted test idx, {SUBSET_SIZE}, "
                        "replace=False)", "n_leaky": sum(self.leaky), "n_clean": self.n - sum(self.leaky),
                "summary": self.summary(), "notes": list(self.notes)}


def published_test_subset(
    test_records: Sequence[Mapping[str, Any]], bench_dir: str | os.PathLike[str], seen: Iterable[str]
) -> PublishedTestSubset:
    """The run's test records that are in the paper's 250-report subset, with their leaky flags.

    ``test_records`` is the run's (protocol-B) test split: the guard never touches test, so its
    records are the benchmark's test rows (all 343, or the run's ``data.limit_eval`` sample).
    ``seen``: normalised findings for the leaky flags (:func:`seen_findings`).

    Raises:
        ProtocolUnavailable: the records were not read from the benchmark's test file, or the
            subset file is missing.
    """
    bench_dir = Path(bench_dir)
    subset = read_published_subset(bench_dir)
    idx = benchmark_idx(test_records, bench_dir)
    if not idx or any(i is None for i in idx):
        raise ProtocolUnavailable("the test records were not read from the benchmark's test.jsonl (data.source: "
                                  "benchmark is needed to find the published subset)")
    try:
        all_test = [int(row["idx"]) for row in _benchmark_rows(bench_dir / "test.jsonl")]
        reproduced = published_subset_rule(all_test, len(subset)) == subset
    except (KeyError, TypeError, ValueError):
        reproduced = False
    wanted = set(subset)
    positions = [p for p, i in enumerate(idx) if i in wanted]
    records = [dict(test_records[p]) | {"benchmark_idx": idx[p]} for p in positions]
    notes = [] if reproduced else ["the subset file differs from its rule over this benchmark's test idx"]
    return PublishedTestSubset(records=records, positions=positions, leaky=leaky_flags(records, seen),
                               subset_size=len(subset), n_test_split=len(test_records), rule_reproduced=reproduced,
                               notes=notes)
