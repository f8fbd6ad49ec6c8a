"""Readers of report files into canonical records: Open-i CSV / XML, user CSV / JSONL / Parquet."""

from __future__ import annotations

import json
import os
import re
import tarfile
import xml.etree.ElementTree as ET
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import datasets
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET

from radimpress_lib.core.schema import REPORT_FIELDS, SPLITS, records_to_dataset
from radimpress_lib.data.csvfile import CsvFileError, CsvReader
from radimpress_lib.data.scope import StudyScope
from radimpress_lib.data.validation import MISSING, DataValidationError, LoadReport, RowValidator

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


def _read_csv(path: Path, max_chars: int | None) -> tuple[list[str], list[_Raw], int]:
    """Rows of a CSV/TSV file, parsed strictly (:class:`~radimpress_lib.data.csvfile.CsvReader`).

    A row that cannot be parsed (an unbalanced quote, a row far over ``max_chars`` per field)
    becomes a ``malformed_row`` naming the file line it starts on, and reading goes on with the
    next line; undecodable bytes are kept as surrogate escapes for the per-field checks.
    """
    rows: list[_Raw] = []
    with path.open("rb") as fh:
        try:
            reader = CsvReader(fh, delimiter=_delimiter(path), max_field_chars=max_chars)
        except CsvFileError as exc:
            raise DataValidationError(f"{path}: {exc}", file=str(path)) from None
        columns = [c.strip() for c in reader.header]
        _check_header(path, columns)
        for row in reader:
            if row.values is None:
                rows.append(_Raw(row.row, None, "malformed_row", row.problem))
            elif len(row.values) != len(columns):
                message = f"{len(row.values)} fields where the header has {len(columns)}"
                rows.append(_Raw(row.row, None, "malformed_row", f"{message} (starts on file line {row.line})"))
            else:
                rows.append(_Raw(row.row, dict(zip(columns, row.values, strict=True))))
    return columns, rows, reader.blank_lines


def _delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


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
    scope: StudyScope | None = None,
) -> tuple[list[dict[str, Any]], LoadReport]:
    """Read a CSV/TSV/JSONL/Parquet file into validated canonical records.

    ``required`` fields must have their column in the file (file-level error otherwise)
    and a value in every row. Mapped columns that are absent from the file are an error
    too unless ``optional_absent_ok`` (then the field takes its default and a note is added).
    Rows outside ``scope`` are skipped and counted as ``out_of_scope``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(f"{path}: no such file", file=str(path))
    kind = _file_kind(path)
    if kind == "csv":
        columns, rows, blank = _read_csv(path, max_chars)
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
        hints = [f"{c!r} differs from {m!r} only by case" for m in missing_required for c in columns
                 if c.lower() == m.lower()]
        raise DataValidationError(
            f"{path}: missing required {what} {missing_required}; {what} found: {columns}"
            + (f" ({'; '.join(hints)}: map the column as it is written)" if hints else ""),
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
        scope=scope,
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
    with path.open("rb") as fh:
        try:
            return [c.strip() for c in CsvReader(fh, delimiter=_delimiter(path)).header]
        except CsvFileError:
            return []


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
    modalities: Sequence[str] | None = None,
    body_parts: Sequence[str] | None = None,
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
        modalities, body_parts: the studies the run is for (:class:`~radimpress_lib.data.scope.StudyScope`,
            e.g. ``["XR"]``, ``["CHEST"]``); rows of other studies are skipped and counted as ``out_of_scope``.
            None or empty: any study.

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
        scope=StudyScope.of(modalities, body_parts),
    )
    if "report_id" not in column_map:
        report.notes.append(f"no report_id column mapped: ids are '{path.stem}-<row>'")
    return records_to_dataset(records), report


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
