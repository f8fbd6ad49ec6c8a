"""``radimpress draft``: draft impressions for a file of reports (or one report on stdin), with flags.

A radiologist's reading workflow: the reports of a session (findings, indication,
comparison, modality and body part, optionally the radiologist id) go in as JSONL or CSV, or
one report is piped in on stdin; out comes one JSON line per report holding the drafted
impression, its **factual-consistency flags** (a finding the draft states that the findings do
not support, a finding whose status flipped between present and absent) and whether it
**needs review** and why, so the radiologist knows what to check before signing.

Usage::

    radimpress draft reports.jsonl -o drafts.jsonl            # default model + its SFT adapter
    radimpress draft reports.csv --model ci-tiny --adapter none --limit 10
    radimpress draft export.csv --columns findings=Findings,report_id=AccessionNumber -o drafts.jsonl
    echo "Heart size normal. No effusion." | radimpress draft --indication "cough"
    echo '{"findings": "...", "comparison": "none"}' | radimpress draft -

Design:

* **streaming, constant memory**: :func:`iter_reports` is a generator that reads one line
  (JSONL) or one CSV row at a time with a bounded line length; :func:`draft_stream` takes
  ``batch_size`` reports, drafts them, writes their rows, then reads on. Memory is one batch
  plus the model, whatever the file size (except with ``--worklist-budget``, below).
* **strict input, true lines**: CSV is parsed strictly (:mod:`radimpress_lib.data.csvfile`: an
  unbalanced quote is reported, never folds the next rows into one report); a UTF-8 byte-order
  mark is dropped; every message names the file line a row starts on. ``--columns`` maps the
  headers of an export (``findings=Findings,report_id=AccessionNumber``); a header that differs
  from a field name only by case is used and said so.
* **input limits**: ``--max-chars`` per field (default ``draft.max_chars``), ``--max-reports``
  per run (default ``draft.max_reports``); over-long fields or lines, missing / empty findings,
  non-string fields, invalid JSON, bytes that are not UTF-8, invalid Unicode escapes and NUL
  bytes raise :class:`InputError` naming the file, line and field (exit status 2). With
  ``--skip-invalid`` such rows are skipped instead, counted by reason and listed on stderr
  (never dropped silently).
* **study scope**: the model is for the studies of its training data (``data.modalities`` /
  ``data.body_parts``, default XR CHEST); a report of another study (a CT of the head) is drafted
  and flagged (``needs_review``, reason ``out_of_scope``) or, with ``--out-of-scope refuse``
  (``draft.out_of_scope``), not drafted and counted.
* **the impression**: with the run's fine-tuned model, ``--select mbr`` (``draft.select``, the default)
  writes notebook 05's ``sft_mbr``: the minimum-Bayes-risk choice among the model's draft, the
  impressions of the ``eval.mbr_k`` most similar train+validate reports and the draft preceded by the
  findings sentences it omits (:class:`radimpress_lib.llm.selection.NeighbourMBR`, :func:`mbr_drafter`);
  the row says ``selection`` and keeps ``model_draft`` when another candidate won. ``--select draft``
  writes the greedy draft (notebook 05's ``sft``); ``--adapter none`` always does.
* **needs review**: each row carries ``risk``, the review-risk score of the run's risk model
  (``outputs/<model>/triage/risk_model.json``, fitted and thresholded on validate drafts by notebook
  05, with ``--select mbr`` ``risk_model_sft_mbr.json``, the same weights thresholded on ``sft_mbr``'s
  validate drafts; :class:`radimpress_lib.evaluation.triage.DraftTriage`), and ``needs_review`` when the risk
  reaches the model's operating threshold (or the threshold for ``--review-budget``, a share of
  validate drafts), or the study is out of scope, the draft empty or cut at the token limit. With
  ``--worklist-budget SHARE`` (``draft.worklist_budget``) the riskiest SHARE of the run's own drafts
  is flagged instead (:func:`apply_worklist_budget`): the flag rate is the budget whatever the worklist's
  risks, where a validate threshold flags fewer drafts of a worklist less risky than validate; rows are
  then written once the whole input is drafted (memory: the rows, at most ``--max-reports``).
  ``review_reasons`` lists ``{kind, message, severity}`` for each reason, most severe first
  (:data:`radimpress_lib.clinical.checks.REASON_SEVERITY`: out of scope / empty, negation flips,
  omitted findings, unsupported findings, truncation, the risk itself with the findings impressions
  usually state); it is empty exactly when ``needs_review`` is false. Without a risk model (notebook 05
  not run, or ``--risk-model none``) ``risk`` is null and ``needs_review`` comes from the rule flags
  (every factual flag; a note on stderr says so).
* **checkers** are plain functions ``(record, draft) -> list[flag dict]`` (:data:`Checker`);
  :func:`labeler_checker` uses the CheXpert-style labeler; :func:`default_checkers` adds the
  entity-graph checker of :mod:`radimpress_lib.clinical.graph` when that module provides one.
* **safe output**: ``-o`` may not name the input file; drafts are written to a temporary file beside
  the output and renamed into place when the run succeeds, so a failed run never leaves half a file.
  Progress goes to stderr; every error is one line (``RADIMPRESS_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from radimpress_lib.clinical.checks import Checker, default_checkers, order_reasons, review_reasons
from radimpress_lib.core import artifacts, config, seeding
from radimpress_lib.core.config import ParamsError
from radimpress_lib.data.csvfile import UTF8_BOM, CsvFileError, CsvReader
from radimpress_lib.data.scope import StudyScope
from radimpress_lib.data.validation import text_problem

__all__ = [
    "INPUT_FIELDS",
    "DraftInput",
    "DraftSummary",
    "Drafter",
    "InputError",
    "InputLimits",
    "draft_stream",
    "iter_reports",
    "main",
    "model_drafter",
    "parse_columns",
]

#: Fields read from each input row (``findings`` is required, the rest optional).
INPUT_FIELDS = ("report_id", "findings", "indication", "comparison", "radiologist_id", "modality", "body_part")
_OPTIONAL_ID_FIELDS = ("report_id", "radiologist_id")

#: Drafts a batch: records -> one dict per record with at least ``draft`` (str).
Drafter = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]

#: Skip reason (``--skip-invalid`` counts) of each kind of unreadable CSV row.
_CSV_REASONS = {"unbalanced_quote": "unbalanced quote", "stray_quote": "quote inside a quoted field",
                "too_long": "row too long", "syntax": "CSV syntax error"}


class InputError(ValueError):
    """A bad input row or file; the message names the file, line and field.

    ``reason`` is the short, location-free text ``--skip-invalid`` counts the row under
    (e.g. ``"field 'findings' is empty"``).
    """

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message.split(": ", 1)[-1]


@dataclass(frozen=True)
class InputLimits:
    """Limits on what the CLI accepts."""

    max_chars: int = 4000
    max_reports: int = 100_000

    def __post_init__(self) -> None:
        if self.max_chars <= 0 or self.max_reports <= 0:
            raise ValueError(f"limits must be positive, got {self}")

    @property
    def max_line_bytes(self) -> int:
        """Longest JSONL line read: every field at the limit, 4 bytes a character, escapes and keys."""
        return 6 * self.max_chars * len(INPUT_FIELDS) + 4096


@dataclass(frozen=True)
class DraftInput:
    """One validated input report and where it came from (``line``: the file line it starts on)."""

    record: dict[str, Any]
    file: str
    line: int

    @property
    def location(self) -> str:
        """``file:line``."""
        return f"{self.file}:{self.line}"


@dataclass
class DraftSummary:
    """What one :func:`draft_stream` run did."""

    n_read: int = 0
    n_drafted: int = 0
    n_flagged: int = 0
    n_flags: int = 0
    flags_by_kind: Counter = field(default_factory=Counter)
    n_needs_review: int = 0
    reasons_by_kind: Counter = field(default_factory=Counter)
    n_out_of_scope: int = 0
    n_refused: int = 0
    skipped: Counter = field(default_factory=Counter)
    wall_time_s: float = 0.0
    n_batches: int = 0
    n_guard_rewritten: int = 0
    n_guard_unresolved: int = 0
    triage: str = "rules"
    #: where the written impressions came from with --select mbr (draft, retrieved:<rank>, coverage)
    selected: Counter = field(default_factory=Counter)

    @property
    def reports_per_s(self) -> float:
        """Drafted reports per second of wall time."""
        return self.n_drafted / self.wall_time_s if self.wall_time_s > 0 else math.nan

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "n_read": self.n_read, "n_drafted": self.n_drafted, "n_flagged": self.n_flagged, "n_flags": self.n_flags,
            "flags_by_kind": dict(self.flags_by_kind), "n_needs_review": self.n_needs_review,
            "reasons_by_kind": dict(self.reasons_by_kind), "n_out_of_scope": self.n_out_of_scope,
            "n_refused": self.n_refused, "skipped": dict(self.skipped),
            "wall_time_s": self.wall_time_s, "reports_per_s": self.reports_per_s, "n_batches": self.n_batches,
            "n_guard_rewritten": self.n_guard_rewritten, "n_guard_unresolved": self.n_guard_unresolved,
            "triage": self.triage, "selected": dict(self.selected),
        }


# --------------------------------------------------------------------------- reading


def _detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise InputError(f"{path}: cannot tell the format from the suffix {suffix!r}; use --format jsonl|csv")


def parse_columns(spec: str | Sequence[str] | None) -> dict[str, str]:
    """``"findings=Findings,report_id=AccessionNumber"`` (or several such strings) -> ``{field: column}``.

    Fields are those of :data:`INPUT_FIELDS`; each is mapped once, to a non-empty column name.
    """
    out: dict[str, str] = {}
    for part in ([spec] if isinstance(spec, str) else list(spec or [])):
        for item in part.split(","):
            name, sep, column = (s.strip() for s in item.partition("="))
            if not sep or not name or not column:
                raise InputError(f"--columns: {item.strip()!r} is not field=column (e.g. findings=Findings)",
                                 reason="bad --columns")
            if name not in INPUT_FIELDS:
                raise InputError(f"--columns: unknown field {name!r}; fields are {list(INPUT_FIELDS)}",
                                 reason="bad --columns")
            if name in out:
                raise InputError(f"--columns: field {name!r} is mapped twice", reason="bad --columns")
            out[name] = column
    return out


def _resolve_columns(available: Sequence[str], columns: Mapping[str, str], where: str, notes: Counter,
                     *, header: bool) -> dict[str, str]:
    """``{field: column}``: ``--columns`` first, then the field's own name, then the one name that differs only
    by case (said in ``notes``). ``header``: the names are a CSV header, so a mapped column must be one of them."""
    names = set(available)
    mapping: dict[str, str] = {}
    for name, column in columns.items():
        if header and column not in names:
            raise InputError(f"{where}: --columns maps {name!r} to {column!r}, which is not a column of the header "
                             f"{list(available)}", reason="bad --columns")
        mapping[name] = column
    taken = set(mapping.values())
    kind = "column" if header else "key"
    for name in INPUT_FIELDS:
        if name in mapping or name in taken:
            continue
        if name in names:
            mapping[name] = name
            continue
        similar = [c for c in available if c.lower() == name and c not in taken]
        if len(similar) > 1:
            raise InputError(f"{where}: {' and '.join(map(repr, similar))} both differ from {name!r} only by case; "
                             f"choose one with --columns {name}=<{kind}>", reason="ambiguous columns")
        if similar:
            mapping[name] = similar[0]
            notes[f"{kind} {similar[0]!r} read as {name!r} (differs only by case)"] += 1
    return mapping


def _validate(raw: Mapping[str, Any], file: str, line: int, limits: InputLimits) -> dict[str, Any]:
    """A canonical record from one input row, or :class:`InputError` naming file, line and field."""
    where = f"{file}:{line}"
    record: dict[str, Any] = {}
    for name in INPUT_FIELDS:
        value = raw.get(name)
        if value is None or (isinstance(value, str) and name in _OPTIONAL_ID_FIELDS and not value.strip()):
            record[name] = None if name in _OPTIONAL_ID_FIELDS else ""
            continue
        if name in _OPTIONAL_ID_FIELDS and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise InputError(f"{where}: field {name!r} must be a string, got {type(value).__name__} {value!r:.60}",
                             reason=f"field {name!r} must be a string")
        problem = text_problem(value)
        if problem is not None:
            raise InputError(f"{where}: field {name!r} {problem[1]}", reason=f"field {name!r} not valid text")
        if len(value) > limits.max_chars:
            raise InputError(
                f"{where}: field {name!r} has {len(value)} characters, more than the limit of {limits.max_chars} "
                "(--max-chars)", reason=f"field {name!r} over --max-chars")
        record[name] = value.strip()
    if not record["findings"]:
        state = "missing" if "findings" not in raw else "empty"
        raise InputError(f"{where}: field 'findings' is {state}", reason=f"field 'findings' is {state}")
    return record


def _discard_rest_of_line(fh: IO[bytes]) -> None:
    while (chunk := fh.readline(1 << 16)) and not chunk.endswith(b"\n"):
        pass


def _iter_jsonl(
    fh: IO[bytes], file: str, limits: InputLimits, notes: Counter, columns: Mapping[str, str]
) -> Iterator[tuple[int, dict[str, Any] | InputError]]:
    """(line number, raw row) for each non-blank line, reading at most ``max_line_bytes`` a line.

    Row-level problems are yielded (not raised) so that ``--skip-invalid`` can go on reading;
    undecodable bytes are kept as surrogate escapes, so :func:`_validate` names the field.
    """
    cap = limits.max_line_bytes
    for lineno in itertools.count(1):
        raw = fh.readline(cap + 1)
        if not raw:
            return
        if len(raw) > cap and not raw.endswith(b"\n"):
            _discard_rest_of_line(fh)  # constant memory: the rest of the line is never held
            yield lineno, InputError(f"{file}:{lineno}: line longer than {cap} bytes (fields are limited to "
                                     f"{limits.max_chars} characters, --max-chars)", reason="line too long")
            continue
        if lineno == 1 and raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM):]
        text = raw.decode("utf-8", errors="surrogateescape")
        if not text.strip():
            notes["blank line"] += 1
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield lineno, InputError(f"{file}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})",
                                     reason="invalid JSON")
            continue
        if not isinstance(obj, dict):
            yield lineno, InputError(f"{file}:{lineno}: expected a JSON object with a 'findings' field, "
                                     f"got {type(obj).__name__}", reason="not a JSON object")
            continue
        try:
            mapping = _resolve_columns(list(obj), columns, f"{file}:{lineno}", notes, header=False)
        except InputError as exc:
            yield lineno, exc
            continue
        yield lineno, {name: obj[key] for name, key in mapping.items() if key in obj}


def _iter_csv(
    fh: IO[bytes], file: str, limits: InputLimits, notes: Counter, columns: Mapping[str, str]
) -> Iterator[tuple[int, dict[str, Any] | InputError]]:
    """(file line a row starts on, raw row) for each CSV row; the header must name a ``findings`` column."""
    try:
        reader = CsvReader(fh, max_field_chars=limits.max_chars)
    except CsvFileError as exc:
        raise InputError(f"{file}:{exc.line}: {exc}") from None
    header = [c.strip() for c in reader.header]
    bad = [c for c in header if text_problem(c)]
    if bad:
        raise InputError(f"{file}:1: the header holds bytes that are not valid UTF-8: {bad}")
    dupes = sorted(c for c, n in Counter(header).items() if n > 1)
    if dupes:
        raise InputError(f"{file}:1: duplicate columns {dupes}")
    mapping = _resolve_columns(header, columns, f"{file}:1", notes, header=True)
    if "findings" not in mapping:
        raise InputError(f"{file}:1: the CSV header {header} has no 'findings' column (expected columns among "
                         f"{list(INPUT_FIELDS)}; map another with --columns findings=<column>)")
    ignored = [c for c in header if c not in mapping.values()]
    if ignored:
        notes[f"ignored columns {ignored}"] += 1
    index = {name: header.index(column) for name, column in mapping.items()}
    for row in reader:
        if row.values is None:
            yield row.line, InputError(f"{file}:{row.line}: {row.problem}", reason=_CSV_REASONS[row.kind])
            continue
        if len(row.values) > len(header):
            yield row.line, InputError(f"{file}:{row.line}: {len(row.values) - len(header)} more values than the "
                                       f"{len(header)} header columns", reason="more values than header columns")
            continue
        if all(not v for v in row.values):
            notes["blank line"] += 1
            continue
        values = {name: row.values[i] if i < len(row.values) else None for name, i in index.items()}
        yield row.line, {k: (None if v == "" and k in _OPTIONAL_ID_FIELDS else v) for k, v in values.items()}


def iter_reports(
    path: str | Path | None,
    *,
    fmt: str = "auto",
    limits: InputLimits = InputLimits(),
    stdin: IO[bytes] | None = None,
    skip_invalid: bool = False,
    skipped: Counter | None = None,
    text_fields: Mapping[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
    columns: Mapping[str, str] | None = None,
) -> Iterator[DraftInput]:
    """Validated reports, read lazily one at a time (constant memory).

    Args:
        path: a JSONL or CSV file, or ``None`` / ``"-"`` for stdin.
        fmt: ``auto`` (by suffix; on stdin: JSONL when the first character is ``{``, else
            ``text``), ``jsonl``, ``csv`` or ``text`` (the whole input is the findings of one report).
        limits: per-field characters and report count.
        stdin: binary stream used for ``-`` (default ``sys.stdin.buffer``).
        skip_invalid: skip bad rows (counted in ``skipped`` by reason) instead of raising.
        skipped: Counter receiving ``reason -> count`` (also notes such as blank lines).
        text_fields: extra fields (indication, comparison, radiologist_id, modality, body_part) for ``text`` input.
        warn: called with one line per skipped row (``skipped file:line: reason``).
        columns: ``{field: column or key}`` of an export whose names differ (see :func:`parse_columns`).

    Raises:
        InputError: a bad row (unless ``skip_invalid``), a bad file, or more than ``max_reports``.
    """
    skipped = skipped if skipped is not None else Counter()
    columns = dict(columns or {})
    use_stdin = path is None or str(path) == "-"
    name = "<stdin>" if use_stdin else str(path)
    if use_stdin:
        fh: IO[bytes] = stdin if stdin is not None else sys.stdin.buffer
        close = False
    else:
        p = Path(path)  # type: ignore[arg-type]
        if not p.is_file():
            raise InputError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
        fmt = _detect_format(p) if fmt == "auto" else fmt
        fh = p.open("rb")
        close = True
    try:
        if use_stdin and fmt == "auto":
            head = fh.peek(64)[:64] if hasattr(fh, "peek") else b""
            if not head and hasattr(fh, "peek"):
                raise InputError(f"{name}: no input (pipe a report, or pass a JSONL/CSV file)")
            if hasattr(fh, "peek"):
                fmt = "jsonl" if head.removeprefix(UTF8_BOM).lstrip()[:1] == b"{" else "text"
            else:
                fmt = "text"
        if fmt == "text":
            rows: Iterator[tuple[int, dict[str, Any] | InputError]] = _iter_text(fh, name, limits, text_fields or {})
        elif fmt == "jsonl":
            rows = _iter_jsonl(fh, name, limits, skipped, columns)
        elif fmt == "csv":
            rows = _iter_csv(fh, name, limits, skipped, columns)
        else:
            raise InputError(f"{name}: unknown format {fmt!r}; use auto, jsonl, csv or text")
        n = 0
        rows_to_close = rows
        while True:
            try:
                lineno, raw = next(rows)
            except StopIteration:
                break
            try:
                if isinstance(raw, InputError):  # a row the reader could not parse (errors of the file raise)
                    raise raw
                record = _validate(raw, name, lineno, limits)
            except InputError as exc:
                if skip_invalid:
                    skipped[exc.reason] += 1
                    if warn is not None:
                        warn(f"skipped {exc}")
                    continue
                raise
            n += 1
            if n > limits.max_reports:
                raise InputError(f"{name}:{lineno}: more than {limits.max_reports} reports (--max-reports); "
                                 "split the file or raise the limit")
            if record["report_id"] is None:
                record["report_id"] = f"{Path(name).name}:{lineno}"
            yield DraftInput(record, name, lineno)
    finally:
        if "rows_to_close" in locals():
            rows_to_close.close()
        if close:
            fh.close()


def _iter_text(fh: IO[bytes], name: str, limits: InputLimits, extra: Mapping[str, str]
               ) -> Iterator[tuple[int, dict[str, Any]]]:
    raw = fh.read(4 * limits.max_chars + 1)
    if len(raw) > 4 * limits.max_chars or (raw and fh.read(1)):
        raise InputError(f"{name}:1: field 'findings' is longer than the limit of {limits.max_chars} characters "
                         "(--max-chars)")
    try:
        text = raw.removeprefix(UTF8_BOM).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name}:1: field 'findings' is not valid UTF-8 (byte {exc.start})") from None
    yield 1, {"findings": text, **{k: v for k, v in extra.items() if v is not None}}


# --------------------------------------------------------------------------- checking


# --------------------------------------------------------------------------- drafting


def model_drafter(model: Any, tokenizer: Any, gen_cfg: Any, *, model_name: str,
                  model_config: Mapping[str, Any] | None = None,
                  context: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
                  guard_candidates: int = 0, token_stats: bool = False) -> Drafter:
    """A :data:`Drafter` decoding with :func:`radimpress_lib.llm.generation.generate_impressions`.

    ``context`` adds the prompt context the model was trained with (retrieval-augmented SFT:
    :func:`radimpress_lib.llm.retrieval.prompt_context_for_run`). ``guard_candidates >= 2`` turns on
    the factual guard (:func:`radimpress_lib.evaluation.factual_guard.guard_predictions`): a draft whose
    entity graph contradicts its findings is re-decoded with that many beams and replaced by
    the best-ranked candidate without the contradiction; such a draft carries
    ``guard: {original, beam_rank}`` (``beam_rank`` None: no candidate resolved it).

    ``token_stats``: also return what the review triage reads, under the private key ``_triage``
    (the drafted record with its prompt context, token log-probabilities and entropies; a draft the
    guard replaced is scored by teacher forcing); :func:`draft_stream` never writes ``_`` keys.
    """
    from radimpress_lib.llm import generation  # torch/transformers: imported only when drafting, so --help and input errors stay instant

    if guard_candidates == 1 or guard_candidates < 0:
        raise ValueError(f"guard candidates must be 0 (off) or >= 2, got {guard_candidates}")

    def draft(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # generate_impressions keys its rows by report_id: use batch positions (input ids may repeat).
        keyed = [dict(r, report_id=str(i)) for i, r in enumerate(context(records) if context else records)]
        result = generation.generate_impressions(model, tokenizer, keyed, gen_cfg, model_name=model_name,
                                                 model_config=model_config, log=lambda _line: None,
                                                 token_stats=token_stats)
        predictions = result.predictions
        if guard_candidates:
            from radimpress_lib.evaluation.factual_guard import guard_predictions  # torch: only with --guard

            predictions = guard_predictions(model, tokenizer, keyed, predictions, n_candidates=guard_candidates,
                                            max_new_tokens=gen_cfg.max_new_tokens, log=lambda _line: None).predictions
        # a draft the guard replaced by a beam candidate: the stop status and length of that candidate are unknown
        out = [{"draft": p["prediction"], **({"stopped": None, "n_new_tokens": None, "guard": p["guard"]}
                                             if (p.get("guard") or {}).get("beam_rank") is not None else
                                             {"stopped": p["stopped"], "n_new_tokens": p["n_new_tokens"],
                                              **({"guard": p["guard"]} if "guard" in p else {})})}
               for p in predictions]
        if token_stats:
            replaced = [i for i, o in enumerate(out) if o.get("stopped") is None]
            rescored = dict(zip(replaced, generation.score_drafts(
                model, tokenizer, [keyed[i] for i in replaced], [out[i]["draft"] for i in replaced]))) if replaced else {}
            for i, (o, p) in enumerate(zip(out, predictions)):
                stats = rescored.get(i) or {k: p.get(k) or [] for k in ("token_logprobs", "token_entropies")}
                o["_triage"] = {"record": keyed[i], **stats}
        return out

    return draft


def mbr_drafter(drafter: Drafter, select: Callable[[list[dict[str, Any]], list[str]], list[Any]]) -> Drafter:
    """``drafter`` followed by a selection (:class:`radimpress_lib.llm.selection.NeighbourMBR`), as notebook 05's
    ``sft_mbr``: each row carries ``selection`` (``draft``, ``retrieved:<rank>`` or ``coverage``) and, when the
    written impression is not the model's draft, ``model_draft``. A retrieved impression has no stop status or
    token count (``None``); the review triage reads no token statistics, as 05 scored ``sft_mbr``.
    """

    def draft(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = drafter(records)
        for o, choice in zip(out, select(records, [o["draft"] for o in out])):
            o["selection"] = choice.source
            if choice.source != "draft":
                o["model_draft"], o["draft"] = o["draft"], choice.text
            if choice.source.startswith("retrieved"):
                o["stopped"] = o["n_new_tokens"] = None
            if "_triage" in o:
                o["_triage"] = {"record": o["_triage"]["record"]}
        return out

    return draft


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def draft_stream(
    inputs: Iterable[DraftInput],
    drafter: Drafter,
    checkers: Sequence[tuple[str, Checker]],
    write: Callable[[dict[str, Any]], None],
    *,
    batch_size: int = 16,
    limit: int | None = None,
    progress: Callable[[str], None] | None = None,
    extra: Mapping[str, Any] | None = None,
    summary: DraftSummary | None = None,
    scope: StudyScope | None = None,
    out_of_scope: str = "flag",
    triage: Any = None,
) -> DraftSummary:
    """Read, draft, check and write in batches of ``batch_size`` (one batch in memory at a time).

    Each written row: ``report_id, radiologist_id, source (file:line), draft, flags, n_flags,
    needs_review, review_reasons`` plus the drafter's extras (``stopped``, ``n_new_tokens``) and
    ``extra``. ``review_reasons`` is a list of ``{kind, message}``
    (:func:`radimpress_lib.clinical.checks.review_reasons`); ``needs_review`` is true when it is not empty.

    ``triage``: a :class:`radimpress_lib.evaluation.triage.DraftTriage` (or anything with its ``assess``):
    each row then carries ``risk``, and ``needs_review`` is the risk reaching its threshold or a hard
    reason (:data:`radimpress_lib.evaluation.triage.HARD_REASONS`); the reasons are ordered by
    severity. Without it ``risk`` is None and every factual flag is a reason (rule flags). The
    drafter's ``_triage`` entries (prompt context, token statistics) feed it; they are not written.

    ``scope``: the studies the model is for. A report outside it is drafted and flagged
    (``out_of_scope="flag"``) or, with ``"refuse"``, not drafted: counted in ``summary.skipped``
    and said on ``progress`` (``refused file:line: why``).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    if out_of_scope not in ("flag", "refuse"):
        raise ValueError(f"out_of_scope must be 'flag' or 'refuse', got {out_of_scope!r}")
    deferred = getattr(triage, "worklist_budget", None) is not None
    summary = summary or DraftSummary()
    source = itertools.islice(inputs, limit) if limit is not None else inputs
    t0 = time.perf_counter()
    for batch in _batches(source, batch_size):
        summary.n_read += len(batch)
        if scope is not None and out_of_scope == "refuse":
            batch = [item for item in batch if not _refused(item, scope, summary, progress)]
            if not batch:
                continue
        drafts = drafter([item.record for item in batch])
        if len(drafts) != len(batch):
            raise RuntimeError(f"drafter returned {len(drafts)} drafts for {len(batch)} reports")
        assessed = _assess(triage, batch, drafts)
        for item, out, risk in zip(batch, drafts, assessed):
            text = out["draft"]
            flags = [f for _name, check in checkers for f in check(item.record, text)]
            if risk is None:  # rule flags: every factual flag is a reason
                reasons = order_reasons(review_reasons(item.record, text, flags, stopped=out.get("stopped"),
                                                       n_new_tokens=out.get("n_new_tokens"), scope=scope))
            else:  # review-risk model: hard reasons always, the rest when the risk reaches the threshold
                hard = review_reasons(item.record, text, [], stopped=out.get("stopped"),
                                      n_new_tokens=out.get("n_new_tokens"), scope=scope)
                if deferred:  # a worklist budget: apply_worklist_budget adds the risk reasons of the riskiest drafts
                    reasons = order_reasons(hard)
                else:
                    reasons = order_reasons(hard + risk["reasons"]) if hard or risk["flag"] else []
            row = {"report_id": item.record["report_id"], "radiologist_id": item.record.get("radiologist_id"),
                   "source": item.location, "draft": text, "flags": flags, "n_flags": len(flags),
                   "risk": None if risk is None else risk["risk"],
                   "needs_review": bool(reasons), "review_reasons": reasons,
                   **{k: v for k, v in out.items() if k != "draft" and not k.startswith("_")}, **(extra or {})}
            if deferred:
                row["_worklist"] = {"hard": hard, "risk": risk["reasons"]}
            write(row)
            summary.n_drafted += 1
            summary.n_flags += len(flags)
            summary.n_flagged += bool(flags)
            summary.flags_by_kind.update(f["kind"] for f in flags)
            summary.n_needs_review += bool(reasons)
            summary.reasons_by_kind.update(r["kind"] for r in reasons)
            summary.n_out_of_scope += any(r["kind"] == "out_of_scope" for r in reasons)
            if "selection" in out:
                summary.selected[out["selection"].split(":")[0]] += 1
            if "guard" in out:
                rewritten = out["guard"].get("beam_rank") is not None
                summary.n_guard_rewritten += rewritten
                summary.n_guard_unresolved += not rewritten
        summary.n_batches += 1
        summary.wall_time_s = time.perf_counter() - t0
        if progress is not None:
            progress(f"draft: batch {summary.n_batches} | {summary.n_drafted} reports | "
                     f"{summary.reports_per_s:.2f} reports/s | {summary.n_needs_review} need review")
    summary.wall_time_s = time.perf_counter() - t0
    return summary


def apply_worklist_budget(rows: Sequence[dict[str, Any]], budget: float, summary: DraftSummary | None = None) -> int:
    """Flag the riskiest ``budget`` share of a worklist's ``rows`` (written by :func:`draft_stream` with a
    worklist-budget triage); returns how many were picked.

    The picked rows (:func:`radimpress_lib.evaluation.triage.worklist_flags`; a row with a hard reason ranks
    first and counts against the budget, as notebook 05 scores it) get their risk reasons; every row keeps
    its hard reasons. ``summary``'s review counts are brought up to date.
    """
    from radimpress_lib.evaluation.triage import worklist_flags  # pandas/scikit-learn: only with a risk model

    pending = [row.pop("_worklist") for row in rows]
    picked = worklist_flags([(row["risk"] or 0.0) + (1.0 if p["hard"] else 0.0) for row, p in zip(rows, pending)],
                            budget)
    for row, p, pick in zip(rows, pending, picked):
        if not pick:
            continue
        row["review_reasons"] = order_reasons(p["hard"] + p["risk"])
        if summary is not None:
            summary.n_needs_review += not row["needs_review"]
            summary.reasons_by_kind.update(r["kind"] for r in p["risk"])
        row["needs_review"] = True
    return int(picked.sum())


def _assess(triage: Any, batch: Sequence[DraftInput], drafts: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The review triage of one batch (``None`` per draft without a triage)."""
    if triage is None:
        return [None] * len(batch)
    records = [(out.get("_triage") or {}).get("record") or item.record for item, out in zip(batch, drafts)]
    rows = [{"stopped": out.get("stopped"), **{k: v for k, v in (out.get("_triage") or {}).items() if k != "record"}}
            for out in drafts]
    return triage.assess(records, [out["draft"] for out in drafts], rows)


def _refused(item: DraftInput, scope: StudyScope, summary: DraftSummary,
             progress: Callable[[str], None] | None) -> bool:
    """Whether ``item`` is outside ``scope`` (then counted as refused and said on ``progress``)."""
    problem = scope.problem(item.record.get("modality"), item.record.get("body_part"))
    if problem is None:
        return False
    summary.n_refused += 1
    summary.n_out_of_scope += 1
    summary.skipped["out of scope (refused)"] += 1
    if progress is not None:
        progress(f"refused {item.location}: {problem[1]}")
    return True


# --------------------------------------------------------------------------- command line


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _load_params(name_or_path: str):
    """The params of ``--model``; an unreadable file is an :class:`InputError` naming it (one line)."""
    p = Path(name_or_path)
    path = p if p.suffix in (".yaml", ".yml") else config.params_path(name_or_path)
    try:
        return config.load_params(path)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: the params file is not valid UTF-8 (byte {exc.start})") from None
    except FileNotFoundError:
        raise
    except OSError as exc:  # a folder, a permission error ...
        raise InputError(f"{exc.filename or path}: cannot read the params file ({exc.strerror or exc})") from None


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # the output does not exist yet
        return Path(a).resolve() == Path(b).resolve()


class _AtomicOutput:
    """The ``-o`` file: written to a temporary file beside it, renamed into place by :meth:`commit`.

    Opening it checks the path at once (before any model is loaded): a folder, a parent that is
    a file or an unwritable folder is an :class:`InputError` naming the path.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise InputError(f"{self.path}: is a directory; -o needs a file name, e.g. {self.path / 'drafts.jsonl'}")
        blocking = next((p for p in self.path.parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise InputError(f"{self.path}: cannot write the output: {blocking} is a file, not a folder")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        except OSError as exc:
            raise InputError(f"{self.path}: cannot write the output ({exc.strerror or exc})") from None
        self.tmp = Path(tmp)
        umask = os.umask(0o22)  # read the process umask (set back at once): mkstemp makes 0600 files
        os.umask(umask)
        os.chmod(fd, self.path.stat().st_mode & 0o777 if self.path.exists() else 0o666 & ~umask)
        self.fh: IO[str] = os.fdopen(fd, "w", encoding="utf-8")

    def commit(self) -> None:
        """Close and move the finished file into place."""
        self.fh.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        """Close and delete the temporary file (the output, if any, stays as it was)."""
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


def load_drafting_model(params: Any, adapter: str | None) -> tuple[Any, Any, dict[str, Any]]:
    """Base model + adapter: ``adapter`` None = the run's SFT adapter (``outputs/<model>/sft``),
    ``"none"`` = the base model alone, else a LoRA adapter folder."""
    from radimpress_lib.llm import checkpoints  # torch/transformers: imported only when drafting, so --help and input errors stay instant

    seeding.quiet_progress_bars()
    seeding.seed_everything(params.run.seed)
    if adapter is None:
        model, tokenizer, info = checkpoints.load_finetuned(params)
        return model, tokenizer, {"model": params.model.name, "adapter": info.get("adapter")}
    model, tokenizer, _info = checkpoints.load_base_model(params)
    if adapter.lower() == "none":
        return model, tokenizer, {"model": params.model.name, "adapter": None}
    model = checkpoints.apply_adapter(model, adapter, merge=True)
    return model, tokenizer, {"model": params.model.name, "adapter": str(adapter)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radimpress", description="radimpress command-line tools")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("draft", help="draft impressions with factual-consistency flags",
                       description="Draft impressions for JSONL/CSV reports (or one report on stdin); writes JSONL "
                                   "rows with the draft, its factual-consistency flags and whether (and why) it needs "
                                   "review.")
    d.add_argument("input", nargs="?", default="-", help="JSONL or CSV file of reports; '-' or nothing: stdin")
    d.add_argument("-o", "--output", default="-",
                   help="output JSONL (default stdout); written to a temporary file and renamed when the run succeeds")
    d.add_argument("--model", default="smollm2-135m", help="params name (params/<name>.yaml) or a params YAML path")
    d.add_argument("--adapter", default=None,
                   help="LoRA adapter folder; default: outputs/<model>/sft/adapter; 'none': the base model")
    d.add_argument("--format", default="auto", choices=["auto", "jsonl", "csv", "text"], dest="fmt")
    d.add_argument("--columns", action="append", default=None, metavar="FIELD=COLUMN,...",
                   help="map the columns (CSV) or keys (JSONL) of an export, e.g. "
                        "findings=Findings,report_id=AccessionNumber; fields: " + ", ".join(INPUT_FIELDS))
    d.add_argument("--limit", type=int, default=None, help="draft at most this many reports")
    d.add_argument("--batch-size", type=int, default=None, help="reports per batch (default draft.batch_size)")
    d.add_argument("--max-new-tokens", type=int, default=None, help="default gen.max_new_tokens")
    d.add_argument("--max-chars", type=int, default=None, help="longest field in characters (default draft.max_chars)")
    d.add_argument("--max-reports", type=int, default=None, help="most reports accepted (default draft.max_reports)")
    d.add_argument("--skip-invalid", action="store_true", help="skip bad rows (counted by reason) instead of stopping")
    d.add_argument("--out-of-scope", choices=["flag", "refuse"], default=None,
                   help="a report of a study the model was not trained on (data.modalities / data.body_parts): "
                        "draft and flag it, or refuse it (not drafted, counted); default draft.out_of_scope")
    d.add_argument("--flag-omissions", action="store_true", help="also flag findings the draft leaves out")
    d.add_argument("--risk-model", default=None, metavar="PATH",
                   help="review-risk model JSON; default outputs/<model>/triage/risk_model.json (written by notebook "
                        "05); 'none': needs_review from the rule flags only")
    d.add_argument("--review-budget", type=float, default=None, metavar="SHARE",
                   help="share of drafts to flag for review, e.g. 0.2: the risk threshold that flags that share of "
                        "validate drafts (default draft.review_budget, else the risk model's operating threshold)")
    d.add_argument("--worklist-budget", type=float, default=None, metavar="SHARE",
                   help="share of this run's drafts to flag for review, e.g. 0.3: the riskiest SHARE of the worklist "
                        "(rounded down, at least one), whatever its risks; rows are written once all are drafted "
                        "(default draft.worklist_budget)")
    d.add_argument("--select", choices=["mbr", "draft"], default=None,
                   help="with the run's fine-tuned model: 'mbr' writes the MBR choice among its draft and the "
                        "impressions of similar train+validate reports (notebook 05's sft_mbr), 'draft' the greedy "
                        "draft (default draft.select)")
    d.add_argument("--guard", type=int, default=0, metavar="N",
                   help="factual guard: re-decode a draft that contradicts its findings (negation flip) with N "
                        "beams and keep the best candidate without the contradiction (0: off; e.g. 4)")
    d.add_argument("--indication", default=None, help="indication for a plain-text report on stdin")
    d.add_argument("--comparison", default=None, help="comparison for a plain-text report on stdin")
    d.add_argument("--modality", default=None, help="modality for a plain-text report on stdin, e.g. XR")
    d.add_argument("--body-part", default=None, help="body part for a plain-text report on stdin, e.g. CHEST")
    d.add_argument("--radiologist-id", default=None, help="radiologist id for a plain-text report on stdin")
    d.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def _positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise InputError(f"--{name} must be positive, got {value}")


def run_draft(args: argparse.Namespace, *, stdin: IO[bytes] | None = None, stdout: IO[str] | None = None) -> DraftSummary:
    """The ``draft`` command (see :func:`main`)."""
    for name in ("limit", "batch_size", "max_new_tokens", "max_chars", "max_reports"):
        _positive(name.replace("_", "-"), getattr(args, name))
    if args.guard == 1 or args.guard < 0:
        raise InputError(f"--guard must be 0 (off) or at least 2 beam candidates, got {args.guard}")
    for name in ("review_budget", "worklist_budget"):
        value = getattr(args, name)
        if value is not None and not 0 < value <= 1:
            raise InputError(f"--{name.replace('_', '-')} must be a share of drafts in (0, 1], e.g. 0.3, got {value}")
    if args.review_budget is not None and args.worklist_budget is not None:
        raise InputError("--review-budget (a threshold from validate risks) and --worklist-budget (the riskiest share "
                         "of this worklist) set the flag rate two ways: give one")
    columns = parse_columns(args.columns)
    to_file = args.output not in (None, "-")
    if to_file and args.input not in (None, "-") and _same_file(args.output, args.input):
        raise InputError(f"{args.output}: is the input file; write the drafts to another file (-o)")
    params = _load_params(args.model)
    dcfg = params.draft
    limits = InputLimits(max_chars=args.max_chars or dcfg.max_chars,
                         max_reports=args.max_reports or dcfg.max_reports)
    batch_size = args.batch_size or dcfg.batch_size
    scope = StudyScope.of(params.data.modalities, params.data.body_parts)
    out_of_scope = args.out_of_scope or dcfg.out_of_scope
    progress = None if args.quiet else _stderr
    skipped: Counter = Counter()
    text_fields = {"indication": args.indication, "comparison": args.comparison, "radiologist_id": args.radiologist_id,
                   "modality": args.modality, "body_part": args.body_part}
    select = _selection(args, params)
    risk_model = _risk_model_path(args, params, select)  # checked now: a missing --risk-model fails before the model loads
    output = _AtomicOutput(args.output) if to_file else None  # checked now: a bad -o fails before the model loads
    try:
        inputs = iter_reports(args.input, fmt=args.fmt, limits=limits, stdin=stdin, skip_invalid=args.skip_invalid,
                              skipped=skipped, text_fields=text_fields, warn=progress, columns=columns)
        # Validate the first report before loading the model, so a bad file fails fast.
        first = next(inputs, None)
        if first is None:
            raise InputError(f"{'<stdin>' if args.input in (None, '-') else args.input}: no reports to draft"
                             + (f" (skipped: {dict(skipped)})" if skipped else ""))
        summary = _draft_all(args, params, itertools.chain([first], inputs), output.fh if output else
                             (stdout if stdout is not None else sys.stdout), batch_size=batch_size, skipped=skipped,
                             scope=scope, out_of_scope=out_of_scope, progress=progress, limits=limits,
                             risk_model=risk_model, select=select)
    except BaseException:
        if output is not None:
            output.discard()
        raise
    if output is not None:
        output.commit()
    return summary


def default_risk_model_path(params: Any, system: str = "sft") -> Path:
    """Where notebook 05 saves the run's review-risk model thresholded for ``system``'s drafts."""
    return params.output_dir / artifacts.risk_model_file(system)


def _default_risk_model(params: Any, select: str) -> Path:
    """The risk model for the drafts ``select`` writes (thresholded on ``sft_mbr``'s drafts with MBR)."""
    return default_risk_model_path(params, "sft_mbr" if select == "mbr" else "sft")


def _selection(args: argparse.Namespace, params: Any) -> str:
    """``mbr`` or ``draft``: MBR only for the run's fine-tuned model (not ``--adapter none``) with ``eval.mbr_k``."""
    select = args.select or params.draft.select
    base = args.adapter is not None and args.adapter.lower() == "none"
    return "mbr" if select == "mbr" and params.eval.mbr_k and not base else "draft"


def _budgets(args: argparse.Namespace, params: Any) -> tuple[float | None, float | None]:
    """``(review budget, worklist budget)``: the command line's, else the params' (a worklist budget wins)."""
    if args.review_budget is not None:
        return args.review_budget, None
    worklist = args.worklist_budget if args.worklist_budget is not None else params.draft.worklist_budget
    return (None if worklist is not None else params.draft.review_budget), worklist


def _risk_model_path(args: argparse.Namespace, params: Any, select: str = "draft") -> Path | None:
    """The risk model to use, None for rule flags; an explicit path that is missing is an :class:`InputError`.

    The default path may be missing (notebook 05 not run): then rule flags, said on stderr, unless
    a review budget was asked for, which needs the model. With ``select == "mbr"`` the default is the
    model thresholded on ``sft_mbr``'s validate drafts (``risk_model_sft_mbr.json`` beside it).
    """
    budget, worklist = _budgets(args, params)
    if args.risk_model is not None and args.risk_model.lower() == "none":
        for name in ("review_budget", "worklist_budget"):
            if getattr(args, name) is not None:
                raise InputError(f"--{name.replace('_', '-')} needs a risk model; drop --risk-model none")
        return None
    path = Path(args.risk_model) if args.risk_model is not None else _default_risk_model(params, select)
    if not path.is_file():
        if args.risk_model is not None or budget is not None or worklist is not None:
            raise InputError(f"{path}: no review-risk model (notebook 05 writes it: make reproduce NOTEBOOKS=05); "
                             + ("--review-budget needs it" if budget is not None else
                                "--worklist-budget needs it" if worklist is not None else "check --risk-model"))
        return None
    return path


def _load_triage(params: Any, path: Path | None, args: argparse.Namespace, progress: Callable[[str], None] | None,
                 select: str = "draft"):
    """The :class:`~radimpress_lib.evaluation.triage.DraftTriage` of ``path``, or None (rule flags, with a note)."""
    if path is None:
        if args.risk_model is None and progress:  # rows say it too: "risk" is null
            progress(f"draft: note: no review-risk model at {_default_risk_model(params, select)} (notebook 05 writes "
                     "it): needs_review falls back to the rule flags")
        elif progress:
            progress("draft: review triage off (--risk-model none): needs_review from the rule flags")
        return None
    from radimpress_lib.evaluation.triage import DraftTriage  # pandas/scikit-learn: only when drafting

    budget, worklist = _budgets(args, params)
    try:
        triage = DraftTriage.for_run(params, path, budget=budget, worklist_budget=worklist)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if progress:
        progress(f"draft: {triage.describe()}" + (f"; review budget {budget:g}" if budget is not None else ""))
    return triage


def _draft_all(args: argparse.Namespace, params: Any, inputs: Iterable[DraftInput], out_fh: IO[str], *,
               batch_size: int, skipped: Counter, scope: StudyScope, out_of_scope: str,
               progress: Callable[[str], None] | None, limits: InputLimits, risk_model: Path | None = None,
               select: str = "draft") -> DraftSummary:
    """Load the model, draft ``inputs`` into ``out_fh`` and say what happened on ``progress``."""
    gen_cfg = params.gen.model_copy(update={"batch_size": batch_size,
                                            **({"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {})})
    if progress:
        progress(f"draft: loading {params.model.name} (adapter: {args.adapter or 'run default'})")
    model, tokenizer, model_info = load_drafting_model(params, args.adapter)
    context, selector = None, None
    if args.adapter is None or args.adapter.lower() != "none":
        from radimpress_lib.llm import retrieval  # datasets/scikit-learn: only for a fine-tuned model's prompt context

        pool = None
        if select == "mbr":
            from radimpress_lib.llm.selection import NeighbourMBR  # rouge_score: only when selecting

            pool = retrieval.run_pool(params)
            selector = NeighbourMBR.from_config(params.eval, pool)
        context = retrieval.prompt_context_for_run(params, pool)  # the SFT prompt layout (retrieval, graph text)
        if context is not None and progress:
            progress(f"draft: prompt context: {context.description}")
    if progress:
        progress(f"draft: impression: {selector.describe() + ' (--select mbr)' if selector else 'the model draft'}")
    triage = _load_triage(params, risk_model, args, progress, select)
    drafter = model_drafter(model, tokenizer, gen_cfg, model_name=params.model.name, model_config=model_info,
                            context=context, guard_candidates=args.guard, token_stats=triage is not None)
    if selector is not None:
        drafter = mbr_drafter(drafter, selector)
    checkers = default_checkers(include_omissions=args.flag_omissions)
    if progress:
        progress(f"draft: checkers {[n for n, _ in checkers]}; batch size {batch_size}; limits {limits}; "
                 f"scope {scope.describe()} (out-of-scope reports {'refused' if out_of_scope == 'refuse' else 'flagged'})"
                 + (f"; factual guard: {args.guard} beam candidates" if args.guard else ""))

    def write(row: dict[str, Any]) -> None:
        out_fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    # with a worklist budget the rows are held until every risk of the worklist is known
    worklist: list[dict[str, Any]] | None = [] if triage is not None and triage.worklist_budget is not None else None
    summary = DraftSummary(skipped=skipped, triage="risk model" if triage is not None else "rules")
    draft_stream(inputs, drafter, checkers, write if worklist is None else worklist.append, batch_size=batch_size,
                 limit=args.limit,
                 progress=(lambda line: (out_fh.flush(), progress(line))) if progress else None,
                 extra={"model": model_info["model"], "adapter": model_info["adapter"]}, summary=summary,
                 scope=scope, out_of_scope=out_of_scope, triage=triage)
    if worklist is not None:
        picked = apply_worklist_budget(worklist, triage.worklist_budget, summary)
        if progress:
            progress(f"draft: worklist budget {triage.worklist_budget:g}: the riskiest {picked} of {len(worklist)} "
                     "drafts flagged for review by risk")
        for row in worklist:
            write(row)
    out_fh.flush()
    if progress:
        progress(f"draft: done, {summary.n_drafted} drafts ({summary.n_needs_review} need review by "
                 f"{'the review-risk model' if triage is not None else 'the rule flags'} "
                 f"{dict(summary.reasons_by_kind)}; {summary.n_flagged} with factual flags; "
                 f"{summary.n_out_of_scope} out of scope"
                 + (f", refused {summary.n_refused}" if out_of_scope == "refuse" else "")
                 + f") in {summary.wall_time_s:.1f}s, {summary.reports_per_s:.2f} reports/s"
                 + (f"; guard rewrote {summary.n_guard_rewritten}, unresolved {summary.n_guard_unresolved}"
                    if args.guard else "")
                 + (f"; selected {dict(summary.selected)}" if summary.selected else "")
                 + (f"; skipped/notes: {dict(skipped)}" if skipped else ""))
    return summary


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``radimpress`` console script: exit status 0, 2 (bad input) or 1 (other errors).

    Every error is one line on stderr; ``RADIMPRESS_DEBUG=1`` re-raises it with its traceback.
    """
    args = build_parser().parse_args(argv)
    prefix = f"radimpress {args.command}: error:"
    try:
        if args.command == "draft":
            run_draft(args)
    except InputError as exc:
        print(f"{prefix} {_one_line(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. piped into `head`
        return 0
    except KeyboardInterrupt:
        print(f"{prefix} interrupted (no output file was written)", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last resort: one line instead of a traceback
        if os.environ.get("RADIMPRESS_DEBUG"):
            raise
        known = isinstance(exc, (FileNotFoundError, ParamsError))
        print(f"{prefix} {'' if known else type(exc).__name__ + ': '}{_one_line(exc)}"
              + ("" if known else " (set RADIMPRESS_DEBUG=1 for the traceback)"), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
