"""The single entry the notebooks and the CLI use to load a run's reports (:func:`load_data`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import datasets

from radimpress_lib.core.config import Params
from radimpress_lib.core.paths import PROJECT_ROOT
from radimpress_lib.core.schema import SPLITS, records_to_dataset
from radimpress_lib.data.benchmark import (
    _benchmark_membership,
    _load_benchmark_split,
    load_benchmark,
    remove_test_leakage,
)
from radimpress_lib.data.download import OPENI_ARCHIVE_NAME, DownloadError, download_openi
from radimpress_lib.data.locate import (
    BENCHMARK_DIR_NAME,
    ENV_DATA_DIR,
    OPENI_CSV_NAME,
    OPENI_XML_DIR_NAME,
    DataNotFoundError,
    _bench_paths,
    _find_existing_data,
    _how_to_fix,
    _openi_paths,
    default_download_dir,
    resolve_data_dir,
)
from radimpress_lib.data.sources import load_openi_csv, load_openi_xml, load_user, resolve_user_column_map
from radimpress_lib.data.scope import StudyScope
from radimpress_lib.data.splits import _by_existing_split, _subsample, _with_split, seeded_group_split
from radimpress_lib.data.synthetic import SYNTHETIC_NOTE, write_synthetic_reports
from radimpress_lib.data.validation import DataValidationError

#: Accepted ``data_source`` values of :func:`load_from_config`.
DATA_SOURCES = ("benchmark", "openi_csv", "openi_xml", "user")


def _nothing_configured(data_dir: str | os.PathLike[str] | None) -> bool:
    """No data folder asked for: no ``data_dir``, no ``$RADIMPRESS_DATA`` (a folder named but missing is an error)."""
    return not (data_dir and str(data_dir)) and not os.environ.get(ENV_DATA_DIR, "").strip()


def synthetic_data_dir() -> Path:
    """Where the synthetic sample is written at run time: ``<project root>/.cache/synthetic-data`` (not committed)."""
    return PROJECT_ROOT / ".cache" / "synthetic-data"


def _plan(
    data_dir: str | os.PathLike[str] | None,
    data_source: str,
    user_data_path: str | os.PathLike[str] | None,
    synthetic_fallback: bool = False,
) -> dict[str, Any]:
    """Which files :func:`load_from_config` reads, by role."""
    if data_source not in DATA_SOURCES:
        raise ValueError(f"data_source must be one of {list(DATA_SOURCES)}, got {data_source!r}")
    plan: dict[str, Any] = {"root": None, "bench": None, "csv": None, "xml": None, "user": None, "synthetic": False}
    if data_source != "user" and synthetic_fallback and _nothing_configured(data_dir):
        try:
            resolve_data_dir(None)
        except DataNotFoundError:  # no data folder anywhere: the labelled synthetic sample stands in
            folder = synthetic_data_dir()
            plan.update(root=folder, user=write_synthetic_reports(folder), synthetic=True)
            return plan
    if data_source == "user":
        if not user_data_path:
            raise ValueError("data_source='user' needs user_data_path (a CSV / JSONL / Parquet file)")
        user = Path(user_data_path).expanduser()
        if not user.is_absolute() and not user.exists() and (PROJECT_ROOT / user).exists():
            user = PROJECT_ROOT / user
        if not user.is_file():
            raise DataValidationError(f"{user}: user data file not found", file=str(user))
        plan["user"] = user
        try:
            root = resolve_data_dir(data_dir)
        except DataNotFoundError:
            if data_dir:  # an explicit folder that does not exist is an error
                raise
            return plan
        plan["root"] = root
        plan["bench"] = _bench_paths(root)
        return plan
    root = resolve_data_dir(data_dir)
    plan["root"] = root
    plan["bench"] = _bench_paths(root)
    openi = _openi_paths(root)
    if data_source == "benchmark":
        if plan["bench"] is None:
            raise DataNotFoundError(
                f"{root / BENCHMARK_DIR_NAME}: benchmark files {[f'{s}.jsonl' for s in SPLITS]} not found. "
                + _how_to_fix()
            )
        if "csv" in openi:
            plan["csv"] = openi["csv"]
        elif "xml" in openi:
            plan["xml"] = openi["xml"]
    elif data_source == "openi_csv":
        if "csv" not in openi:
            raise DataNotFoundError(f"{root / 'openi' / OPENI_CSV_NAME} not found. " + _how_to_fix())
        plan["csv"] = openi["csv"]
    else:
        if "xml" not in openi:
            raise DataNotFoundError(
                f"neither {root / 'openi' / OPENI_ARCHIVE_NAME} nor {root / 'openi' / OPENI_XML_DIR_NAME} found. "
                + _how_to_fix()
            )
        plan["xml"] = openi["xml"]
    return plan


def _plan_files(plan: Mapping[str, Any]) -> list[Path]:
    files: list[Path] = []
    for key in ("user", "csv", "xml"):
        if plan.get(key) is not None:
            files.append(Path(plan[key]))
    files.extend(plan.get("bench") or [])
    return files


def data_files_for_config(
    data_dir: str | os.PathLike[str] | None = None,
    data_source: str = "benchmark",
    user_data_path: str | os.PathLike[str] | None = None,
    synthetic_fallback: bool = False,
) -> list[Path]:
    """The files :func:`load_from_config` reads for these settings (for manifests / sha256)."""
    return _plan_files(_plan(data_dir, data_source, user_data_path, synthetic_fallback))


def data_files_read(report: Mapping[str, Any]) -> list[Path]:
    """The data files a :func:`load_from_config` call actually read, from its report dict."""
    return [Path(p) for p in report["files_read"]]


def load_from_config(
    data_dir: str | os.PathLike[str] | None = None,
    data_source: str = "benchmark",
    *,
    strict: bool = False,
    max_chars: int | None = 4000,
    user_data_path: str | os.PathLike[str] | None = None,
    user_column_map: Mapping[str, str] | None = None,
    limit_train: int | None = None,
    limit_eval: int | None = None,
    seed: int = 0,
    modalities: Sequence[str] | None = None,
    body_parts: Sequence[str] | None = None,
    synthetic_fallback: bool = False,
) -> tuple[datasets.DatasetDict, dict[str, Any]]:
    """Load the configured source into ``DatasetDict{'train','validate','test'}`` plus a report dict.

    Steps:

    1. read the source (``benchmark`` | ``openi_csv`` | ``openi_xml`` | ``user``), validating rows
       (``strict`` raises on the first bad row; lenient skips and counts); a user's reports of studies
       outside ``modalities`` / ``body_parts`` (:class:`~radimpress_lib.data.scope.StudyScope`; None or
       empty: any) are skipped and counted as ``out_of_scope`` (Open-i is chest radiographs throughout);
    2. splits: the benchmark's own; a user ``split`` column when mapped; otherwise, when the benchmark
       files are in the data folder, the benchmark split of each report by normalised-findings
       membership (test first, then validate, then train): Open-i reports in no benchmark split go to
       train, a user's own reports are split with :func:`seeded_group_split` (80/10/10, ``seed``);
       without the benchmark files every report is split with :func:`seeded_group_split`;
    3. leakage guard: rows of train and validate whose normalised findings occur in test are removed;
    4. limits: seeded subsample of train to ``limit_train`` and of validate and test to ``limit_eval``.

    ``synthetic_fallback``: when no data folder is asked for (no ``data_dir``, no ``$RADIMPRESS_DATA``)
    and none is found, read the labelled synthetic sample of :mod:`radimpress_lib.data.synthetic`
    (generated now, under ``.cache/``) instead of failing; the report then says ``synthetic``. It is
    never used when a data folder exists, nor for ``data_source='user'``.

    The report dict (JSON-safe) holds the per-file load reports, the join counts (benchmark),
    how splits were assigned (with the sizes from each method), rows removed by the leakage guard,
    sizes before and after the limits, the study scope, ``synthetic`` (None, or what was generated)
    and ``files_read`` (see :func:`data_files_read`).
    """
    for name, limit in (("limit_train", limit_train), ("limit_eval", limit_eval)):
        if limit is not None and limit <= 0:
            raise ValueError(f"{name} must be a positive integer or None, got {limit}")
    plan = _plan(data_dir, data_source, user_data_path, synthetic_fallback)
    scope = StudyScope.of(modalities, body_parts)
    loads: dict[str, Any] = {}
    report: dict[str, Any] = {
        "data_source": "synthetic" if plan["synthetic"] else data_source,
        "data_dir": str(plan["root"]) if plan["root"] is not None else None,
        "strict": strict,
        "max_chars": max_chars,
        "seed": seed,
        "scope": scope.as_dict(),
        "synthetic": {"file": str(plan["user"]), "note": SYNTHETIC_NOTE} if plan["synthetic"] else None,
        "files_read": [str(p) for p in _plan_files(plan)],
        "loads": loads,
    }
    if plan["synthetic"]:  # the sample is read like a user's file: canonical column names, no split column
        data_source, user_column_map = "user", {}
    if data_source == "benchmark":
        dd, bench_report = load_benchmark(
            plan["root"] / BENCHMARK_DIR_NAME,
            reports_csv=plan["csv"],
            reports_xml=plan["xml"],
            strict=strict,
            max_chars=max_chars,
        )
        for split, rep in bench_report.splits.items():
            loads[f"benchmark_{split}"] = rep.to_dict(max_issues=50)
        if bench_report.reports is not None:
            loads["openi_join_reports"] = bench_report.reports.to_dict(max_issues=50)
        report["join"] = {k: asdict(v) for k, v in bench_report.join.items()}
        report["split_assignment"] = {"method": "benchmark files"}
    else:
        if data_source == "openi_csv":
            ds, rep = load_openi_csv(plan["csv"], strict=strict, max_chars=max_chars)
        elif data_source == "openi_xml":
            ds, rep = load_openi_xml(plan["xml"], strict=strict, max_chars=max_chars)
        else:
            ds, rep = load_user(plan["user"], user_column_map, strict=strict, max_chars=max_chars,
                                modalities=modalities, body_parts=body_parts)
        loads[report["data_source"]] = rep.to_dict(max_issues=50)
        if len(ds) == 0:
            raise DataValidationError(
                f"{rep.source}: no usable row ({rep.rows_read} read, skipped {dict(rep.skipped)}); "
                "check the file and the column map",
                file=rep.source,
            )
        has_split_column = data_source == "user" and "split" in resolve_user_column_map(plan["user"], user_column_map)
        if has_split_column:
            dd = _by_existing_split(ds)
            report["split_assignment"] = {"method": "user split column"}
        elif plan["bench"] is not None:
            bench: dict[str, datasets.Dataset] = {}
            for split, path in zip(SPLITS, plan["bench"], strict=True):
                recs, brep = _load_benchmark_split(path, split, strict=False, max_chars=None)
                bench[split] = records_to_dataset(recs)
                loads[f"benchmark_{split}"] = brep.to_dict(max_issues=50)
            splits, members = _benchmark_membership(ds["findings"], bench)
            rest = [i for i, split in enumerate(splits) if not split]
            if data_source == "user":  # a user's own reports: seeded split, like a file without the benchmark
                seeded = seeded_group_split([ds[i]["findings"] for i in rest], seed)
                assignment: dict[str, Any] = {
                    "method": "benchmark membership of normalised findings; the other reports seeded 80/10/10 "
                              "by findings group", "benchmark_members": dict(members),
                    "seeded": dict(Counter(seeded)), "seed": seed}
            else:  # Open-i reports outside the benchmark go to train (they cannot leak into test)
                seeded = ["train"] * len(rest)
                assignment = {"method": "benchmark membership of normalised findings", **members,
                              "not_in_benchmark_to_train": len(rest)}
            for i, split in zip(rest, seeded, strict=True):
                splits[i] = split
            dd = _with_split(ds, splits)
            report["split_assignment"] = assignment | {s: splits.count(s) for s in SPLITS}
        else:
            splits = seeded_group_split(ds["findings"], seed)
            dd = _with_split(ds, splits)
            report["split_assignment"] = {"method": "seeded 80/10/10 by findings group", "seed": seed,
                                          **{s: splits.count(s) for s in SPLITS}}
    removed: dict[str, int] = {}
    for split in ("train", "validate"):
        dd[split], removed[split] = remove_test_leakage(dd[split], dd["test"])
    report["leakage_removed"] = removed
    report["sizes_before_limits"] = {s: len(dd[s]) for s in SPLITS}
    limits = {"train": limit_train, "validate": limit_eval, "test": limit_eval}
    for split in SPLITS:
        dd[split] = _subsample(dd[split], limits[split], seed)
    report["limits"] = {"limit_train": limit_train, "limit_eval": limit_eval}
    report["split_sizes"] = {s: len(dd[s]) for s in SPLITS}
    return dd, report


def load_data(params: Params):
    """Load the run's reports as configured; returns (DatasetDict, info).

    ``info`` is :func:`radimpress_lib.data.load_from_config`'s report plus
    ``files`` (one row per file read: rows read, kept, skipped by reason),
    ``totals`` (the same summed over files, and ``synthetic``: whether the run read the
    synthetic sample), ``data_files`` (paths, for the manifest) and ``summary`` (readable
    text; its first line says SYNTHETIC when the sample was read).
    """
    d = params.data
    dsd, info = load_from_config(
        d.dir, d.source, strict=d.strict, max_chars=d.max_chars,
        user_data_path=d.user_path, user_column_map=d.user_columns,
        limit_train=d.limit_train, limit_eval=d.limit_eval, seed=params.run.seed,
        modalities=d.modalities, body_parts=d.body_parts, synthetic_fallback=d.synthetic_fallback,
    )
    root = Path(info["data_dir"]) if info.get("data_dir") else None
    reasons = sorted({reason for load in info["loads"].values() for reason in load["skipped"]})
    rows, skipped = [], Counter()
    for role, load in info["loads"].items():
        src = Path(load["source"])
        shown = str(src.relative_to(root)) if root is not None and src.is_relative_to(root) else src.name
        rows.append({"file": shown, "role": role, "rows_read": load["rows_read"], "kept": load["kept"],
                     **{f"skipped:{r}": load["skipped"].get(r, 0) for r in reasons}})
        skipped.update(load["skipped"])
    totals = {"rows_read": sum(r["rows_read"] for r in rows), "kept": sum(r["kept"] for r in rows),
              "skipped": dict(sorted(skipped.items())), "synthetic": info["synthetic"] is not None}
    lines = [f"{SYNTHETIC_NOTE}."] if info["synthetic"] else []
    lines.append(f"data folder: {info.get('data_dir')}  source: {info['data_source']}  strict: {d.strict}")
    for role, load in info["loads"].items():
        lines.append(f"  {Path(load['source']).name} ({role}): read {load['rows_read']}, kept {load['kept']}, "
                     f"skipped {dict(load['skipped']) or 0}")
    assignment = info["split_assignment"]
    lines.append(f"splits: {assignment['method']}: " + ", ".join(f"{s} {assignment.get(s, '?')}" for s in SPLITS))
    lines.append(f"leakage guard removed {info['leakage_removed']} reports whose findings occur in the test split")
    lines.append(f"final split sizes: {info['split_sizes']}")
    info = info | {"files": rows, "totals": totals, "data_files": data_files_read(info), "summary": "\n".join(lines)}
    return dsd, info


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m radimpress_lib.data {download,check}``."""
    parser = argparse.ArgumentParser(prog="python -m radimpress_lib.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    dl = sub.add_parser("download", help="download Open-i + the benchmark split unless a data folder is found")
    dl.add_argument("--dest", default=None, help=f"target folder (default {default_download_dir()})")
    dl.add_argument("--force", action="store_true", help="download into --dest even when a data folder is found")
    ck = sub.add_parser("check", help="load the data and print what was read, kept, skipped and joined")
    ck.add_argument("--data-dir", default=None)
    ck.add_argument("--source", default="benchmark", choices=DATA_SOURCES)
    ck.add_argument("--user-data-path", default=None)
    args = parser.parse_args(argv)
    if args.command == "download":
        found = _find_existing_data()
        if found is not None and not args.force:
            print(f"data folder found at {found}; nothing to download (set {ENV_DATA_DIR} or pass --force to change)")
            return 0
        dest = Path(args.dest) if args.dest else default_download_dir()
        try:
            download_openi(dest)
        except DownloadError as exc:  # offline, proxy, moved file: one line saying what else to do, no traceback
            print(f"radimpress data download: {exc}. Without network, copy a data folder (openi/{OPENI_CSV_NAME} or "
                  f"openi/{OPENI_ARCHIVE_NAME}, and {BENCHMARK_DIR_NAME}/{{train,validate,test}}.jsonl) to this "
                  f"machine and set {ENV_DATA_DIR}=/path/to/it; `make reproduce MODEL=ci-tiny` runs without data "
                  "(on a labelled synthetic sample)", file=sys.stderr)
            return 1
        print(f"data ready in {dest.resolve()}")
        return 0
    try:
        dd, report = load_from_config(args.data_dir, args.source, user_data_path=args.user_data_path)
    except (DataValidationError, DataNotFoundError) as exc:
        print(f"radimpress data check: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in report.items() if k != "loads"}, indent=2))
    for name, rep in report["loads"].items():
        skipped = ", ".join(f"{k} {v}" for k, v in rep["skipped"].items()) or "none"
        print(f"{name}: read {rep['rows_read']}, kept {rep['kept']}, skipped {rep['skipped_total']} ({skipped})")
    return 0

