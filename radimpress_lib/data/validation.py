"""Row validation shared by every loader in :mod:`radimpress_lib.data`.

Every loader turns its source rows into *raw rows*: a 1-based row number plus a
mapping ``canonical field -> raw value`` (text possibly holding undecodable
bytes as surrogate escapes, ints, lists, ``None`` ...). :class:`RowValidator`
checks each raw row and either returns a canonical record
(:data:`radimpress_lib.core.schema.REPORT_FIELDS`) or records why it was rejected.

Two modes:

* **strict**: the first problem raises :class:`DataValidationError`, whose
  message names the file, the row and the field;
* **lenient** (default): the row is skipped, counted in
  :attr:`LoadReport.skipped` under its first reason, and every problem found in
  it is listed in :attr:`LoadReport.issues`.

Nothing is dropped silently: ``rows_read == kept + sum(skipped.values())``.

Row numbers are 1-based. What "row" means depends on the file type, and every
message says which convention applies (:data:`ROW_CONVENTIONS`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from radimpress_lib.core.schema import REPORT_FIELDS, SPLITS
from radimpress_lib.data.scope import StudyScope

#: What the row number means, per file kind (used in messages and reports).
ROW_CONVENTIONS: dict[str, str] = {
    "csv": "1-based data row, header excluded",
    "jsonl": "1-based line number",
    "parquet": "1-based table row",
    "xml": "1-based document number in sorted file order",
}

#: Reasons a row can be skipped (keys of :attr:`LoadReport.skipped`).
REASONS: dict[str, str] = {
    "malformed_row": "the row could not be parsed (wrong number of CSV fields, invalid JSON, invalid XML)",
    "missing_field": "a required field is absent from this row",
    "wrong_type": "a value has the wrong type (e.g. a number, list or object where text is expected)",
    "non_utf8": "a value holds bytes that are not valid UTF-8",
    "empty_report_id": "the report id is empty",
    "empty_findings": "the findings are empty (after stripping whitespace)",
    "empty_impression": "the impression is empty (after stripping whitespace)",
    "too_long": "a text field is longer than max_chars",
    "invalid_split": "the split value is not one of train / validate / test",
    "duplicate_id": "the report id was already used by an earlier row (kept or skipped: the first is kept if valid)",
    "nul_byte": "a text value holds a NUL byte (\\x00), a sign of a binary or truncated export",
    "out_of_scope": "the study's modality / body part is outside the run's scope (a filter, never an error)",
}

#: Fields that must be non-empty text.
REQUIRED_TEXT_FIELDS = ("findings", "impression")
#: Optional free-text fields ('' when absent).
OPTIONAL_TEXT_FIELDS = ("modality", "body_part", "indication", "comparison")
#: Fields whose length is checked against ``max_chars``.
LENGTH_CHECKED_FIELDS = ("indication", "comparison", "findings", "impression")
#: Accepted spellings of the splits (lower-cased) -> canonical split name.
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "validate": "validate",
    "validation": "validate",
    "valid": "validate",
    "val": "validate",
    "dev": "validate",
    "test": "test",
    "testing": "test",
}

# Undecodable bytes 0x80-0xFF become U+DC80-U+DCFF under errors="surrogateescape";
# any lone surrogate is invalid Unicode (it cannot be encoded as UTF-8).
_SURROGATE = re.compile("[\ud800-\udfff]")

#: Marker for "this field is absent from the row" (distinct from a null value).
MISSING = object()


class DataValidationError(ValueError):
    """Bad input data. The message names the file, the row (and its convention) and the field."""

    def __init__(
        self,
        message: str,
        *,
        file: str = "",
        row: int | None = None,
        field: str | None = None,
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.file = file
        self.row = row
        self.field = field
        self.reason = reason


class Issue(NamedTuple):
    """One problem found in one row: ``(file, row, field, reason, message)``."""

    file: str
    row: int | None
    field: str | None
    reason: str
    message: str


def format_location(file: str, row: int | None, field: str | None, kind: str) -> str:
    """``"<file>: row 5 (1-based data row, header excluded), field 'findings'"``."""
    text = str(file)
    if row is not None:
        text += f": row {row} ({ROW_CONVENTIONS.get(kind, kind)})"
    if field is not None:
        text += f", field '{field}'" if row is not None else f": field '{field}'"
    return text


@dataclass
class LoadReport:
    """What happened while reading one file.

    Attributes:
        source: the file that was read.
        kind: ``csv`` | ``jsonl`` | ``parquet`` | ``xml`` (fixes the row convention).
        rows_read: data rows seen (blank lines are not rows, see ``blank_lines``).
        kept: rows that became records.
        skipped: rows skipped, counted once each under their first reason.
        issues: every problem found, several per row possible.
        blank_lines: whitespace-only lines ignored (they hold no data).
        notes: file-level remarks (e.g. an optional column absent, defaults applied).
    """

    source: str
    kind: str
    rows_read: int = 0
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    issues: list[Issue] = field(default_factory=list)
    blank_lines: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def row_convention(self) -> str:
        """What :attr:`Issue.row` means for this file."""
        return ROW_CONVENTIONS.get(self.kind, self.kind)

    def check_accounting(self) -> None:
        """Raise ``AssertionError`` unless every row read is either kept or counted as skipped."""
        total = self.kept + sum(self.skipped.values())
        if total != self.rows_read:
            raise AssertionError(f"{self.source}: rows_read={self.rows_read} but kept+skipped={total}")

    def summary(self, max_issues: int = 10) -> str:
        """Readable multi-line text: counts, skip reasons and the first issues."""
        lines = [
            f"{self.source} ({self.kind}; rows are {self.row_convention})",
            f"  rows read: {self.rows_read}",
            f"  kept:      {self.kept}",
            f"  skipped:   {sum(self.skipped.values())}",
        ]
        for reason, count in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    {reason}: {count}  ({REASONS.get(reason, '')})")
        if self.blank_lines:
            lines.append(f"  blank lines ignored: {self.blank_lines}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.issues:
            lines.append(f"  issues ({len(self.issues)}; first {min(max_issues, len(self.issues))}):")
            for issue in self.issues[:max_issues]:
                where = f"row {issue.row}" if issue.row is not None else "file"
                fld = f", {issue.field}" if issue.field else ""
                lines.append(f"    {where}{fld}: [{issue.reason}] {issue.message}")
        return "\n".join(lines)

    def to_dict(self, max_issues: int | None = None) -> dict[str, Any]:
        """JSON-safe dict (issues as dicts; ``max_issues`` caps the list, None keeps all)."""
        issues = self.issues if max_issues is None else self.issues[:max_issues]
        return {
            "source": str(self.source),
            "kind": self.kind,
            "row_convention": self.row_convention,
            "rows_read": self.rows_read,
            "kept": self.kept,
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_total": sum(self.skipped.values()),
            "blank_lines": self.blank_lines,
            "n_issues": len(self.issues),
            "issues": [issue._asdict() for issue in issues],
            "notes": list(self.notes),
        }


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def undecodable_bytes(text: str) -> bytes:
    """The raw bytes that were not valid UTF-8 in ``text`` (surrogate-escaped), or ``b''``."""
    out = bytearray()
    for match in _SURROGATE.finditer(text):
        code = ord(match.group())
        if 0xDC80 <= code <= 0xDCFF:
            out.append(code - 0xDC00)
        else:  # a lone surrogate from a JSON \\ud83d-style escape
            out.extend(match.group().encode("utf-8", "surrogatepass"))
    return bytes(out)


def text_problem(text: str) -> tuple[str, str] | None:
    """``(reason, message)`` when ``text`` cannot be stored as clean UTF-8 text, else None.

    Reasons: ``non_utf8`` (bytes that were not valid UTF-8, kept as surrogate escapes, or a
    lone surrogate from a JSON ``\\ud800`` escape: neither can be written out as UTF-8) and
    ``nul_byte`` (a NUL character). Shared by every loader and by ``radimpress draft``.
    """
    if _SURROGATE.search(text):
        raw = undecodable_bytes(text)
        if any(0xDC80 <= ord(ch) <= 0xDCFF for ch in text):
            return "non_utf8", f"holds bytes that are not valid UTF-8: {raw[:16]!r}"
        escapes = sorted({f"\\u{ord(ch):04x}" for ch in _SURROGATE.findall(text)})
        return "non_utf8", f"holds an invalid Unicode escape (lone surrogate {', '.join(escapes[:3])})"
    position = text.find("\x00")
    if position >= 0:
        return "nul_byte", f"holds a NUL byte (\\x00) at character {position + 1}"
    return None


def normalize_split(value: str) -> str | None:
    """Canonical split name for ``value`` (case-insensitive, common aliases), or None."""
    return SPLIT_ALIASES.get(value.strip().lower())


class RowValidator:
    """Validate raw rows of one file into canonical records, filling a :class:`LoadReport`.

    Args:
        report: the report of the file being read (``source`` and ``kind`` set).
        strict: raise :class:`DataValidationError` on the first problem.
        max_chars: longest accepted text (``LENGTH_CHECKED_FIELDS``); None disables the check.
        defaults: values for fields the source does not provide (e.g. ``modality='XR'``).
        source_name: short file label used in each record's ``source`` (``'<label>:<row>'``).
        require_split: an empty ``split`` is an ``invalid_split`` problem (when the source has a split column).
        scope: studies the run is for (:class:`~radimpress_lib.data.scope.StudyScope`); a valid row
            outside it is skipped and counted as ``out_of_scope``, also in strict mode (a filter, not an error).

    Report ids are checked against every earlier row with a valid id, kept or skipped: an id used
    twice is ambiguous whichever copy is valid.
    """

    def __init__(
        self,
        report: LoadReport,
        *,
        strict: bool = False,
        max_chars: int | None = 4000,
        defaults: Mapping[str, Any] | None = None,
        source_name: str | None = None,
        require_split: bool = False,
        scope: StudyScope | None = None,
    ) -> None:
        if max_chars is not None and max_chars <= 0:
            raise ValueError(f"max_chars must be positive or None, got {max_chars}")
        self.report = report
        self.strict = strict
        self.max_chars = max_chars
        self.defaults = dict(defaults or {})
        self.source_name = source_name or str(report.source)
        self.require_split = require_split
        self.scope = scope
        self._first_row_of_id: dict[str, tuple[int, str]] = {}  # id -> (first row, 'kept' or 'skipped: reason')

    # -- public -------------------------------------------------------------------------

    def blank_line(self) -> None:
        """Count a whitespace-only line (not a row)."""
        self.report.blank_lines += 1

    def reject(self, row: int, field: str | None, reason: str, message: str, *, location: str | None = None) -> None:
        """Record a row that could not even be parsed (counts as read and skipped)."""
        self.report.rows_read += 1
        self._raise_or_record([(field, reason, message)], row, location)
        self.report.skipped[reason] += 1

    def validate(
        self, row: int, raw: Mapping[str, Any], *, location: str | None = None, source: str | None = None
    ) -> dict[str, Any] | None:
        """Check one raw row; return its canonical record, or None when it is skipped.

        Args:
            row: 1-based row number (see :data:`ROW_CONVENTIONS`).
            raw: canonical field -> raw value; absent fields take ``defaults`` or their empty value;
                :data:`MISSING` marks a field the source should have but this row lacks.
            location: file label for issues (default: the report's source).
            source: the record's ``source`` value (default ``'<source_name>:<row>'``).
        """
        self.report.rows_read += 1
        problems: list[tuple[str | None, str, str]] = []
        record: dict[str, Any] = {}
        values = {**self.defaults, **raw}
        for name in REPORT_FIELDS:
            if name == "source":
                continue
            value = values.get(name)
            checked, issue = self._check_field(name, value)
            if issue is not None:
                problems.append((name, *issue))
            record[name] = checked
        record["source"] = source if source is not None else f"{self.source_name}:{row}"
        rid = record["report_id"] if not any(name == "report_id" for name, *_ in problems) else ""
        first = self._first_row_of_id.get(rid) if rid else None
        if first is not None:
            problems.append(("report_id", "duplicate_id",
                             f"report_id {rid!r} already used by row {first[0]} ({first[1]}); this row is skipped"))
        elif rid:
            self._first_row_of_id[rid] = (row, "kept")
        if problems:
            if rid and first is None:
                self._first_row_of_id[rid] = (row, f"skipped: {problems[0][1]}")
            self._raise_or_record(problems, row, location)
            self.report.skipped[problems[0][1]] += 1
            return None
        outside = self.scope.problem(record["modality"], record["body_part"]) if self.scope is not None else None
        if outside is not None:
            self._first_row_of_id[rid] = (row, "skipped: out_of_scope")
            self.report.issues.append(Issue(location or str(self.report.source), row, outside[0], "out_of_scope",
                                            outside[1]))
            self.report.skipped["out_of_scope"] += 1
            return None
        self.report.kept += 1
        return record

    # -- internals ----------------------------------------------------------------------

    def _raise_or_record(self, problems: list[tuple[str | None, str, str]], row: int, location: str | None) -> None:
        file = location or str(self.report.source)
        if self.strict:
            field_name, reason, message = problems[0]
            where = format_location(file, row, field_name, self.report.kind)
            raise DataValidationError(
                f"{where}: {message} [{reason}] (strict mode; use strict=False to skip and count such rows)",
                file=file,
                row=row,
                field=field_name,
                reason=reason,
            )
        for field_name, reason, message in problems:
            self.report.issues.append(Issue(file, row, field_name, reason, message))

    def _text(self, name: str, value: Any, *, allow_int: bool = False) -> tuple[str, tuple[str, str] | None]:
        """Coerce a text value; returns (text, None) or ('', (reason, message))."""
        if value is None:
            return "", None
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="surrogateescape")
        if allow_int and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            expected = "text or an integer id" if allow_int else "text"
            return "", ("wrong_type", f"expected {expected}, got {type(value).__name__} {_describe(value)}")
        problem = text_problem(value)
        if problem:
            return "", problem
        return value.strip(), None

    def _check_field(self, name: str, value: Any) -> tuple[Any, tuple[str, str] | None]:
        if value is MISSING:
            empty: Any = [] if name in ("mesh", "problems") else ("" if name != "radiologist_id" else None)
            return empty, ("missing_field", f"field '{name}' is absent from this row")
        if name in ("mesh", "problems"):
            return self._terms(value)
        if name in ("report_id", "radiologist_id"):
            text, issue = self._text(name, value, allow_int=True)
            if issue:
                return (None if name == "radiologist_id" else ""), issue
            if name == "radiologist_id":
                return (text or None), None
            if not text:
                return "", ("empty_report_id", "the report id is empty")
            return text, None
        text, issue = self._text(name, value)
        if issue:
            return "", issue
        if name in REQUIRED_TEXT_FIELDS and not text:
            return "", (f"empty_{name}", f"{name} is empty")
        if name == "split" and not text and self.require_split:
            return "", ("invalid_split", f"split is empty; expected one of {list(SPLITS)}")
        if name == "split" and text:
            canonical = normalize_split(text)
            if canonical is None:
                return "", ("invalid_split", f"split {text!r} is not one of {list(SPLITS)}")
            text = canonical
        if self.max_chars is not None and name in LENGTH_CHECKED_FIELDS and len(text) > self.max_chars:
            return "", ("too_long", f"{name} has {len(text)} characters > max_chars={self.max_chars}")
        return text, None

    def _terms(self, value: Any) -> tuple[list[str], tuple[str, str] | None]:
        """MeSH / problem terms: a ';'-separated string or a list of strings."""
        if value is None:
            return [], None
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="surrogateescape")
        if isinstance(value, str):
            items: Iterable[Any] = value.split(";")
        elif isinstance(value, (list, tuple)):
            items = value
        else:
            return [], ("wrong_type", f"expected ';'-separated text or a list of text, got {type(value).__name__}")
        terms: list[str] = []
        for item in items:
            if isinstance(item, bytes):
                item = item.decode("utf-8", errors="surrogateescape")
            if not isinstance(item, str):
                return [], ("wrong_type", f"expected text terms, got {type(item).__name__} {_describe(item)}")
            problem = text_problem(item)
            if problem:
                return [], problem
            if item.strip():
                terms.append(item.strip())
        return terms, None
