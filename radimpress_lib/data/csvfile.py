"""Strict CSV reading with true file lines, shared by the data layer and ``radimpress draft``.

Python's :mod:`csv` reader is lenient by default: a quote that is never closed
(``r1,Heart normal.,"No acute disease``) or a stray quote inside a quoted field
(``"Nodule measuring 5" in the RUL."``) silently folds the following lines into one field,
so three reports become one. :class:`CsvReader` parses with ``strict=True`` and, when a row
cannot be parsed, reports it (:attr:`CsvRow.problem`, with the file line it starts on) and
reads on from the line after that start, so an unbalanced quote costs one row, never the rest
of the file.

Reading is line by line, in constant memory: each physical line is read as bytes with a
bounded length, a UTF-8 byte-order mark on the first line is dropped, and bytes that are not
valid UTF-8 are kept as surrogate escapes (``errors="surrogateescape"``) so that the caller can
name the *field* holding them instead of failing on a whole chunk of the file. Rows and lines
are numbered as a reader sees them: :attr:`CsvRow.row` is the 1-based data row (header
excluded, blank lines not counted), :attr:`CsvRow.line` the file line it starts on (the header
is line 1).
"""

from __future__ import annotations

import contextlib
import csv
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

__all__ = ["PROBLEM_KINDS", "UTF8_BOM", "CsvFileError", "CsvReader", "CsvRow"]

#: The UTF-8 byte-order mark some exporters (Excel, several PACS / RIS tools) write first.
UTF8_BOM = b"\xef\xbb\xbf"

#: Longest header line read before the column count is known (characters).
_HEADER_CHARS = 1 << 16


class CsvFileError(ValueError):
    """The file cannot be read as CSV at all (empty, or an unreadable header row); ``line`` is its file line."""

    def __init__(self, message: str, *, line: int = 1) -> None:
        super().__init__(message)
        self.line = line


#: Kinds of unreadable rows (:attr:`CsvRow.kind`).
PROBLEM_KINDS = {
    "unbalanced_quote": "a quoted field that is never closed, or still open lines later",
    "stray_quote": "a quote inside a quoted field that is not doubled",
    "too_long": "a row or a line longer than the limit",
    "syntax": "any other CSV syntax error",
}


@dataclass(frozen=True)
class CsvRow:
    """One data row: its values, or None and why it could not be parsed (``kind``, ``problem``)."""

    row: int
    line: int
    values: list[str] | None
    problem: str = ""
    kind: str = ""


class _RowTooLong(Exception):
    """Raised by :class:`_Lines` when a row or a physical line passes its limit."""


class _Lines:
    """The csv module's line source: file lines decoded one at a time, numbered, bounded, with push-back."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.lineno = 0  # file lines read so far
        self.pending: deque[tuple[int, str]] = deque()  # lines to parse again after a bad row
        self.row: list[tuple[int, str]] = []  # (line number, text) handed out for the row being parsed
        self.max_row_chars: int | None = _HEADER_CHARS
        self._chars = 0

    def start_row(self) -> None:
        self.row, self._chars = [], 0

    def push_back(self, lines: list[tuple[int, str]]) -> None:
        self.pending.extendleft(reversed(lines))

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        number, text = self.pending.popleft() if self.pending else self._read()
        self.row.append((number, text))
        self._chars += len(text)
        if self.max_row_chars is not None and self._chars > self.max_row_chars:
            raise _RowTooLong(f"the row is longer than {self.max_row_chars} characters by file line {number} "
                              "(an unclosed quote, or a field far over the limit)")
        return text

    def _read(self) -> tuple[int, str]:
        cap = None if self.max_row_chars is None else 4 * self.max_row_chars  # UTF-8: at most 4 bytes a character
        raw = self.fh.readline(-1 if cap is None else cap + 1)
        if not raw:
            raise StopIteration
        self.lineno += 1
        if cap is not None and len(raw) > cap and not raw.endswith(b"\n"):
            while (chunk := self.fh.readline(1 << 16)) and not chunk.endswith(b"\n"):
                pass  # the rest of the over-long line is dropped unread
            raise _RowTooLong(f"file line {self.lineno} is longer than {cap} bytes")
        if self.lineno == 1 and raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM):]
        return self.lineno, raw.decode("utf-8", errors="surrogateescape")


@contextlib.contextmanager
def _field_size_limit(limit: int | None) -> Iterator[None]:
    """Raise the csv module's process-wide field limit for one ``next()`` (rows are bounded by :class:`_Lines`)."""
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, 1 << 28 if limit is None else limit + 1))
    try:
        yield
    finally:
        csv.field_size_limit(old)


class _Unreadable(Exception):
    def __init__(self, line: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.kind = kind
        self.message = message


class CsvReader:
    """Header and data rows of a CSV file opened in binary mode, parsed strictly.

    Args:
        fh: the file (or stdin) as a binary stream.
        delimiter: ``,`` (CSV) or a tab (TSV).
        max_field_chars: the longest field the caller accepts. Longer fields are still returned
            (the caller names the field), but a row longer than ``4 * max_field_chars`` per column
            (plus slack) is reported as unreadable without reading it further; None: no limit.

    Raises:
        CsvFileError: the file is empty or its header row cannot be parsed.
    """

    def __init__(self, fh: IO[bytes], *, delimiter: str = ",", max_field_chars: int | None = None) -> None:
        self._lines = _Lines(fh)
        self._dialect = {"delimiter": delimiter, "strict": True}
        self._reader = csv.reader(self._lines, **self._dialect)
        #: Whitespace-only lines seen between rows (not rows).
        self.blank_lines = 0
        if max_field_chars is None:
            self._lines.max_row_chars = None
        try:
            first = self._next_values()
        except _Unreadable as exc:
            raise CsvFileError(f"header row: {exc.message}", line=exc.line) from None
        if first is None:
            raise CsvFileError("the file is empty (no header row)")
        #: The header row as written (a byte-order mark removed).
        self.header: list[str] = first[1]
        if max_field_chars is not None:
            self._lines.max_row_chars = 4 * max_field_chars * max(1, len(self.header)) + 4096

    def _next_values(self) -> tuple[int, list[str]] | None:
        """``(first file line, values)`` of the next non-blank row; None at the end of the file."""
        lines = self._lines
        while True:
            lines.start_row()
            try:
                with _field_size_limit(lines.max_row_chars):
                    values = next(self._reader)
            except StopIteration:
                return None
            except (csv.Error, _RowTooLong) as exc:
                consumed = lines.row
                start = consumed[0][0] if consumed else lines.lineno
                last = consumed[-1][0] if consumed else start
                lines.push_back(consumed[1:])  # read on from the line after the row's start
                self._reader = csv.reader(lines, **self._dialect)
                raise _Unreadable(start, *_explain(exc, start, last)) from None
            if not values or (len(values) == 1 and not values[0].strip()):
                self.blank_lines += 1
                continue
            return lines.row[0][0], values

    def __iter__(self) -> Iterator[CsvRow]:
        number = 0
        while True:
            try:
                got = self._next_values()
            except _Unreadable as exc:
                number += 1
                yield CsvRow(number, exc.line, None, exc.message, exc.kind)
                continue
            if got is None:
                return
            number += 1
            yield CsvRow(number, got[0], got[1])


def _explain(exc: Exception, start: int, last: int) -> tuple[str, str]:
    """``(kind, message)``: why the row starting on file line ``start`` could not be parsed.

    ``last`` is the file line where parsing stopped.
    """
    if isinstance(exc, _RowTooLong):
        return "too_long", f"{exc} (the row starts on file line {start})"
    message = str(exc)
    unbalanced = f'unbalanced quote ("): a quoted field opened in the row starting on file line {start}'
    read_on = "the lines after it are read as rows of their own"
    if "unexpected end of data" in message:
        return "unbalanced_quote", f"{unbalanced} is never closed (the file ends first); {read_on}"
    if "expected after" in message and last > start:
        return "unbalanced_quote", f"{unbalanced} is still open on file line {last}; {read_on}"
    if "expected after" in message:
        return "stray_quote", (f"a '\"' inside a quoted field on file line {start} is not doubled (write it as \"\" "
                               "or leave the field unquoted)")
    return "syntax", f"CSV syntax error on file line {last} ({message}); the row starts on file line {start}"
