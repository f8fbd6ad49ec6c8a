"""Loading, validating and splitting radiology reports into canonical records.

Sources (each loader returns a ``datasets`` object with the canonical features of
:mod:`radimpress_lib.schema` plus a report of what was read, kept and skipped):

* :func:`load_openi_csv` -- ``indiana_reports.csv``, the flattened Open-i collection;
* :func:`load_openi_xml` -- the original Open-i archive ``NLMCXR_reports.tgz`` (or its
  extracted ``ecgen-radiology/`` folder); gives the same records as the CSV;
* :func:`load_benchmark` -- the Van Veen et al. findings -> impression split
  (``opi-benchmark/{train,validate,test}.jsonl``), joined to the Open-i reports to add
  indication, comparison and MeSH terms;
* :func:`load_user` -- a user's CSV / TSV / JSONL / Parquet file with a column map.

Validation (strict or lenient) is shared by all loaders, see
:mod:`radimpress_lib.validation`. :func:`load_from_config` is the single entry the
notebooks use: it picks the source, assigns splits, removes test leakage from the
training splits and applies the smoke-run limits.

Text is kept as written (including the ``XXXX`` de-identification tokens of
Open-i); only leading and trailing whitespace is stripped.

CLI::

    python -m radimpress_lib.data download [--dest DIR] [--force]
    python -m radimpress_lib.data check [--data-dir DIR] [--source benchmark]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import sys
import tarfile
import xml.etree.ElementTree as ET
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import datasets
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET

from radimpress_lib.download import OPENI_ARCHIVE_NAME, download_openi
from radimpress_lib.paths import PROJECT_ROOT
from radimpress_lib.schema import REPORT_FIELDS, SPLITS, records_to_dataset
from radimpress_lib.validation import (
    MISSING,
    DataValidationError,
    LoadReport,
    RowValidator,
)

__all__ = [
    "BenchmarkReport",
    "DataNotFoundError",
    "DataValidationError",
    "JoinStats",
    "LoadReport",
    "DATA_SOURCES",
    "ENV_DATA_DIR",
    "data_files_for_config",
    "data_files_read",
    "default_download_dir",
    "load_benchmark",
    "load_from_config",
    "load_openi_csv",
    "load_openi_xml",
    "load_user",
    "normalize_findings",
    "remove_test_leakage",
    "resolve_data_dir",
    "resolve_user_column_map",
    "seeded_group_split",
]

#: Environment variable naming the data folder.
ENV_DATA_DIR = "RADIMPRESS_DATA"
#: Accepted ``data_source`` values of :func:`load_from_config`.
DATA_SOURCES = ("benchmark", "openi_csv", "openi_xml", "user")

OPENI_CSV_NAME = "indiana_reports.csv"
OPENI_XML_DIR_NAME = "ecgen-radiology"
BENCHMARK_DIR_NAME = "opi-benchmark"

#: Canonical field -> column of ``indiana_reports.csv``.
OPENI_CSV_COLUMNS: dict[str, str] = {
    "report_id": "uid",
    "indication": "indication",
    "comparison": "comparison",
    "findings": "findings",
    "impression": "impression",
    "mesh": "MeSH",
    "problems": "Problems",
}
OPENI_CSV_REQUIRED = ("report_id", "findings", "impression")
#: Constant fields of every Open-i record.
OPENI_DEFAULTS: dict[str, Any] = {"modality": "XR", "body_part": "CHEST"}
#: Canonical field -> key of the benchmark JSONL rows.
BENCHMARK_COLUMNS: dict[str, str] = {"report_id": "idx", "findings": "inputs", "impression": "target"}
#: Fields copied from the joined Open-i report into a benchmark record.
JOINED_FIELDS = ("modality", "body_part", "indication", "comparison", "mesh", "problems")

_XML_SECTIONS = {
    "COMPARISON": "comparison",
    "INDICATION": "indication",
    "FINDINGS": "findings",
    "IMPRESSION": "impression",
}
_UID = re.compile(r"CXR(\d+)", re.IGNORECASE)
# Undecodable bytes 0x80-0xFF (surrogate-escaped to U+DC80-U+DCFF) are carried through the
# XML parser as private-use characters U+F780-U+F7FF and mapped back afterwards, so that
# the non-UTF-8 field can be named.
_TO_PRIVATE = {0xDC00 + b: 0xF700 + b for b in range(0x80, 0x100)}
_FROM_PRIVATE = {v: k for k, v in _TO_PRIVATE.items()}
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")


class DataNotFoundError(FileNotFoundError):
    """No data folder could be found; the message says how to provide one."""


# ---------------------------------------------------------------------------------------
# Text normalisation and leakage
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# Data location
# ---------------------------------------------------------------------------------------


def default_download_dir() -> Path:
    """``<project root>/data``, where :func:`download_openi` puts the data by default."""
    return PROJECT_ROOT / "data"


def _how_to_fix() -> str:
    return (
        f"Fix: pass data_dir=..., or set {ENV_DATA_DIR}=/path/to/data, or run "
        f"`make data` (= python -m radimpress_lib.data download) to download the public data into "
        f"{default_download_dir()}."
    )


def _as_existing_dir(value: str | os.PathLike[str], origin: str) -> Path:
    path = Path(value).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, PROJECT_ROOT / path]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise DataNotFoundError(f"data folder from {origin} does not exist (tried {tried}). {_how_to_fix()}")


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Find the data folder.

    Precedence: ``data_dir`` when given; else ``$RADIMPRESS_DATA`` when set and non-empty;
    else ``<project root>/../shared/data`` when it exists; else ``<project root>/data``
    (the download folder). A relative ``data_dir`` / variable is looked up from the
    current folder, then from the project root. The project root is the checkout folder
    holding ``pyproject.toml`` (:data:`radimpress_lib.paths.PROJECT_ROOT`).

    Raises:
        DataNotFoundError: the chosen folder does not exist (message says how to fix it).
    """
    if data_dir is not None and str(data_dir) != "":
        return _as_existing_dir(data_dir, "the data_dir parameter")
    env = os.environ.get(ENV_DATA_DIR, "").strip()
    if env:
        return _as_existing_dir(env, f"${ENV_DATA_DIR}")
    shared = PROJECT_ROOT.parent / "shared" / "data"
    if shared.is_dir():
        return shared.resolve()
    local = default_download_dir()
    if local.is_dir():
        return local.resolve()
    raise DataNotFoundError(
        f"no data folder found: no data_dir parameter, ${ENV_DATA_DIR} unset, neither {shared} nor {local} exists. "
        + _how_to_fix()
    )


def _has_data(root: Path) -> bool:
    """Whether ``root`` holds the benchmark split and some Open-i reports."""
    bench = root / BENCHMARK_DIR_NAME
    has_bench = all((bench / f"{s}.jsonl").is_file() for s in SPLITS)
    openi = root / "openi"
    has_reports = any(
        p.exists() for p in (openi / OPENI_CSV_NAME, openi / OPENI_ARCHIVE_NAME, openi / OPENI_XML_DIR_NAME)
    )
    return has_bench and has_reports


# ---------------------------------------------------------------------------------------
# File readers: (columns, raw rows, blank lines)
# ---------------------------------------------------------------------------------------


class _Raw(NamedTuple):
    """One source row: values by column, or None with why it could not be parsed."""

    row: int
    values: dict[str, Any] | None
    reason: str = ""
    message: str = ""


def _file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise DataValidationError(
        f"{path}: unsupported file type {suffix!r}; expected .csv, .tsv, .jsonl, .ndjson or .parquet", file=str(path)
    )


def _check_header(path: Path, columns: list[str]) -> None:
    dupes = sorted(c for c, n in Counter(columns).items() if n > 1)
    if dupes:
        raise DataValidationError(f"{path}: duplicate column name(s) {dupes} in the header", file=str(path))
    for name in columns:
        if any(0xDC80 <= ord(ch) <= 0xDCFF for ch in name):
            raise DataValidationError(
                f"{path}: the header holds bytes that are not valid UTF-8: {name!r}", file=str(path)
            )


def _read_csv(path: Path) -> tuple[list[str], list[_Raw], int]:
    """Rows of a CSV/TSV file; undecodable bytes are kept as surrogate escapes for per-field checks."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    rows: list[_Raw] = []
    blank = 0
    old_limit = csv.field_size_limit()
    csv.field_size_limit(max(old_limit, 1 << 28))
    try:
        with path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            try:
                header = next(reader)
            except StopIteration:
                raise DataValidationError(f"{path}: the file is empty (no header row)", file=str(path)) from None
            columns = [c.strip() for c in header]
            _check_header(path, columns)
            line_start = reader.line_num + 1
            n = 0
            try:
                for values in reader:
                    start, line_start = line_start, reader.line_num + 1
                    if not values or (len(values) == 1 and not values[0].strip()):
                        blank += 1
                        continue
                    n += 1
                    if len(values) != len(columns):
                        message = f"{len(values)} fields where the header has {len(columns)}"
                        rows.append(_Raw(n, None, "malformed_row", f"{message} (starts on file line {start})"))
                        continue
                    rows.append(_Raw(n, dict(zip(columns, values, strict=True))))
            except csv.Error as exc:
                raise DataValidationError(
                    f"{path}: CSV syntax error near file line {reader.line_num}: {exc}", file=str(path), row=n + 1
                ) from exc
    finally:
        csv.field_size_limit(old_limit)
    return columns, rows, blank


def _read_jsonl(path: Path) -> tuple[list[str], list[_Raw], int]:
    """Rows of a JSON-lines file (row = 1-based line number); columns = keys seen, in first-seen order."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    rows: list[_Raw] = []
    columns: dict[str, None] = {}
    blank = 0
    for number, line in enumerate(lines, 1):
        line = line.rstrip(b"\r")
        if not line.strip():
            blank += 1
            continue
        text = line.decode("utf-8", errors="surrogateescape")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            rows.append(_Raw(number, None, "malformed_row", f"invalid JSON: {exc.msg} (column {exc.colno})"))
            continue
        if not isinstance(obj, dict):
            rows.append(_Raw(number, None, "wrong_type", f"expected a JSON object, got {type(obj).__name__}"))
            continue
        for key in obj:
            columns.setdefault(key, None)
        rows.append(_Raw(number, obj))
    return list(columns), rows, blank


def _read_parquet(path: Path, wanted: Sequence[str]) -> tuple[list[str], list[_Raw], int]:
    """Rows of a Parquet file; text and binary columns come back as bytes, checked per value."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several unrelated types for unreadable files
        raise DataValidationError(f"{path}: not a readable Parquet file ({exc})", file=str(path)) from exc
    columns = list(parquet.schema_arrow.names)
    _check_header(path, columns)
    table = parquet.read(columns=[c for c in dict.fromkeys(wanted) if c in columns])
    values: dict[str, list[Any]] = {}
    for name in table.column_names:
        column = table.column(name)
        kind = column.type
        if pa.types.is_dictionary(kind):
            column = column.cast(kind.value_type)
            kind = kind.value_type
        if pa.types.is_string(kind):
            column = column.cast(pa.binary())
        elif pa.types.is_large_string(kind):
            column = column.cast(pa.large_binary())
        elif hasattr(pa.types, "is_string_view") and pa.types.is_string_view(kind):
            column = column.cast(pa.binary())
        values[name] = column.to_pylist()
    rows = [_Raw(i + 1, {name: values[name][i] for name in values}) for i in range(table.num_rows)]
    return columns, rows, 0


def _short_name(path: Path) -> str:
    """``'<parent>/<name>'``: enough to trace a record, free of machine-specific prefixes."""
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


# ---------------------------------------------------------------------------------------
# Generic table loading
# ---------------------------------------------------------------------------------------


def _load_table(
    path: str | os.PathLike[str],
    column_map: Mapping[str, str],
    *,
    required: Sequence[str],
    optional_absent_ok: bool,
    strict: bool,
    max_chars: int | None,
    defaults: Mapping[str, Any] | None = None,
    split: str = "",
    default_id_prefix: str | None = None,
) -> tuple[list[dict[str, Any]], LoadReport]:
    """Read a CSV/TSV/JSONL/Parquet file into validated canonical records.

    ``required`` fields must have their column in the file (file-level error otherwise)
    and a value in every row. Mapped columns that are absent from the file are an error
    too unless ``optional_absent_ok`` (then the field takes its default and a note is added).
    """
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(f"{path}: no such file", file=str(path))
    kind = _file_kind(path)
    if kind == "csv":
        columns, rows, blank = _read_csv(path)
    elif kind == "jsonl":
        columns, rows, blank = _read_jsonl(path)
    else:
        columns, rows, blank = _read_parquet(path, list(column_map.values()))
    report = LoadReport(source=str(path), kind=kind, blank_lines=blank)
    if kind == "jsonl" and not rows:
        raise DataValidationError(f"{path}: the file holds no JSON line", file=str(path))
    found = set(columns)
    absent = {f: c for f, c in column_map.items() if c not in found}
    missing_required = [c for f, c in absent.items() if f in required or not optional_absent_ok]
    if kind == "jsonl" and not columns:
        missing_required = []  # no line parsed as an object: each is reported as malformed below
        absent = {}
    if missing_required:
        what = "keys" if kind == "jsonl" else "columns"
        raise DataValidationError(
            f"{path}: missing required {what} {missing_required}; {what} found: {columns}",
            file=str(path),
        )
    mapping = {f: c for f, c in column_map.items() if f not in absent}
    for f, c in absent.items():
        report.notes.append(f"optional column {c!r} absent: field {f!r} left empty")
    validator = RowValidator(
        report,
        strict=strict,
        max_chars=max_chars,
        defaults=defaults,
        source_name=_short_name(path),
        require_split="split" in mapping,
    )
    records: list[dict[str, Any]] = []
    for raw in rows:
        if raw.values is None:
            validator.reject(raw.row, None, raw.reason, raw.message)
            continue
        values = {f: raw.values.get(c, MISSING if f in required else None) for f, c in mapping.items()}
        if "split" not in mapping:
            values["split"] = split
        if "report_id" not in mapping and default_id_prefix is not None:
            values["report_id"] = f"{default_id_prefix}{raw.row}"
        record = validator.validate(raw.row, values)
        if record is not None:
            records.append(record)
    report.check_accounting()
    return records, report


def _check_split_arg(split: str) -> None:
    if split not in ("", *SPLITS):
        raise ValueError(f"split must be '' or one of {list(SPLITS)}, got {split!r}")


def load_openi_csv(
    path: str | os.PathLike[str], *, strict: bool = False, max_chars: int | None = 4000, split: str = ""
) -> tuple[datasets.Dataset, LoadReport]:
    """Load ``indiana_reports.csv`` (Open-i, flattened) into canonical records.

    ``report_id`` is the ``uid`` column as text; modality ``XR``, body part ``CHEST``;
    ``MeSH`` and ``Problems`` are split on ``;`` (``normal`` is kept as a term);
    absent indication / comparison become ``''``. Rows are 1-based data rows, header
    excluded. Rows without findings or impression are skipped and counted (lenient)
    or raise (strict).
    """
    _check_split_arg(split)
    records, report = _load_table(
        path,
        OPENI_CSV_COLUMNS,
        required=OPENI_CSV_REQUIRED,
        optional_absent_ok=True,
        strict=strict,
        max_chars=max_chars,
        defaults=OPENI_DEFAULTS,
        split=split,
    )
    return records_to_dataset(records), report


def _columns_of(path: Path) -> list[str]:
    """Column names of a CSV/TSV/JSONL/Parquet file (JSONL: keys seen in any line)."""
    kind = _file_kind(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    if kind == "jsonl":
        return _read_jsonl(path)[0]
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        return [c.strip() for c in next(csv.reader(fh, delimiter=delimiter), [])]


def resolve_user_column_map(path: str | os.PathLike[str], column_map: Mapping[str, str] | None) -> dict[str, str]:
    """The effective, checked column map of :func:`load_user`.

    An empty or None ``column_map`` maps every canonical field name found as a column
    to itself. Raises ``ValueError`` for unknown fields, empty column names, or when
    ``findings`` / ``impression`` are not mapped.
    """
    path = Path(path)
    allowed = [f for f in REPORT_FIELDS if f != "source"]
    if not column_map:
        names = set(_columns_of(path)) if path.is_file() else set()
        column_map = {f: f for f in allowed if f in names}
        column_map.setdefault("findings", "findings")
        column_map.setdefault("impression", "impression")
    unknown = sorted(set(column_map) - set(allowed))
    if unknown:
        raise ValueError(f"column_map has unknown field(s) {unknown}; canonical fields are {allowed}")
    for needed in ("findings", "impression"):
        if needed not in column_map:
            raise ValueError(f"column_map must map {needed!r} to a column of {path}")
    bad = {f: c for f, c in column_map.items() if not isinstance(c, str) or not c}
    if bad:
        raise ValueError(f"column_map values must be non-empty column names, got {bad}")
    return dict(column_map)


def load_user(
    path: str | os.PathLike[str],
    column_map: Mapping[str, str] | None = None,
    *,
    strict: bool = False,
    max_chars: int | None = 4000,
    defaults: Mapping[str, Any] | None = None,
    split: str = "",
) -> tuple[datasets.Dataset, LoadReport]:
    """Load a user's CSV / TSV / JSONL / Parquet file.

    Args:
        path: the file; the type is taken from its suffix.
        column_map: canonical field -> user column, e.g. ``{"report_id": "accession",
            "findings": "FINDINGS", "impression": "IMPRESSION", "radiologist_id": "reader"}``.
            ``findings`` and ``impression`` are required; every mapped column must exist.
            Empty or None maps each canonical field name found as a column to itself
            (see :func:`resolve_user_column_map`).
        defaults: constant values for unmapped fields, e.g. ``{"modality": "CT"}``.
        split: split given to every row when no ``split`` column is mapped.

    Unmapped fields default to ``''`` (text), ``[]`` (mesh / problems), ``None``
    (radiologist_id) and ``'<file stem>-<row>'`` (report_id). A mapped ``split``
    column must hold train / validate / test (common aliases such as ``val`` accepted).
    ``mesh`` / ``problems`` columns may hold lists or ``;``-separated text.
    """
    _check_split_arg(split)
    path = Path(path)
    column_map = resolve_user_column_map(path, column_map)
    allowed = [f for f in REPORT_FIELDS if f != "source"]
    user_defaults = dict(defaults or {})
    unknown_defaults = sorted(set(user_defaults) - set(allowed))
    if unknown_defaults:
        raise ValueError(f"defaults has unknown field(s) {unknown_defaults}; canonical fields are {allowed}")
    records, report = _load_table(
        path,
        column_map,
        required=("findings", "impression", *(("report_id",) if "report_id" in column_map else ())),
        optional_absent_ok=False,
        strict=strict,
        max_chars=max_chars,
        defaults=user_defaults,
        split=split,
        default_id_prefix=f"{path.stem}-",
    )
    if "report_id" not in column_map:
        report.notes.append(f"no report_id column mapped: ids are '{path.stem}-<row>'")
    return records_to_dataset(records), report


# ---------------------------------------------------------------------------------------
# Open-i XML
# ---------------------------------------------------------------------------------------


def _xml_sort_key(name: str) -> tuple[int, int | str]:
    stem = Path(name).stem
    return (0, int(stem)) if stem.isdigit() else (1, name)


def _iter_xml_documents(path: Path) -> Iterator[tuple[str, str, bytes]]:
    """``(location label, member name, bytes)`` of each report XML, in numeric file order.

    Reads a ``.tgz``/``.tar.gz`` archive in memory (nothing is extracted, so member
    paths cannot escape), a folder (searched recursively) or a single ``.xml`` file.
    """
    if path.is_dir():
        files = sorted((p for p in path.rglob("*.xml") if p.is_file()), key=lambda p: _xml_sort_key(p.name))
        for file in files:
            rel = file.relative_to(path).as_posix()
            yield str(file), rel, file.read_bytes()
        return
    if path.suffix.lower() == ".xml":
        yield str(path), path.name, path.read_bytes()
        return
    documents: list[tuple[str, bytes]] = []
    try:
        # One sequential pass in archive order (stream mode: no seeking back in the gzip stream).
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".xml"):
                    handle = tar.extractfile(member)
                    if handle is not None:
                        documents.append((member.name, handle.read()))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataValidationError(f"{path}: not a readable tar archive ({exc})", file=str(path)) from exc
    documents.sort(key=lambda doc: _xml_sort_key(doc[0]))
    for name, body in documents:
        yield f"{path}!/{name}", name, body


def _parse_xml(data: bytes) -> tuple[ET.Element, bool]:
    """Parse with defusedxml (no entity expansion, no external entities).

    Returns ``(root, remapped)``; ``remapped`` means the bytes were not valid UTF-8 and
    the undecodable bytes are carried as private-use characters (see ``_TO_PRIVATE``).
    """
    try:
        return SafeET.fromstring(data), False
    except ET.ParseError:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            raise
    text = data.decode("utf-8", errors="surrogateescape").translate(_TO_PRIVATE)
    return SafeET.fromstring(_XML_DECLARATION.sub("", text, count=1)), True


def _openi_xml_values(root: ET.Element, member: str, remapped: bool, include_automatic_mesh: bool) -> dict[str, Any]:
    def clean(text: str | None) -> str | None:
        if text is None:
            return None
        return text.translate(_FROM_PRIVATE) if remapped else text

    values: dict[str, Any] = {name: None for name in _XML_SECTIONS.values()}
    for element in root.iter("AbstractText"):
        name = _XML_SECTIONS.get((element.get("Label") or "").strip().upper())
        if name is not None and values[name] is None:
            values[name] = clean("".join(element.itertext()))
    uid_element = root.find(".//uId")
    uid = clean(uid_element.get("id")) if uid_element is not None else None
    if uid:
        match = _UID.fullmatch(uid.strip())
        values["report_id"] = match.group(1) if match else uid.strip()
    else:
        values["report_id"] = Path(member).stem
    major: list[str] = []
    automatic: list[str] = []
    mesh = root.find(".//MeSH")
    if mesh is not None:
        major = [clean("".join(e.itertext())) or "" for e in mesh.findall("major")]
        automatic = [clean("".join(e.itertext())) or "" for e in mesh.findall("automatic")]
    terms = [t for t in major if t.strip()]
    values["problems"] = [t.split("/")[0] for t in terms]
    values["mesh"] = terms + ([t for t in automatic if t.strip()] if include_automatic_mesh else [])
    return values


def load_openi_xml(
    path: str | os.PathLike[str],
    *,
    strict: bool = False,
    max_chars: int | None = 4000,
    split: str = "",
    include_automatic_mesh: bool = False,
) -> tuple[datasets.Dataset, LoadReport]:
    """Load the original Open-i archive (``NLMCXR_reports.tgz``), an extracted folder or one XML file.

    Each ``<eCitation>`` document gives one record: ``report_id`` from ``<uId id="CXR12"/>``
    (``'12'``, equal to the CSV ``uid``; the file stem when absent), the four
    ``<AbstractText Label=...>`` sections (COMPARISON, INDICATION, FINDINGS, IMPRESSION),
    ``mesh`` from the ``<MeSH><major>`` terms and ``problems`` from their head (text before
    the first ``/``), exactly as the flattened CSV does. ``include_automatic_mesh`` appends
    the machine-assigned ``<automatic>`` terms to ``mesh`` (not in the CSV).

    Row numbers are the 1-based position of the document in numeric file order; issues
    name the archive member (``archive!/ecgen-radiology/12.xml``). XML is parsed with
    defusedxml: entity declarations and external references are refused.
    """
    _check_split_arg(split)
    path = Path(path)
    if not path.exists():
        raise DataValidationError(f"{path}: no such file or folder", file=str(path))
    report = LoadReport(source=str(path), kind="xml")
    validator = RowValidator(report, strict=strict, max_chars=max_chars, defaults=OPENI_DEFAULTS)
    records: list[dict[str, Any]] = []
    label = path.name
    for number, (location, member, data) in enumerate(_iter_xml_documents(path), 1):
        try:
            root, remapped = _parse_xml(data)
        except ET.ParseError as exc:
            validator.reject(number, None, "malformed_row", f"invalid XML: {exc}", location=location)
            continue
        except DefusedXmlException as exc:
            validator.reject(number, None, "malformed_row", f"unsafe XML refused: {exc!r}", location=location)
            continue
        values = _openi_xml_values(root, member, remapped, include_automatic_mesh)
        values["split"] = split
        record = validator.validate(number, values, location=location, source=f"{label}!/{member}:{number}")
        if record is not None:
            records.append(record)
    if report.rows_read == 0:
        raise DataValidationError(f"{path}: no .xml report found", file=str(path))
    report.check_accounting()
    return records_to_dataset(records), report


# ---------------------------------------------------------------------------------------
# Benchmark split and its join to the Open-i reports
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# Split assignment, limits, and the single entry for notebooks
# ---------------------------------------------------------------------------------------


def _benchmark_membership(
    findings: Sequence[str], bench: Mapping[str, datasets.Dataset]
) -> tuple[list[str], Counter[str]]:
    """Split of each report by membership of its normalised findings: test, else validate, else train.

    Reports whose findings are in no benchmark split go to train (they cannot leak into test).
    """
    keys = {s: {normalize_findings(t) for t in bench[s]["findings"]} for s in SPLITS}
    out: list[str] = []
    counts: Counter[str] = Counter()
    for text in findings:
        key = normalize_findings(text)
        if key in keys["test"]:
            split = "test"
        elif key in keys["validate"]:
            split = "validate"
        elif key in keys["train"]:
            split = "train"
        else:
            split = "train"
            counts["not_in_benchmark_to_train"] += 1
        out.append(split)
        counts[split] += 1
    return out, counts


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


def _openi_paths(root: Path) -> dict[str, Path]:
    openi = root / "openi"
    out: dict[str, Path] = {}
    if (openi / OPENI_CSV_NAME).is_file():
        out["csv"] = openi / OPENI_CSV_NAME
    if (openi / OPENI_ARCHIVE_NAME).is_file():
        out["xml"] = openi / OPENI_ARCHIVE_NAME
    elif (openi / OPENI_XML_DIR_NAME).is_dir():
        out["xml"] = openi / OPENI_XML_DIR_NAME
    return out


def _bench_paths(root: Path) -> list[Path] | None:
    paths = [root / BENCHMARK_DIR_NAME / f"{s}.jsonl" for s in SPLITS]
    return paths if all(p.is_file() for p in paths) else None


def _plan(
    data_dir: str | os.PathLike[str] | None, data_source: str, user_data_path: str | os.PathLike[str] | None
) -> dict[str, Any]:
    """Which files :func:`load_from_config` reads, by role."""
    if data_source not in DATA_SOURCES:
        raise ValueError(f"data_source must be one of {list(DATA_SOURCES)}, got {data_source!r}")
    plan: dict[str, Any] = {"root": None, "bench": None, "csv": None, "xml": None, "user": None}
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
) -> list[Path]:
    """The files :func:`load_from_config` reads for these settings (for manifests / sha256)."""
    return _plan_files(_plan(data_dir, data_source, user_data_path))


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
) -> tuple[datasets.DatasetDict, dict[str, Any]]:
    """Load the configured source into ``DatasetDict{'train','validate','test'}`` plus a report dict.

    Steps:

    1. read the source (``benchmark`` | ``openi_csv`` | ``openi_xml`` | ``user``), validating rows
       (``strict`` raises on the first bad row; lenient skips and counts);
    2. splits: the benchmark's own; a user ``split`` column when mapped; otherwise the benchmark
       split of each report by normalised-findings membership (test first, then validate, then
       train) when the benchmark files are in the data folder, else :func:`seeded_group_split`;
    3. leakage guard: rows of train and validate whose normalised findings occur in test are removed;
    4. limits: seeded subsample of train to ``limit_train`` and of validate and test to ``limit_eval``.

    The report dict (JSON-safe) holds the per-file load reports, the join counts (benchmark),
    how splits were assigned, rows removed by the leakage guard, sizes before and after the
    limits, and ``files_read`` (see :func:`data_files_read`).
    """
    for name, limit in (("limit_train", limit_train), ("limit_eval", limit_eval)):
        if limit is not None and limit <= 0:
            raise ValueError(f"{name} must be a positive integer or None, got {limit}")
    plan = _plan(data_dir, data_source, user_data_path)
    loads: dict[str, Any] = {}
    report: dict[str, Any] = {
        "data_source": data_source,
        "data_dir": str(plan["root"]) if plan["root"] is not None else None,
        "strict": strict,
        "max_chars": max_chars,
        "seed": seed,
        "files_read": [str(p) for p in _plan_files(plan)],
        "loads": loads,
    }
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
            ds, rep = load_user(plan["user"], user_column_map, strict=strict, max_chars=max_chars)
        loads[data_source] = rep.to_dict(max_issues=50)
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
            splits, counts = _benchmark_membership(ds["findings"], bench)
            dd = _with_split(ds, splits)
            report["split_assignment"] = {"method": "benchmark membership of normalised findings", **counts}
        else:
            splits = seeded_group_split(ds["findings"], seed)
            dd = _with_split(ds, splits)
            report["split_assignment"] = {"method": "seeded 80/10/10 by findings group", "seed": seed}
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


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------


def _find_existing_data() -> Path | None:
    try:
        root = resolve_data_dir(None)
    except DataNotFoundError:
        return None
    return root if _has_data(root) else None


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
        download_openi(dest)
        print(f"data ready in {dest.resolve()}")
        return 0
    dd, report = load_from_config(args.data_dir, args.source, user_data_path=args.user_data_path)
    print(json.dumps({k: v for k, v in report.items() if k != "loads"}, indent=2))
    for name, rep in report["loads"].items():
        skipped = ", ".join(f"{k} {v}" for k, v in rep["skipped"].items()) or "none"
        print(f"{name}: read {rep['rows_read']}, kept {rep['kept']}, skipped {rep['skipped_total']} ({skipped})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
