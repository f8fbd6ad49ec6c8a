"""``radimpress draft``: draft impressions for a file of reports (or one report on stdin), with flags.

A radiologist's reading workflow: the reports of a session (findings, indication,
comparison, optionally the radiologist id) go in as JSONL or CSV, or one report is
piped in on stdin; out comes one JSON line per report holding the drafted impression
and its **factual-consistency flags** (a finding the draft states that the findings do
not support, a finding whose status flipped between present and absent), so the
radiologist knows what to check before signing.

Usage::

    radimpress draft reports.jsonl -o drafts.jsonl            # default model + its SFT adapter
    radimpress draft reports.csv --model ci-tiny --adapter none --limit 10
    echo "Heart size normal. No effusion." | radimpress draft --indication "cough"
    echo '{"findings": "...", "comparison": "none"}' | radimpress draft -

Design:

* **streaming, constant memory**: :func:`iter_reports` is a generator that reads one line
  (JSONL) or one CSV row at a time with a bounded line length; :func:`draft_stream` takes
  ``batch_size`` reports, drafts them, writes and flushes their rows, then reads on. Memory
  is one batch plus the model, whatever the file size.
* **input limits**: ``--max-chars`` per field (default ``draft_max_chars``), ``--max-reports``
  per run (default ``draft_max_reports``); over-long fields, missing / empty findings,
  non-string fields, invalid JSON or UTF-8 raise :class:`InputError` naming the file, line
  and field (exit status 2). With ``--skip-invalid`` such rows are skipped instead, counted by
  reason and listed on stderr (never dropped silently).
* **checkers** are plain functions ``(record, draft) -> list[flag dict]`` (:data:`Checker`);
  :func:`labeler_checker` uses the CheXpert-style labeler; :func:`default_checkers` adds the
  entity-graph checker of :mod:`radimpress_lib.graph` when that module provides one.
* progress goes to stderr, drafts to ``--output`` or stdout.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import itertools
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "INPUT_FIELDS",
    "Checker",
    "DraftInput",
    "DraftSummary",
    "Drafter",
    "InputError",
    "InputLimits",
    "default_checkers",
    "draft_stream",
    "iter_reports",
    "labeler_checker",
    "main",
    "model_drafter",
]

#: Fields read from each input row (``findings`` is required, the rest optional).
INPUT_FIELDS = ("report_id", "findings", "indication", "comparison", "radiologist_id")
_OPTIONAL_ID_FIELDS = ("report_id", "radiologist_id")

#: A factual-consistency check: ``(input record, draft) -> flags``; each flag is a JSON-able dict
#: with at least ``check``, ``kind``, ``finding`` and ``message``.
Checker = Callable[[Mapping[str, Any], str], list[dict[str, Any]]]
#: Drafts a batch: records -> one dict per record with at least ``draft`` (str).
Drafter = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


class InputError(ValueError):
    """A bad input row or file; the message names the file, line and field."""


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
    """One validated input report and where it came from."""

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
    skipped: Counter = field(default_factory=Counter)
    wall_time_s: float = 0.0
    n_batches: int = 0
    n_guard_rewritten: int = 0
    n_guard_unresolved: int = 0

    @property
    def reports_per_s(self) -> float:
        """Drafted reports per second of wall time."""
        return self.n_drafted / self.wall_time_s if self.wall_time_s > 0 else math.nan

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "n_read": self.n_read, "n_drafted": self.n_drafted, "n_flagged": self.n_flagged, "n_flags": self.n_flags,
            "flags_by_kind": dict(self.flags_by_kind), "skipped": dict(self.skipped),
            "wall_time_s": self.wall_time_s, "reports_per_s": self.reports_per_s, "n_batches": self.n_batches,
            "n_guard_rewritten": self.n_guard_rewritten, "n_guard_unresolved": self.n_guard_unresolved,
        }


# --------------------------------------------------------------------------- reading


def _detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise InputError(f"{path}: cannot tell the format from the suffix {suffix!r}; use --format jsonl|csv")


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
            raise InputError(f"{where}: field {name!r} must be a string, got {type(value).__name__} {value!r:.60}")
        if len(value) > limits.max_chars:
            raise InputError(
                f"{where}: field {name!r} has {len(value)} characters, more than the limit of {limits.max_chars} "
                "(--max-chars)"
            )
        record[name] = value.strip()
    if not record["findings"]:
        missing = "findings" not in raw
        raise InputError(f"{where}: field 'findings' is {'missing' if missing else 'empty'}")
    return record


def _iter_jsonl(
    fh: IO[bytes], file: str, limits: InputLimits, notes: Counter
) -> Iterator[tuple[int, dict[str, Any] | InputError]]:
    """(line number, raw object) for each non-blank line, reading at most ``max_line_bytes`` a line."""
    cap = limits.max_line_bytes
    for lineno in itertools.count(1):
        raw = fh.readline(cap + 1)
        if not raw:
            return
        if len(raw) > cap and not raw.endswith(b"\n"):
            raise InputError(f"{file}:{lineno}: line longer than {cap} bytes (fields are limited to "
                             f"{limits.max_chars} characters, --max-chars)")
        # Row-level problems are yielded (not raised) so that --skip-invalid can go on reading.
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield lineno, InputError(f"{file}:{lineno}: not valid UTF-8 (byte {exc.start} of the line: "
                                     f"{raw[exc.start:exc.start + 4]!r})")
            continue
        if not text.strip():
            notes["blank line"] += 1
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield lineno, InputError(f"{file}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(obj, dict):
            yield lineno, InputError(f"{file}:{lineno}: expected a JSON object with a 'findings' field, "
                                     f"got {type(obj).__name__}")
            continue
        yield lineno, obj


def _iter_csv(fh: IO[bytes], file: str, limits: InputLimits, notes: Counter) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row dict) for each CSV row; the header must name a ``findings`` column."""
    text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
    old_limit = csv.field_size_limit()
    csv.field_size_limit(4 * limits.max_chars + 16)  # a longer field is an error below, without reading it all
    try:
        reader = csv.DictReader(text)
        try:
            header = reader.fieldnames
        except UnicodeDecodeError:
            raise InputError(f"{file}:1: header is not valid UTF-8") from None
        if not header or "findings" not in header:
            raise InputError(f"{file}:1: the CSV header {header} has no 'findings' column "
                             f"(expected columns among {list(INPUT_FIELDS)})")
        dupes = sorted(c for c, n in Counter(header).items() if n > 1)
        if dupes:
            raise InputError(f"{file}:1: duplicate columns {dupes}")
        ignored = [c for c in header if c not in INPUT_FIELDS]
        if ignored:
            notes[f"ignored columns {ignored}"] += 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError:
                raise InputError(f"{file}:{reader.line_num + 1}: not valid UTF-8") from None
            except csv.Error as exc:
                raise InputError(f"{file}:{reader.line_num + 1}: {exc} (fields are limited to {limits.max_chars} "
                                 "characters, --max-chars)") from None
            if None in row:
                raise InputError(f"{file}:{reader.line_num}: {len(row[None])} more values than the "
                                 f"{len(header)} header columns")
            if all(v in (None, "") for v in row.values()):
                notes["blank line"] += 1
                continue
            yield reader.line_num, {k: (None if v == "" and k in _OPTIONAL_ID_FIELDS else v) for k, v in row.items()}
    finally:
        csv.field_size_limit(old_limit)
        if not fh.closed:
            text.detach()  # leave the binary stream to its owner


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
        text_fields: extra fields (indication, comparison, radiologist_id) for ``text`` input.
        warn: called with one line per skipped row (``file:line: reason``).

    Raises:
        InputError: a bad row (unless ``skip_invalid``), a bad file, or more than ``max_reports``.
    """
    skipped = skipped if skipped is not None else Counter()
    use_stdin = path is None or str(path) == "-"
    name = "<stdin>" if use_stdin else str(path)
    if use_stdin:
        fh: IO[bytes] = stdin if stdin is not None else sys.stdin.buffer
        close = False
    else:
        p = Path(path)  # type: ignore[arg-type]
        if not p.is_file():
            raise InputError(f"{p}: no such file")
        fmt = _detect_format(p) if fmt == "auto" else fmt
        fh = p.open("rb")
        close = True
    try:
        if use_stdin and fmt == "auto":
            head = fh.peek(64)[:64] if hasattr(fh, "peek") else b""
            if not head and hasattr(fh, "peek"):
                raise InputError(f"{name}: no input (pipe a report, or pass a JSONL/CSV file)")
            if hasattr(fh, "peek"):
                fmt = "jsonl" if head.lstrip()[:1] == b"{" else "text"
            else:
                fmt = "text"
        if fmt == "text":
            rows: Iterator[tuple[int, dict[str, Any] | InputError]] = _iter_text(fh, name, limits, text_fields or {})
        elif fmt == "jsonl":
            rows = _iter_jsonl(fh, name, limits, skipped)
        elif fmt == "csv":
            rows = _iter_csv(fh, name, limits, skipped)
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
                    _skip(skipped, exc, warn)
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


def _skip(skipped: Counter, exc: InputError, warn: Callable[[str], None] | None) -> None:
    message = str(exc)
    # "file:line: reason" -> count by reason without the location and the values.
    reason = message.split(": ", 1)[-1].split(" (")[0]
    if "characters, more than" in reason:
        reason = reason.split(" has ")[0] + " over --max-chars"
    elif "must be a string" in reason:
        reason = reason.split(", got")[0]
    elif reason.startswith("not valid UTF-8"):
        reason = "not valid UTF-8"
    skipped[reason] += 1
    if warn is not None:
        warn(f"skipped {message}")


def _iter_text(fh: IO[bytes], name: str, limits: InputLimits, extra: Mapping[str, str]) -> Iterator[tuple[int, dict[str, Any]]]:
    raw = fh.read(4 * limits.max_chars + 1)
    if len(raw) > 4 * limits.max_chars or (raw and fh.read(1)):
        raise InputError(f"{name}:1: field 'findings' is longer than the limit of {limits.max_chars} characters (--max-chars)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name}:1: field 'findings' is not valid UTF-8 (byte {exc.start})") from None
    yield 1, {"findings": text, **{k: v for k, v in extra.items() if v is not None}}


# --------------------------------------------------------------------------- checking


def labeler_checker(record: Mapping[str, Any], draft: str, *, include_omissions: bool = False) -> list[dict[str, Any]]:
    """Flags from the CheXpert-style labeler: the draft's labels against the findings' labels.

    Kinds: ``not_in_findings`` (the draft states an observation as present or possible that
    the findings do not mention), ``negation_flip`` (present in one, negated in the other),
    and with ``include_omissions`` ``omitted`` (present in the findings, not in the draft;
    impressions legitimately leave out minor findings, so this is off by default).
    ``No Finding`` is not compared directly: a normal-study draft over abnormal findings
    surfaces as the flips/omissions of those findings.
    """
    from radimpress_lib import labeler

    src = labeler.label_report(record.get("findings") or "")
    out = labeler.label_report(draft)
    present = (labeler.POSITIVE, labeler.UNCERTAIN)
    flags: list[dict[str, Any]] = []
    for obs in labeler.OBSERVATIONS:
        if obs == "No Finding":
            continue
        s, d = src[obs], out[obs]
        kind = None
        if d in present and s == labeler.ABSENT:
            kind, message = "not_in_findings", f"draft states {obs} ({d}) but the findings do not mention it"
        elif d in present and s == labeler.NEGATIVE:
            kind, message = "negation_flip", f"draft states {obs} ({d}) but the findings negate it"
        elif d == labeler.NEGATIVE and s in present:
            kind, message = "negation_flip", f"draft negates {obs} but the findings state it ({s})"
        elif include_omissions and s in present and d == labeler.ABSENT:
            kind, message = "omitted", f"findings state {obs} ({s}) but the draft does not mention it"
        if kind is not None:
            flags.append({"check": "labeler", "kind": kind, "finding": obs, "findings_status": s,
                          "draft_status": d, "message": message})
    return flags


def default_checkers(*, include_omissions: bool = False) -> list[tuple[str, Checker]]:
    """The labeler checker, plus the entity-graph checker of :mod:`radimpress_lib.graph` when available.

    The graph module plugs in either by exposing ``draft_flags(findings: str, draft: str) -> list[dict]``
    or through its ``extract_graph`` + ``compare_to_findings`` pair (hallucinated observations,
    negation flips, omitted significant findings).
    """
    checkers: list[tuple[str, Checker]] = [
        ("labeler", lambda rec, draft: labeler_checker(rec, draft, include_omissions=include_omissions)),
    ]
    graph_fn = _graph_flag_function(include_omissions)
    if graph_fn is not None:
        def graph_checker(rec: Mapping[str, Any], draft: str) -> list[dict[str, Any]]:
            return [{"check": "graph", **f} for f in graph_fn(rec.get("findings") or "", draft)]

        checkers.append(("graph", graph_checker))
    return checkers


_GRAPH_KINDS = {"hallucinated": ("not_in_findings", "draft states {g} but the findings do not mention it"),
                "negation_flips": ("negation_flip", "{g}: present in one of draft / findings, negated in the other"),
                "omitted": ("omitted", "findings state {g} but the draft does not mention it")}


def _graph_flag_function(include_omissions: bool = False) -> Callable[[str, str], list[dict[str, Any]]] | None:
    try:
        graph = importlib.import_module("radimpress_lib.graph")
    except ImportError:
        return None
    fn = getattr(graph, "draft_flags", None)
    if callable(fn):
        return fn
    extract, compare = getattr(graph, "extract_graph", None), getattr(graph, "compare_to_findings", None)
    if not (callable(extract) and callable(compare)):
        return None

    def flags(findings: str, draft: str) -> list[dict[str, Any]]:
        result = compare(extract(draft), extract(findings))
        out = []
        for key, (kind, message) in _GRAPH_KINDS.items():
            if key == "omitted" and not include_omissions:
                continue
            out.extend({"kind": kind, "finding": g, "message": message.format(g=g)} for g in result.get(key, ()))
        return out

    return flags


# --------------------------------------------------------------------------- drafting


def model_drafter(model: Any, tokenizer: Any, gen_cfg: Any, *, model_name: str,
                  model_config: Mapping[str, Any] | None = None,
                  context: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
                  guard_candidates: int = 0) -> Drafter:
    """A :data:`Drafter` decoding with :func:`radimpress_lib.generation.generate_impressions`.

    ``context`` adds the prompt context the model was trained with (retrieval-augmented SFT:
    :func:`radimpress_lib.nbutils.prompt_context_for_run`). ``guard_candidates >= 2`` turns on
    the factual guard (:func:`radimpress_lib.factual_guard.guard_predictions`): a draft whose
    entity graph contradicts its findings is re-decoded with that many beams and replaced by
    the best-ranked candidate without the contradiction; such a draft carries
    ``guard: {original, beam_rank}`` (``beam_rank`` None: no candidate resolved it).
    """
    from radimpress_lib import generation

    if guard_candidates == 1 or guard_candidates < 0:
        raise ValueError(f"guard candidates must be 0 (off) or >= 2, got {guard_candidates}")

    def draft(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # generate_impressions keys its rows by report_id: use batch positions (input ids may repeat).
        keyed = [dict(r, report_id=str(i)) for i, r in enumerate(context(records) if context else records)]
        result = generation.generate_impressions(model, tokenizer, keyed, gen_cfg, model_name=model_name,
                                                 model_config=model_config, log=lambda _line: None)
        predictions = result.predictions
        if guard_candidates:
            from radimpress_lib.factual_guard import guard_predictions

            predictions = guard_predictions(model, tokenizer, keyed, predictions, n_candidates=guard_candidates,
                                            max_new_tokens=gen_cfg.gen_max_new_tokens, log=lambda _line: None).predictions
        return [{"draft": p["prediction"], "stopped": p["stopped"], "n_new_tokens": p["n_new_tokens"],
                 **({"guard": p["guard"]} if "guard" in p else {})} for p in predictions]

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
) -> DraftSummary:
    """Read, draft, check and write in batches of ``batch_size`` (one batch in memory at a time).

    Each written row: ``report_id, radiologist_id, source (file:line), draft, flags, n_flags,
    needs_review`` plus the drafter's extras (``stopped``, ``n_new_tokens``) and ``extra``.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    summary = summary or DraftSummary()
    source = itertools.islice(inputs, limit) if limit is not None else inputs
    t0 = time.perf_counter()
    for batch in _batches(source, batch_size):
        summary.n_read += len(batch)
        drafts = drafter([item.record for item in batch])
        if len(drafts) != len(batch):
            raise RuntimeError(f"drafter returned {len(drafts)} drafts for {len(batch)} reports")
        for item, out in zip(batch, drafts):
            text = out["draft"]
            flags = [f for _name, check in checkers for f in check(item.record, text)]
            row = {"report_id": item.record["report_id"], "radiologist_id": item.record.get("radiologist_id"),
                   "source": item.location, "draft": text, "flags": flags, "n_flags": len(flags),
                   "needs_review": bool(flags), **{k: v for k, v in out.items() if k != "draft"}, **(extra or {})}
            write(row)
            summary.n_drafted += 1
            summary.n_flags += len(flags)
            summary.n_flagged += bool(flags)
            summary.flags_by_kind.update(f["kind"] for f in flags)
            if "guard" in out:
                rewritten = out["guard"].get("beam_rank") is not None
                summary.n_guard_rewritten += rewritten
                summary.n_guard_unresolved += not rewritten
        summary.n_batches += 1
        summary.wall_time_s = time.perf_counter() - t0
        if progress is not None:
            progress(f"draft: batch {summary.n_batches} | {summary.n_drafted} reports | "
                     f"{summary.reports_per_s:.2f} reports/s | {summary.n_flagged} flagged")
    summary.wall_time_s = time.perf_counter() - t0
    return summary


# --------------------------------------------------------------------------- command line


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _load_params(name_or_path: str):
    from radimpress_lib import config

    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        return config.load_params(p)
    return config.load_params(config.params_path(name_or_path))


def load_drafting_model(params: Any, adapter: str | None) -> tuple[Any, Any, dict[str, Any]]:
    """Base model + adapter: ``adapter`` None = the run's SFT adapter (``outputs/<model>/sft``),
    ``"none"`` = the base model alone, else a LoRA adapter folder."""
    from radimpress_lib import nbutils, sft

    nbutils.quiet_progress_bars()
    nbutils.seed_everything(params.run.run_seed)
    if adapter is None:
        model, tokenizer, info = nbutils.load_finetuned(params)
        return model, tokenizer, {"model": params.model.model_name, "adapter": info.get("adapter")}
    model, tokenizer, _info = nbutils.load_base_model(params)
    if adapter.lower() == "none":
        return model, tokenizer, {"model": params.model.model_name, "adapter": None}
    model = sft.apply_adapter(model, adapter, merge=True)
    return model, tokenizer, {"model": params.model.model_name, "adapter": str(adapter)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radimpress", description="radimpress command-line tools")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("draft", help="draft impressions with factual-consistency flags",
                       description="Draft impressions for JSONL/CSV reports (or one report on stdin); writes JSONL "
                                   "rows with the draft and its factual-consistency flags.")
    d.add_argument("input", nargs="?", default="-", help="JSONL or CSV file of reports; '-' or nothing: stdin")
    d.add_argument("-o", "--output", default="-", help="output JSONL (default stdout)")
    d.add_argument("--model", default="smollm2-135m", help="params name (params/<name>.yaml) or a params YAML path")
    d.add_argument("--adapter", default=None,
                   help="LoRA adapter folder; default: outputs/<model>/sft/adapter; 'none': the base model")
    d.add_argument("--format", default="auto", choices=["auto", "jsonl", "csv", "text"], dest="fmt")
    d.add_argument("--limit", type=int, default=None, help="draft at most this many reports")
    d.add_argument("--batch-size", type=int, default=None, help="reports per batch (default draft_batch_size)")
    d.add_argument("--max-new-tokens", type=int, default=None, help="default gen_max_new_tokens")
    d.add_argument("--max-chars", type=int, default=None, help="longest field in characters (default draft_max_chars)")
    d.add_argument("--max-reports", type=int, default=None, help="most reports accepted (default draft_max_reports)")
    d.add_argument("--skip-invalid", action="store_true", help="skip bad rows (counted by reason) instead of stopping")
    d.add_argument("--flag-omissions", action="store_true", help="also flag findings the draft leaves out")
    d.add_argument("--guard", type=int, default=0, metavar="N",
                   help="factual guard: re-decode a draft that contradicts its findings (negation flip) with N "
                        "beams and keep the best candidate without the contradiction (0: off; e.g. 4)")
    d.add_argument("--indication", default=None, help="indication for a plain-text report on stdin")
    d.add_argument("--comparison", default=None, help="comparison for a plain-text report on stdin")
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
    params = _load_params(args.model)
    dcfg = params.draft
    limits = InputLimits(max_chars=args.max_chars or dcfg.draft_max_chars,
                         max_reports=args.max_reports or dcfg.draft_max_reports)
    batch_size = args.batch_size or dcfg.draft_batch_size
    progress = None if args.quiet else _stderr
    skipped: Counter = Counter()
    text_fields = {"indication": args.indication, "comparison": args.comparison, "radiologist_id": args.radiologist_id}
    inputs = iter_reports(args.input, fmt=args.fmt, limits=limits, stdin=stdin, skip_invalid=args.skip_invalid,
                          skipped=skipped, text_fields=text_fields, warn=progress)
    # Validate the first report before loading the model, so a bad file fails fast.
    first = next(inputs, None)
    if first is None:
        raise InputError(f"{'<stdin>' if args.input in (None, '-') else args.input}: no reports to draft"
                         + (f" (skipped: {dict(skipped)})" if skipped else ""))
    gen_cfg = params.gen.model_copy(update={"gen_batch_size": batch_size,
                                            **({"gen_max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {})})
    if progress:
        progress(f"draft: loading {params.model.model_name} (adapter: {args.adapter or 'run default'})")
    model, tokenizer, model_info = load_drafting_model(params, args.adapter)
    context = None
    if args.adapter is None or args.adapter.lower() != "none":
        from radimpress_lib import nbutils

        context = nbutils.prompt_context_for_run(params)  # the SFT prompt layout (retrieval, graph text)
        if context is not None and progress:
            progress(f"draft: prompt context: {context.description}")
    drafter = model_drafter(model, tokenizer, gen_cfg, model_name=params.model.model_name, model_config=model_info,
                            context=context, guard_candidates=args.guard)
    checkers = default_checkers(include_omissions=args.flag_omissions)
    if progress:
        progress(f"draft: checkers {[n for n, _ in checkers]}; batch size {batch_size}; limits {limits}"
                 + (f"; factual guard: {args.guard} beam candidates" if args.guard else ""))
    out_fh: IO[str]
    close = args.output not in (None, "-")
    if close:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        out_fh = open(args.output, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    else:
        out_fh = stdout if stdout is not None else sys.stdout

    def write(row: dict[str, Any]) -> None:
        out_fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    summary = DraftSummary(skipped=skipped)
    try:
        draft_stream(itertools.chain([first], inputs), drafter, checkers, write, batch_size=batch_size,
                     limit=args.limit, progress=(lambda line: (out_fh.flush(), progress(line))) if progress else None,
                     extra={"model": model_info["model"], "adapter": model_info["adapter"]}, summary=summary)
    finally:
        out_fh.flush()
        if close:
            out_fh.close()
    if progress:
        progress(f"draft: done, {summary.n_drafted} drafts ({summary.n_flagged} flagged, {summary.n_flags} flags "
                 f"{dict(summary.flags_by_kind)}) in {summary.wall_time_s:.1f}s, {summary.reports_per_s:.2f} reports/s"
                 + (f"; guard rewrote {summary.n_guard_rewritten}, unresolved {summary.n_guard_unresolved}"
                    if args.guard else "")
                 + (f"; skipped/notes: {dict(skipped)}" if skipped else ""))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``radimpress`` console script."""
    from radimpress_lib.config import ParamsError

    args = build_parser().parse_args(argv)
    try:
        if args.command == "draft":
            run_draft(args)
    except InputError as exc:
        print(f"radimpress {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ParamsError) as exc:
        print(f"radimpress {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. piped into `head`
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
