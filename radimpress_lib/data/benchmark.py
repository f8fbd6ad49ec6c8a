"""The Open-i findings -> impression benchmark split: loading, the join to Open-i, the leakage guard."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets

from radimpress_lib.core.schema import SPLITS, records_to_dataset
from radimpress_lib.data.locate import _how_to_fix
from radimpress_lib.data.sources import _load_table, load_openi_csv, load_openi_xml
from radimpress_lib.data.validation import DataValidationError, LoadReport

#: Canonical field -> key of the benchmark JSONL rows.
BENCHMARK_COLUMNS: dict[str, str] = {"report_id": "idx", "findings": "inputs", "impression": "target"}


#: Fields copied from the joined Open-i report into a benchmark record.
JOINED_FIELDS = ("modality", "body_part", "indication", "comparison", "mesh", "problems")


def normalize_findings(text: str) -> str:
    """Join key for findings: lower-case, whitespace runs collapsed to one space, stripped."""
    return " ".join(text.lower().split())


def remove_test_leakage(train_ds: datasets.Dataset, test_ds: datasets.Dataset) -> tuple[datasets.Dataset, int]:
    """Drop every row of ``train_ds`` whose normalised findings occur in ``test_ds``.

    Returns:
        ``(filtered dataset, number of rows removed)``; the input is returned unchanged
        when nothing collides.
    """
    test_keys = {normalize_findings(text) for text in test_ds["findings"]}
    keep = [i for i, text in enumerate(train_ds["findings"]) if normalize_findings(text) not in test_keys]
    removed = len(train_ds) - len(keep)
    if removed == 0:
        return train_ds, 0
    return train_ds.select(keep), removed


@dataclass
class JoinStats:
    """How the rows of one benchmark split joined to the Open-i reports (by normalised findings).

    Attributes:
        rows: benchmark rows kept by validation.
        joined: rows whose findings match at least one report.
        unjoined: rows matching no report (``report_id = 'opi-<idx>'``, no clinical data).
        ambiguous: joined rows whose findings are shared by several reports.
        resolved_by_impression: ambiguous rows where exactly one candidate has the target impression.
        impression_mismatch: joined rows where no candidate's impression equals the target.
        shared_report: joined rows whose preferred reports were all taken by earlier rows (duplicates
            in the benchmark); they copy the clinical data but keep ``report_id = 'opi-<idx>'``.
    """

    rows: int = 0
    joined: int = 0
    unjoined: int = 0
    ambiguous: int = 0
    resolved_by_impression: int = 0
    impression_mismatch: int = 0
    shared_report: int = 0


@dataclass
class BenchmarkReport:
    """Per-split load reports, the report file used for the join, and the join counts."""

    splits: dict[str, LoadReport]
    reports: LoadReport | None
    join: dict[str, JoinStats] = field(default_factory=dict)

    def summary(self) -> str:
        """Readable multi-line text."""
        parts = [r.summary() for r in self.splits.values()]
        if self.reports is not None:
            parts.append("joined against " + self.reports.summary())
            for split, stats in self.join.items():
                counts = ", ".join(f"{k} {v}" for k, v in asdict(stats).items())
                parts.append(f"join {split}: {counts}")
        else:
            parts.append("no Open-i reports given: no join (indication/comparison empty)")
        return "\n".join(parts)

    def to_dict(self, max_issues: int | None = 50) -> dict[str, Any]:
        """JSON-safe dict."""
        return {
            "splits": {k: v.to_dict(max_issues) for k, v in self.splits.items()},
            "reports": self.reports.to_dict(max_issues) if self.reports is not None else None,
            "join": {k: asdict(v) for k, v in self.join.items()},
        }


def _join(split_records: dict[str, list[dict[str, Any]]], reports: list[dict[str, Any]]) -> dict[str, JoinStats]:
    """Join benchmark records to Open-i reports in place; one report serves at most one row.

    Candidates are the reports with the same normalised findings. Those whose normalised
    impression equals the target are preferred; among equals the first unused one (file
    order) is taken. Splits are processed test, validate, train so that the evaluation
    rows get first pick. Findings and impression stay the benchmark's text.
    """
    by_findings: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for report in reports:
        by_findings[normalize_findings(report["findings"])].append(report)
    used: set[str] = set()
    stats: dict[str, JoinStats] = {}
    for split in ("test", "validate", "train"):
        if split not in split_records:
            continue
        st = JoinStats()
        for record in split_records[split]:
            st.rows += 1
            idx = record["report_id"]
            candidates = by_findings.get(normalize_findings(record["findings"]), [])
            if not candidates:
                st.unjoined += 1
                record["report_id"] = f"opi-{idx}"
                continue
            st.joined += 1
            target = normalize_findings(record["impression"])
            matching = [c for c in candidates if normalize_findings(c["impression"]) == target]
            if len(candidates) > 1:
                st.ambiguous += 1
                if len(matching) == 1:
                    st.resolved_by_impression += 1
            if not matching:
                st.impression_mismatch += 1
            pool = matching or candidates
            pick = next((c for c in pool if c["report_id"] not in used), None)
            if pick is None:
                st.shared_report += 1
                pick = pool[0]
                record["report_id"] = f"opi-{idx}"
            else:
                used.add(pick["report_id"])
                record["report_id"] = pick["report_id"]
            for name in JOINED_FIELDS:
                record[name] = list(pick[name]) if isinstance(pick[name], list) else pick[name]
        stats[split] = st
    for split in split_records:
        if split not in stats:
            stats[split] = JoinStats()
    return {s: stats[s] for s in split_records}


def _load_benchmark_split(
    path: Path, split: str, *, strict: bool, max_chars: int | None
) -> tuple[list[dict[str, Any]], LoadReport]:
    return _load_table(
        path,
        BENCHMARK_COLUMNS,
        required=tuple(BENCHMARK_COLUMNS),
        optional_absent_ok=False,
        strict=strict,
        max_chars=max_chars,
        split=split,
    )


def load_benchmark(
    bench_dir: str | os.PathLike[str],
    reports_csv: str | os.PathLike[str] | None = None,
    *,
    reports_xml: str | os.PathLike[str] | None = None,
    strict: bool = False,
    max_chars: int | None = 4000,
) -> tuple[datasets.DatasetDict, BenchmarkReport]:
    """Load the opi-benchmark split (``{train,validate,test}.jsonl`` of ``{"idx","inputs","target"}``).

    Each row is joined to the Open-i reports (``reports_csv``, else ``reports_xml``) by
    normalised findings to add indication, comparison, MeSH and problems (see ``_join``);
    ``report_id`` is then the Open-i uid, else ``'opi-<idx>'``. Without reports the rows
    keep empty clinical fields and ``report_id = 'opi-<idx>'``. The report file is always
    read leniently (its rows without impression are useless for the join, not errors);
    ``strict`` applies to the benchmark files.

    Returns:
        ``(DatasetDict{'train','validate','test'}, BenchmarkReport)``.
    """
    bench_dir = Path(bench_dir)
    split_records: dict[str, list[dict[str, Any]]] = {}
    split_reports: dict[str, LoadReport] = {}
    for split in SPLITS:
        path = bench_dir / f"{split}.jsonl"
        if not path.is_file():
            raise DataValidationError(
                f"{path}: benchmark split file missing (expected {[f'{s}.jsonl' for s in SPLITS]} in {bench_dir}). "
                + _how_to_fix(),
                file=str(path),
            )
        split_records[split], split_reports[split] = _load_benchmark_split(
            path, split, strict=strict, max_chars=max_chars
        )
    seen: dict[str, str] = {}
    for split, records in split_records.items():
        for record in records:
            other = seen.setdefault(record["report_id"], split)
            if other != split:
                raise DataValidationError(
                    f"{bench_dir}: idx {record['report_id']} occurs in both {other}.jsonl and {split}.jsonl",
                    file=str(bench_dir),
                    field="idx",
                )
    reports_report: LoadReport | None = None
    if reports_csv is not None:
        reports_ds, reports_report = load_openi_csv(reports_csv, strict=False, max_chars=max_chars)
    elif reports_xml is not None:
        reports_ds, reports_report = load_openi_xml(reports_xml, strict=False, max_chars=max_chars)
    if reports_report is not None:
        join = _join(split_records, reports_ds.to_list())
    else:
        for records in split_records.values():
            for record in records:
                record["report_id"] = f"opi-{record['report_id']}"
        join = {}
    dd = datasets.DatasetDict({s: records_to_dataset(split_records[s]) for s in SPLITS})
    return dd, BenchmarkReport(splits=split_reports, reports=reports_report, join=join)


def _benchmark_membership(
    findings: Sequence[str], bench: Mapping[str, datasets.Dataset]
) -> tuple[list[str], Counter[str]]:
    """Split of each report by membership of its normalised findings: test, else validate, else train.

    Reports whose findings are in no benchmark split get ``''`` (the caller decides: Open-i
    reports go to train, where they cannot leak into test; a user's own reports are split
    with :func:`~radimpress_lib.data.splits.seeded_group_split`). ``counts`` holds the members per split.
    """
    keys = {s: {normalize_findings(t) for t in bench[s]["findings"]} for s in SPLITS}
    out: list[str] = []
    counts: Counter[str] = Counter()
    for text in findings:
        key = normalize_findings(text)
        split = next((s for s in ("test", "validate", "train") if key in keys[s]), "")
        out.append(split)
        if split:
            counts[split] += 1
    return out, counts
