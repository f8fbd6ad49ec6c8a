"""Physician review of candidate impressions: item building, the ipywidgets review app,
headless replay, a clearly labelled simulated reviewer, and the analysis of notebook 06.

Blinding. :func:`build_item` shows the distinct candidate texts of a report (the
reference and each system's impression; identical texts once) in a seeded random order
under neutral labels ``A``, ``B``, ``C`` ...; which system wrote which label goes to the
store's ``blinding`` table and never reaches :class:`ReviewApp`, which is given only
:class:`~radimpress_lib.data.feedback.ReviewItem` objects (labels and texts).

Security. Every piece of report text (clinical data, findings, candidates, reviewer id)
is HTML-escaped (:func:`esc`) before it enters an ``HTML`` widget; free-text inputs are
plain ``Text``/``Textarea`` values. The app talks only to the Jupyter kernel: no server.

Keyboard. Widgets follow the reading order, so Tab walks reviewer id -> Start -> each
candidate's 1-5 rating and error boxes -> preferred -> edit -> comment -> Submit;
Space/Enter presses the focused button; Enter in the reviewer-id box starts the session.

Visibility. A chosen rating or preferred candidate is filled in solid blue with white bold
text (:data:`SELECTION_CSS`, scoped to the app's widgets by :data:`SELECTED_CLASS`), and each
candidate says its rating in words ("Rated 4 usable as is ..."), so a choice never rests on a
faint shade alone. Problems with the store (closed, locked, damaged) are shown in the widget's
status line, not only in the kernel log.

Offline. Nothing the app renders loads from the network: the static snapshot
(:meth:`ReviewApp.snapshot_html`) is self-contained HTML.

Headless. Under papermill (``review.mode: headless``) :func:`replay` drives the same
widgets a physician uses: it types the reviewer id, clicks Start, sets the ratings,
boxes and texts of each scripted judgement and clicks Submit. Scripts come from a JSONL
file (:func:`read_script`, e.g. a recorded session exported with :func:`export_script`)
or from :class:`SimulatedReviewer`, a seeded rule-based policy whose reviewer ids must
start with ``simulated`` and are stored as kind ``simulated``: never physician data.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import logging
import random
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

from radimpress_lib.clinical.labeler import label_report
from radimpress_lib.core.jsonl import iter_jsonl_rows
from radimpress_lib.core.paths import PROJECT_ROOT
from radimpress_lib.data.feedback import (
    ERROR_TYPES,
    Candidate,
    FeedbackError,
    FeedbackStore,
    Judgement,
    ReviewItem,
    check_reviewer_id,
)
from radimpress_lib.evaluation.scoring import baseline_predictions
from radimpress_lib.llm.generation import read_predictions_jsonl

log = logging.getLogger("radimpress.review")

#: Clinical fields shown above the candidates: (record field, heading).
SHOWN_FIELDS = (("modality", "Modality"), ("body_part", "Body part"), ("indication", "Indication"),
                ("comparison", "Comparison"), ("findings", "Findings"))

#: Likert scale of clinical utility.
LIKERT = {
    1: "1 unusable",
    2: "2 major edits",
    3: "3 minor edits",
    4: "4 usable as is (minor style)",
    5: "5 sign as is",
}

NO_PREFERENCE = "none"

#: CSS class of the app's choice widgets (ratings, preferred candidate), scoping :data:`SELECTION_CSS`.
SELECTED_CLASS = "radimpress-choice"

#: Style of a chosen button: solid fill, white bold text, a dark ring (JupyterLab's default is a faint grey shade).
SELECTION_CSS = (
    f".{SELECTED_CLASS} .mod-active, .{SELECTED_CLASS} .mod-active:hover, .{SELECTED_CLASS} .mod-active:focus "
    "{background: #1f4fd1 !important; color: #ffffff !important; font-weight: 700 !important; "
    "box-shadow: inset 0 0 0 2px #0b2a7a !important;}"
    f" .{SELECTED_CLASS} .jupyter-button:not(.mod-active) {{background: #f3f4f6; color: #1f2937;}}"
    " .radimpress-shown {margin-left: 0.5em; font-size: 0.95em;}"
)


def esc(text: Any) -> str:
    """HTML-escape any text for an HTML widget (quotes too); newlines become <br>."""
    return html.escape("" if text is None else str(text), quote=True).replace("\n", "<br>")


# --------------------------------------------------------------------------- items


def _labels(n: int) -> list[str]:
    if n > 26:
        raise FeedbackError(f"{n} distinct candidates: at most 26 can be labelled A-Z")
    return [chr(ord("A") + i) for i in range(n)]


def _rating_words(value: int | None) -> str:
    """What a candidate's rating says, in words next to its buttons (never colour alone)."""
    if value is None:
        return "<span class='radimpress-shown' style='color:#b42318'>not rated yet</span>"
    return f"<span class='radimpress-shown'><b>Rated {esc(LIKERT[value])}</b></span>"


def build_item(record: Mapping[str, Any], system_texts: Mapping[str, str | None], *, pool: str,
               seed: int) -> tuple[ReviewItem, dict[str, list[str]]]:
    """A blinded item for one report and its blinding key (label -> systems).

    ``system_texts`` maps system name -> impression (``reference`` is just another system).
    Empty texts are left out; identical texts (after stripping) become one candidate whose
    key lists every system that wrote it. The order is a seeded shuffle per report, and the
    item id is a hash of pool, report and candidate texts (same inputs -> same item).
    """
    rid = str(record["report_id"])
    by_text: dict[str, list[str]] = {}
    for system in sorted(system_texts):
        text = (system_texts[system] or "").strip()
        if text:
            by_text.setdefault(text, []).append(system)
    if not by_text:
        raise FeedbackError(f"report {rid}: no non-empty candidate impression")
    texts = sorted(by_text)
    random.Random(f"{seed}:{pool}:{rid}").shuffle(texts)
    labels = _labels(len(texts))
    digest = hashlib.sha256(json.dumps([pool, rid, texts], ensure_ascii=False).encode()).hexdigest()[:10]
    shown = {k: str(record.get(k) or "") for k, _ in SHOWN_FIELDS}
    item = ReviewItem(item_id=f"{pool}-{rid}-{digest}", report_id=rid, pool=pool, split=str(record.get("split") or ""),
                      record=shown, candidates=tuple(Candidate(lab, t) for lab, t in zip(labels, texts)))
    return item, {lab: by_text[t] for lab, t in zip(labels, texts)}


def sample_records(records: Sequence[Mapping[str, Any]], n: int, seed: int,
                   require: Iterable[Mapping[str, str]] = ()) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """A seeded sample of ``n`` records having an entry in every mapping of ``require``.

    Returns (records, counts) where counts say how many were available and left out why.
    """
    require = list(require)
    eligible, missing = [], 0
    for r in records:
        if all(str(r["report_id"]) in m for m in require):
            eligible.append(dict(r))
        else:
            missing += 1
    chosen = random.Random(seed).sample(eligible, min(n, len(eligible)))
    return chosen, {"records": len(records), "eligible": len(eligible), "missing_a_prediction": missing,
                    "chosen": len(chosen)}


def load_prediction_systems(predictions_dir: str | Path, systems: Sequence[str] | None = None
                            ) -> dict[str, dict[str, str]]:
    """``predictions/<system>.jsonl`` files -> {system: {report_id: prediction}}.

    ``systems`` None: every file found; a named system without a file is an error.
    """

    folder = Path(predictions_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no predictions folder; run notebook 05 first (it writes the test-split "
                                "predictions reviewed here)")
    found = {p.stem: p for p in sorted(folder.glob("*.jsonl"))}
    if systems is not None:
        absent = [s for s in systems if s not in found]
        if absent:
            raise FileNotFoundError(f"{folder}: no predictions for {absent}; found {sorted(found)}")
        found = {s: found[s] for s in systems}
    out = {}
    for name, path in found.items():
        rows = read_predictions_jsonl(path)
        out[name] = {str(r["report_id"]): r["prediction"] for r in rows}
    return out


def build_items(records: Sequence[Mapping[str, Any]], systems: Mapping[str, Mapping[str, str]], *, pool: str,
                seed: int, include_reference: bool = True
                ) -> tuple[list[tuple[ReviewItem, dict[str, list[str]]]], dict[str, int]]:
    """One blinded item per record from ``systems`` ({system: {report_id: text}}) plus the reference.

    Returns (items, skipped): ``skipped`` counts per system the empty impressions left out of the items
    (nothing is dropped silently).
    """
    out, skipped = [], {}
    for r in records:
        rid = str(r["report_id"])
        texts = {name: preds.get(rid) for name, preds in systems.items()}
        if include_reference:
            texts["reference"] = r.get("impression")
        for name, text in texts.items():
            if not (text or "").strip():
                skipped[f"empty {name}"] = skipped.get(f"empty {name}", 0) + 1
        out.append(build_item(r, texts, pool=pool, seed=seed))
    if skipped:
        log.info("review %s items: left out %s", pool, skipped)
    return out, dict(sorted(skipped.items()))


def baseline_systems(records: Sequence[Mapping[str, Any]], fit_pool: Sequence[Mapping[str, Any]]
                     ) -> dict[str, dict[str, str]]:
    """Majority and TF-IDF retrieval impressions for ``records``, fitted on ``fit_pool`` minus those records
    (a report never retrieves itself)."""

    chosen = {str(r["report_id"]) for r in records}
    fit = [r for r in fit_pool if str(r["report_id"]) not in chosen]
    preds = baseline_predictions(fit, records)
    return {name: {str(r["report_id"]): p for r, p in zip(records, values)} for name, values in preds.items()}


def by_report(predictions: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Prediction rows -> {report_id: prediction}."""
    return {str(p["report_id"]): p["prediction"] for p in predictions}


def add_session(store: FeedbackStore, items: Sequence[tuple[ReviewItem, Mapping[str, Sequence[str]]]],
                seed: int) -> list[str]:
    """Store the items (idempotent) and return their review order: a seeded shuffle, so the reviewer cannot
    tell evaluation from feedback items by position."""
    for item, key in items:
        store.add_item(item, key)
    ids = [item.item_id for item, _ in items]
    if len(set(ids)) != len(ids):
        raise FeedbackError("duplicate items in one review session")
    return random.Random(f"{seed}:session").sample(ids, len(ids))


# --------------------------------------------------------------------------- the review app


def _shown_in_widget(action: Callable[..., Any]) -> Callable[..., Any]:
    """Run a widget action; a store problem (closed, locked, damaged) goes to the status line, the form is hidden.

    Widget callbacks run in the kernel: an exception there reaches only the log console while the
    widget still looks ready, so the reviewer would not know their judgement was not saved.
    """

    @functools.wraps(action)
    def run(self: ReviewApp, *args: Any, **kwargs: Any) -> Any:
        try:
            return action(self, *args, **kwargs)
        except (FeedbackError, sqlite3.Error) as exc:
            self._say(f"The review store cannot be used: {exc}", "error")
            self.form.layout.display = "none"
            return None

    return run


class ReviewApp:
    """The review widget. ``app.widget`` is what the notebook displays.

    Args:
        store: the feedback store holding the items.
        item_ids: the items of this session, in review order.
        reviewer_kind: ``human`` (default) or ``simulated`` (only for scripted replays).
        clock: time source for ``seconds_on_item`` (tests pass a fake).
    """

    def __init__(self, store: FeedbackStore, item_ids: Sequence[str], *, reviewer_kind: str = "human",
                 clock: Callable[[], float] = time.monotonic) -> None:
        import ipywidgets as w

        self._w = w
        self.store = store
        self.item_ids = list(item_ids)
        if not self.item_ids:
            raise FeedbackError("no items to review")
        self.reviewer_kind = reviewer_kind
        self.clock = clock
        self.reviewer_id: str | None = None
        self.current: ReviewItem | None = None
        self._shown_at = 0.0
        self.saved = 0  # judgements written by this app

        self.reviewer_text = w.Text(description="Reviewer id", placeholder="required, e.g. your initials",
                                    continuous_update=False, tooltip="Enter your reviewer id, then Enter")
        self.start_button = w.Button(description="Start / resume", button_style="primary",
                                     tooltip="Start or resume where you stopped")
        self.header = w.HTML()
        self.progress = w.IntProgress(min=0, max=len(self.item_ids), value=0, description="Progress")
        self.clinical = w.HTML()
        self.candidate_box = w.VBox()
        self.ratings: dict[str, Any] = {}
        self.error_boxes: dict[str, dict[str, Any]] = {}
        self.candidate_html: dict[str, Any] = {}
        self.preferred = w.ToggleButtons(description="Preferred", options=[("no preference", NO_PREFERENCE)],
                                         value=NO_PREFERENCE, tooltips=["the candidate you would sign"])
        self.edit_area = w.Textarea(description="Edited", placeholder="optional: your corrected impression",
                                    layout=w.Layout(width="90%", height="5em"))
        self.edit_from = w.Dropdown(description="Edited from", options=[("(none)", None)], value=None)
        self.copy_button = w.Button(description="Copy into editor", tooltip="copy the 'Edited from' candidate")
        self.comment = w.Text(description="Comment", placeholder="optional")
        self.submit_button = w.Button(description="Submit", button_style="success",
                                      tooltip="save this judgement and show the next report")
        self.back_button = w.Button(description="Previous", tooltip="revisit the previous report (re-submitting "
                                    "adds a new judgement; the old one is kept)")
        self.skip_button = w.Button(description="Skip", tooltip="leave this report for later")
        self.status = w.HTML()
        self.style = w.HTML(f"<style>{SELECTION_CSS}</style>")
        self.preferred.add_class(SELECTED_CLASS)
        self.rating_shown: dict[str, Any] = {}
        form = [self.clinical, self.candidate_box, self.preferred, w.HBox([self.edit_from, self.copy_button]),
                self.edit_area, self.comment, w.HBox([self.submit_button, self.back_button, self.skip_button])]
        self.form = w.VBox(form)
        self.form.layout.display = "none"
        self.widget = w.VBox([self.style, w.HBox([self.reviewer_text, self.start_button]), self.header,
                              self.progress, self.form, self.status])
        for widget in (self.reviewer_text, self.start_button, self.preferred, self.edit_from, self.copy_button,
                       self.edit_area, self.comment, self.submit_button, self.back_button, self.skip_button):
            widget.tabbable = True

        self.start_button.on_click(lambda _: self.start())
        self.reviewer_text.observe(self._on_reviewer_enter, names="value")
        self.submit_button.on_click(lambda _: self.submit())
        self.back_button.on_click(lambda _: self.back())
        self.skip_button.on_click(lambda _: self.skip())
        self.copy_button.on_click(lambda _: self.copy_into_editor())
        self._say("Enter your reviewer id and press Start.")

    # ------------------------------------------------------------------ state
    def _say(self, message: str, kind: str = "info") -> None:
        color = {"info": "#333", "ok": "#1a7f37", "error": "#b42318"}[kind]
        self.status.value = f'<span style="color:{color}">{esc(message)}</span>'
        self.last_message = (kind, message)

    def pending(self) -> list[str]:
        done = self.store.reviewed_item_ids(self.reviewer_id) if self.reviewer_id else set()
        return [i for i in self.item_ids if i not in done]

    @property
    def n_done(self) -> int:
        return len(self.item_ids) - len(self.pending())

    def _on_reviewer_enter(self, change: Mapping[str, Any]) -> None:
        # continuous_update=False: fires on Enter (or leaving the box) with a new id.
        new = (change.get("new") or "").strip()
        if new and new != self.reviewer_id:
            self.start()

    @_shown_in_widget
    def start(self) -> bool:
        """Validate the reviewer id, register it and show the first report not yet reviewed."""
        try:
            rid = check_reviewer_id(self.reviewer_text.value, self.reviewer_kind)
            self.store.register_reviewer(rid, self.reviewer_kind)
        except FeedbackError as exc:
            self._say(str(exc), "error")
            self.form.layout.display = "none"
            return False
        self.reviewer_id = rid
        pending = self.pending()
        self._say(f"Reviewer {rid}: {len(self.item_ids) - len(pending)} of {len(self.item_ids)} already reviewed"
                  + ("; resuming." if len(pending) < len(self.item_ids) else "."), "ok")
        self._show_next(pending)
        return True

    def _show_next(self, pending: list[str] | None = None) -> None:
        pending = self.pending() if pending is None else pending
        if not pending:
            self.current = None
            self.form.layout.display = "none"
            self._update_header()
            self._say(f"All {len(self.item_ids)} reports reviewed. Thank you.", "ok")
            return
        self.show(pending[0])

    def show(self, item_id: str) -> None:
        """Display an item; if this reviewer judged it before, prefill their latest judgement."""
        if item_id not in self.item_ids:
            raise FeedbackError(f"item {item_id!r} is not part of this review session")
        self.current = self.store.item(item_id)
        self._render_item(self.current)
        previous = self.store.current_judgement(item_id, self.reviewer_id) if self.reviewer_id else None
        if previous:
            self.fill({"ratings": previous["ratings"], "errors": previous["errors"],
                       "preferred": previous["preferred_label"], "edited_impression": previous["edited_impression"],
                       "edited_from": previous["edited_from_label"], "comment": previous["comment"]})
        self.form.layout.display = ""
        self._update_header()
        self._shown_at = self.clock()

    def _update_header(self) -> None:
        n = len(self.item_ids)
        done = self.n_done
        self.progress.value = done
        if self.current is None:
            self.header.value = f"<b>Reviewer {esc(self.reviewer_id)}</b> &middot; {done} of {n} reviewed"
            return
        position = self.item_ids.index(self.current.item_id) + 1
        again = " (already reviewed: submitting adds a new judgement)" if self.current.item_id in \
            self.store.reviewed_item_ids(self.reviewer_id) else ""
        self.header.value = (f"<b>Report {position} of {n}</b> &middot; {done} reviewed &middot; reviewer "
                             f"{esc(self.reviewer_id)}{esc(again)}")

    def _render_item(self, item: ReviewItem) -> None:
        w = self._w
        rows = [f"<tr><th style='text-align:left;vertical-align:top;padding-right:1em'>{esc(head)}</th>"
                f"<td>{esc(item.record.get(key))}</td></tr>" for key, head in SHOWN_FIELDS if item.record.get(key)]
        self.clinical.value = f"<table>{''.join(rows)}</table>"
        self.ratings, self.error_boxes, self.candidate_html, self.rating_shown = {}, {}, {}, {}
        boxes = []
        for c in item.candidates:
            self.candidate_html[c.label] = w.HTML(
                f"<div style='border-left:4px solid #888;padding:0.3em 0.6em;margin-top:0.6em'>"
                f"<b>Candidate {esc(c.label)}</b><br>{esc(c.text)}</div>")
            self.ratings[c.label] = w.ToggleButtons(
                options=[(str(k), k) for k in LIKERT], value=None, description=f"Utility {c.label}",
                tooltips=list(LIKERT.values()), style={"button_width": "3em"})
            self.ratings[c.label].add_class(SELECTED_CLASS)
            self.rating_shown[c.label] = w.HTML(_rating_words(None))
            self.ratings[c.label].observe(
                lambda change, shown=self.rating_shown[c.label]: setattr(shown, "value", _rating_words(change["new"])),
                names="value")
            self.error_boxes[c.label] = {e: w.Checkbox(value=False, description=text, indent=False)
                                         for e, text in ERROR_TYPES.items()}
            for widget in (self.ratings[c.label], *self.error_boxes[c.label].values()):
                widget.tabbable = True
            boxes.append(w.VBox([self.candidate_html[c.label],
                                 w.HBox([self.ratings[c.label], self.rating_shown[c.label]]),
                                 w.HBox(list(self.error_boxes[c.label].values()))]))
        self.candidate_box.children = boxes
        self.preferred.options = [(f"Candidate {lab}", lab) for lab in item.labels] + [("no preference", NO_PREFERENCE)]
        self.preferred.value = NO_PREFERENCE
        self.edit_from.options = [("(none)", None)] + [(f"Candidate {lab}", lab) for lab in item.labels]
        self.edit_from.value = None
        self.edit_area.value = ""
        self.comment.value = ""

    # ------------------------------------------------------------------ actions
    def fill(self, action: Mapping[str, Any]) -> None:
        """Set the widgets as a reviewer would (ratings, error boxes, preferred, edit, comment)."""
        if self.current is None:
            raise FeedbackError("no report is shown")
        for label, value in (action.get("ratings") or {}).items():
            if label not in self.ratings:
                raise FeedbackError(f"item {self.current.item_id}: no candidate {label!r} to rate")
            if value is not None and value not in LIKERT:
                raise FeedbackError(f"item {self.current.item_id}: field 'ratings' [{label}] must be 1-5, got {value!r}")
            self.ratings[label].value = value
        for label, errs in (action.get("errors") or {}).items():
            if label not in self.error_boxes:
                raise FeedbackError(f"item {self.current.item_id}: no candidate {label!r} to mark")
            for e in errs:
                if e not in ERROR_TYPES:
                    raise FeedbackError(f"item {self.current.item_id}: unknown error type {e!r}")
            for e, box in self.error_boxes[label].items():
                box.value = e in errs
        for name, widget, value in (("preferred", self.preferred, action.get("preferred") or NO_PREFERENCE),
                                    ("edited_from", self.edit_from, action.get("edited_from"))):
            if value not in widget._options_values:
                raise FeedbackError(f"item {self.current.item_id}: field {name!r} must be one of "
                                    f"{self.current.labels}, got {value!r}")
        self.preferred.value = action.get("preferred") or NO_PREFERENCE
        self.edit_from.value = action.get("edited_from")
        self.edit_area.value = action.get("edited_impression") or ""
        self.comment.value = action.get("comment") or ""

    def copy_into_editor(self) -> None:
        source = self.edit_from.value or (None if self.preferred.value == NO_PREFERENCE else self.preferred.value)
        if self.current is None or source is None:
            self._say("Choose 'Edited from' (or a preferred candidate) first.", "error")
            return
        self.edit_from.value = source
        self.edit_area.value = self.current.text_of(source)

    def collect(self) -> Judgement:
        """The judgement the widgets hold now (raises FeedbackError when incomplete)."""
        if self.current is None or self.reviewer_id is None:
            raise FeedbackError("press Start with a reviewer id first")
        unrated = [lab for lab, widget in self.ratings.items() if widget.value is None]
        if unrated:
            raise FeedbackError(f"rate every candidate (1-5): missing {', '.join(unrated)}")
        edited = self.edit_area.value.strip() or None
        edited_from = self.edit_from.value if edited else None
        if edited and edited_from is None and self.preferred.value != NO_PREFERENCE:
            edited_from = self.preferred.value
        return Judgement(
            item_id=self.current.item_id, reviewer_id=self.reviewer_id,
            ratings={lab: int(widget.value) for lab, widget in self.ratings.items()},
            errors={lab: [e for e, box in boxes.items() if box.value] for lab, boxes in self.error_boxes.items()},
            preferred_label=None if self.preferred.value == NO_PREFERENCE else self.preferred.value,
            edited_impression=edited, edited_from_label=edited_from,
            comment=self.comment.value.strip() or None,
            seconds_on_item=round(max(0.0, self.clock() - self._shown_at), 3),
        )

    @_shown_in_widget
    def submit(self) -> int | None:
        """Save the shown judgement and move on; returns the judgement id (None when refused)."""
        try:
            judgement = self.collect()
            jid = self.store.add_judgement(judgement)
        except FeedbackError as exc:
            self._say(str(exc), "error")
            return None
        self.saved += 1
        self._say(f"Saved judgement {jid} on report {self.item_ids.index(judgement.item_id) + 1}.", "ok")
        self._show_next()
        return jid

    @_shown_in_widget
    def back(self) -> None:
        """Show the previous report of the session (or, at the end, the last one reviewed)."""
        if self.current is None:
            reviewed = [i for i in self.item_ids if i in self.store.reviewed_item_ids(self.reviewer_id or "")]
            if reviewed:
                self.show(reviewed[-1])
            return
        index = self.item_ids.index(self.current.item_id)
        if index == 0:
            self._say("This is the first report.", "error")
            return
        self.show(self.item_ids[index - 1])

    @_shown_in_widget
    def skip(self) -> None:
        """Leave the shown report for later and show the next one not yet reviewed."""
        if self.current is None:
            return
        pending = self.pending()
        later = [i for i in pending if self.item_ids.index(i) > self.item_ids.index(self.current.item_id)]
        rest = later + [i for i in pending if i not in later and i != self.current.item_id]
        if not rest:
            self._say("No other report left to review.", "error")
            return
        self.show(rest[0])

    # ------------------------------------------------------------------ rendering for readers
    def html_values(self) -> list[str]:
        """Every HTML fragment the app renders now (for escaping checks)."""
        values = [self.header.value, self.clinical.value, self.status.value]
        values += [h.value for h in self.candidate_html.values()] + [h.value for h in self.rating_shown.values()]
        return values

    def snapshot_html(self, title: str = "radimpress review", *, page: bool = True) -> str:
        """A static HTML page (``page=False``: a fragment) of what the reviewer sees now, values marked."""
        parts = [f"<h3>{esc(title)}</h3>", f"<p>{self.header.value}</p>",
                 f"<p>Reviewer id: <code>{esc(self.reviewer_id or '')}</code></p>"]
        if self.current is not None:
            parts.append(self.clinical.value)
            for c in self.current.candidates:
                rating = self.ratings[c.label].value
                scale = " ".join(f"<span class='lik{' on' if k == rating else ''}' title='{esc(t)}'>{k}</span>"
                                 for k, t in LIKERT.items())
                errs = " ".join(f"<label><input type='checkbox' disabled{' checked' if box.value else ''}> "
                                f"{esc(ERROR_TYPES[e])}</label>" for e, box in self.error_boxes[c.label].items())
                parts.append(f"{self.candidate_html[c.label].value}<div>Utility {esc(c.label)}: {scale}</div>"
                             f"<div>{errs}</div>")
            pref = self.preferred.value
            parts.append("<p>Preferred: " + " ".join(
                f"<span class='lik{' on' if value == pref else ''}'>{esc(text)}</span>"
                for text, value in self.preferred.options) + "</p>")
            parts.append(f"<p>Edited impression:<br><textarea disabled rows='3' cols='80'>{esc(self.edit_area.value)}"
                         "</textarea></p><p><button disabled>Submit</button> <button disabled>Previous</button> "
                         "<button disabled>Skip</button></p>")
        parts.append(self.status.value)
        style = ("body{font-family:sans-serif;max-width:60em;margin:1em auto}"
                 ".lik{display:inline-block;border:1px solid #999;padding:0 .5em;margin:0 .1em}"
                 ".lik.on{background:#1f6feb;color:#fff}")
        if not page:
            return f"<div class='radimpress-review'><style>{style.replace('body', '.radimpress-review')}</style>" \
                   f"{''.join(parts)}</div>"
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
                f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


# --------------------------------------------------------------------------- scripted judgements

SCRIPT_FIELDS = ("reviewer_id", "item_id", "ratings")


def read_script(path: str | Path) -> list[dict[str, Any]]:
    """Scripted judgements (JSONL): ``reviewer_id``, ``item_id``, ``ratings`` {label: 1-5} and optional
    ``errors``, ``preferred``, ``edited_impression``, ``edited_from``, ``comment``, ``reviewer_kind``."""
    rows = []
    for where, row in iter_jsonl_rows(path, SCRIPT_FIELDS, error=FeedbackError):
        if not isinstance(row["ratings"], dict):
            raise FeedbackError(f"{where}: field 'ratings' must map label -> 1-5")
        rows.append(row)
    return rows


def export_script(store: FeedbackStore, reviewer_id: str, item_ids: Sequence[str] | None = None
                  ) -> list[dict[str, Any]]:
    """A reviewer's current judgements as replayable script rows (review order of ``item_ids``)."""
    rows = {j["item_id"]: j for j in store.current_judgements(reviewer_id=reviewer_id)}
    order = list(item_ids) if item_ids is not None else list(rows)
    return [{"reviewer_id": reviewer_id, "reviewer_kind": rows[i]["reviewer_kind"], "item_id": i,
             "ratings": rows[i]["ratings"], "errors": {k: v for k, v in rows[i]["errors"].items() if v},
             "preferred": rows[i]["preferred_label"], "edited_impression": rows[i]["edited_impression"],
             "edited_from": rows[i]["edited_from_label"], "comment": rows[i]["comment"]}
            for i in order if i in rows]


def replay(app: ReviewApp, reviewer_id: str, actions: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Play judgements through the widgets: type the id, click Start, fill each item, click Submit.

    Items the reviewer already judged are skipped (resume), unless the action is for the shown item.
    Returns counts: submitted, already_done. A refused submission raises with the widget's message.
    """
    app.reviewer_text.value = reviewer_id  # the box's change event starts the session, like pressing Enter
    if app.reviewer_id != reviewer_id.strip():
        app.start_button.click()
    if app.reviewer_id != reviewer_id.strip():
        raise FeedbackError(f"reviewer {reviewer_id!r} refused: {app.last_message[1]}")
    counts = {"submitted": 0, "already_done": 0}
    done = app.store.reviewed_item_ids(app.reviewer_id)
    for action in actions:
        item_id = action["item_id"]
        if item_id in done:
            counts["already_done"] += 1
            continue
        if app.current is None or app.current.item_id != item_id:
            app.show(item_id)
        app.fill(action)
        before = app.saved
        app.submit_button.click()
        if app.saved == before:
            raise FeedbackError(f"item {item_id}: submission refused: {app.last_message[1]}")
        counts["submitted"] += 1
    return counts


# --------------------------------------------------------------------------- simulated reviewer

_SIDE = re.compile(r"\b(left|right|bilateral|bilaterally|both)\b", re.IGNORECASE)
_SEVERITY = re.compile(r"\b(mild|mildly|minimal|minimally|moderate|moderately|severe|severely|small|large|"
                       r"trace|marked|markedly|tiny|extensive)\b", re.IGNORECASE)


def _sides(text: str) -> set[str]:
    found = {m.group(1).lower() for m in _SIDE.finditer(text)}
    return {"bilateral" if s in ("bilaterally", "both") else s for s in found}


def _severities(text: str) -> set[str]:
    return {m.group(1).lower().removesuffix("ly") for m in _SEVERITY.finditer(text)}


def rule_errors(candidate: str, reference: str) -> list[str]:
    """Error types of ``candidate`` judged against ``reference`` by rules (labeler + word lists).

    Used by the simulated reviewer only: the CheXpert-style labeler finds missed / invented
    observations and flipped negations; side and severity words and length / list format give
    laterality, severity and style errors.
    """

    ref, cand = label_report(reference), label_report(candidate)
    found = set()
    for obs, r_status in ref.items():
        if obs == "No Finding":
            continue
        c_status = cand.get(obs, "absent")
        r_pos, c_pos = r_status in ("positive", "uncertain"), c_status in ("positive", "uncertain")
        if r_pos and c_status == "absent":
            found.add("missed_finding")
        elif c_pos and r_status == "absent":
            found.add("hallucinated_finding")
        elif r_pos != c_pos and "absent" not in (r_status, c_status):
            found.add("wrong_negation")
    if _sides(candidate) - _sides(reference) and _sides(reference):
        found.add("wrong_laterality")
    if _severities(candidate) - _severities(reference) and _severities(reference):
        found.add("wrong_severity")
    n_ref, n_cand = max(1, len(reference.split())), max(1, len(candidate.split()))
    numbered = re.compile(r"^\s*1[.)]")
    if not 0.5 <= n_cand / n_ref <= 2.0 or bool(numbered.match(candidate)) != bool(numbered.match(reference)):
        found.add("style_mismatch")
    return [e for e in ERROR_TYPES if e in found]


class SimulatedReviewer:
    """A seeded, rule-based stand-in for a physician. **Not physician data.**

    It reads the reference impression (which a real reviewer does not get as such), marks
    :func:`rule_errors`, rates ``5 - 2 x clinical errors - style error`` (clipped to 1-5),
    moves a rating by one step with probability ``noise``, prefers a top-rated candidate,
    and with probability ``edit_rate`` replaces a preferred candidate rated <= 3 by the
    reference text as its "edit". Ids must start with ``simulated``.
    """

    def __init__(self, reviewer_id: str, seed: int, *, noise: float = 0.25, edit_rate: float = 0.5) -> None:
        self.reviewer_id = check_reviewer_id(reviewer_id, "simulated")
        self.rng = random.Random(f"{seed}:{self.reviewer_id}")
        self.noise = noise
        self.edit_rate = edit_rate

    def judge(self, item: ReviewItem, reference: str) -> dict[str, Any]:
        ratings, errors = {}, {}
        for c in item.candidates:
            errs = rule_errors(c.text, reference)
            clinical = sum(e != "style_mismatch" for e in errs)
            score = 5 - 2 * clinical - ("style_mismatch" in errs)
            if self.rng.random() < self.noise:
                score += self.rng.choice((-1, 1))
            ratings[c.label] = min(5, max(1, score))
            errors[c.label] = errs
        best = max(ratings.values())
        preferred = self.rng.choice(sorted(lab for lab, v in ratings.items() if v == best))
        action: dict[str, Any] = {"reviewer_id": self.reviewer_id, "item_id": item.item_id, "ratings": ratings,
                                  "errors": errors, "preferred": preferred, "edited_impression": None,
                                  "edited_from": None, "comment": "simulated reviewer (rule-based policy)"}
        if best <= 3 and reference.strip() != item.text_of(preferred).strip() and self.rng.random() < self.edit_rate:
            action["edited_impression"] = reference.strip()
            action["edited_from"] = preferred
        return action


def simulated_actions(store: FeedbackStore, item_ids: Sequence[str], references: Mapping[str, str],
                      reviewer_ids: Sequence[str], seed: int, *, noise: float, edit_rate: float
                      ) -> dict[str, list[dict[str, Any]]]:
    """{reviewer_id: script rows} from one :class:`SimulatedReviewer` per id (``references``: report_id -> text)."""
    out = {}
    for rid in reviewer_ids:
        sim = SimulatedReviewer(rid, seed, noise=noise, edit_rate=edit_rate)
        actions = []
        for item_id in item_ids:
            item = store.item(item_id)
            actions.append(sim.judge(item, references[item.report_id]))
        out[sim.reviewer_id] = actions
    return out


def run_headless(store: FeedbackStore, session_ids: Sequence[str], review_cfg: Any,
                 references: Mapping[str, str], seed: int, script_root: Path | None = None) -> dict[str, Any]:
    """Replay the run's scripted judgements through :class:`ReviewApp` (papermill mode).

    ``review.script`` set: its rows, grouped by reviewer (``reviewer_kind`` per row, default human).
    Otherwise one :class:`SimulatedReviewer` per ``review.reviewers`` id: **simulated, not physician data**.
    Returns per reviewer: kind, submitted, already_done (resume), plus the source.
    """

    if review_cfg.script:
        path = Path(review_cfg.script)
        path = path if path.is_absolute() else (script_root or PROJECT_ROOT) / path
        rows = read_script(path)
        scripts: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in rows:
            kind = row.get("reviewer_kind") or "human"
            scripts.setdefault((row["reviewer_id"], kind), []).append(row)
        source = f"script {review_cfg.script}"
    else:
        sims = simulated_actions(store, session_ids, references, review_cfg.reviewers, seed,
                                 noise=review_cfg.sim_noise, edit_rate=review_cfg.sim_edit_rate)
        scripts = {(rid, "simulated"): actions for rid, actions in sims.items()}
        source = "SIMULATED reviewers (rule-based policy; not physician judgements)"
    out: dict[str, Any] = {"source": source, "reviewers": {}}
    for (rid, kind), actions in scripts.items():
        unknown = [a["item_id"] for a in actions if a["item_id"] not in set(session_ids)]
        if unknown:
            raise FeedbackError(f"{source}: reviewer {rid!r} has judgements on items not in this session "
                                f"{unknown[:3]} (predictions changed since the script was recorded?)")
        app = ReviewApp(store, session_ids, reviewer_kind=kind)
        counts = replay(app, rid, actions)
        out["reviewers"][rid] = {"kind": kind, **counts}
        log.info("review: %s (%s) submitted %d, already done %d", rid, kind, counts["submitted"],
                 counts["already_done"])
    return out


def snapshot_app(store: FeedbackStore, session_ids: Sequence[str], reviewer_id: str, kind: str) -> ReviewApp:
    """A review app showing the first session item as ``reviewer_id`` judged it (for the rendered snapshot)."""
    app = ReviewApp(store, session_ids, reviewer_kind=kind)
    app.reviewer_text.value = reviewer_id
    if app.reviewer_id is None:
        app.start_button.click()
    app.show(session_ids[0])
    return app


def summarize(store: FeedbackStore, session_ids: Sequence[str], frame: Any, utility: Any, errors: Any,
              kappa: Mapping[str, Any], headless: Mapping[str, Any] | None, pairs_info: Mapping[str, Any],
              dpo_info: Mapping[str, Any], left_out: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``review.json`` payload. ``simulated`` is true when any judgement analysed came from a simulated reviewer."""
    kinds = {j["reviewer_id"]: j["reviewer_kind"] for j in store.current_judgements()
             if j["item_id"] in set(session_ids)}
    simulated = any(k == "simulated" for k in kinds.values())
    pools = {p: sum(store.item(i).pool == p for i in session_ids) for p in ("eval", "feedback")}
    return {
        "simulated": simulated,
        "warning": ("SIMULATED reviewers: a seeded rule-based policy stands in for physicians; these numbers "
                    "test the pipeline and are not clinical evidence") if simulated else None,
        "reviewers": kinds,
        "session_items": len(session_ids),
        "session_items_by_pool": pools,
        "store": store.counts(),
        "schema_version": store.schema_version,
        "headless": dict(headless) if headless else None,
        "utility": {} if utility.empty else json.loads(utility.to_json(orient="index")),
        "error_rates": {} if errors.empty else json.loads(errors.to_json(orient="index")),
        "n_ratings_analysed": len(frame),
        "empty_impressions_left_out": dict(left_out or {}),
        "agreement": dict(kappa),
        "pairs": dict(pairs_info),
        "dpo": dict(dpo_info),
    }


# --------------------------------------------------------------------------- analysis


def ratings_frame(store: FeedbackStore, item_ids: Sequence[str] | None = None, pool: str | None = "eval"):
    """One row per (current judgement, candidate, system): likert, preferred, error flags."""
    import pandas as pd

    rows = store.rating_rows(pool=pool)
    frame = pd.DataFrame(rows, columns=["item_id", "report_id", "pool", "reviewer_id", "reviewer_kind", "label",
                                        "system", "likert", "preferred", *ERROR_TYPES])
    if item_ids is not None:
        frame = frame[frame["item_id"].isin(set(item_ids))]
    return frame.reset_index(drop=True)


def utility_table(frame):
    """Per system: ratings, mean and sd of utility, share rated >= 4 (clinically acceptable), share preferred,
    and the count of each Likert score."""
    import pandas as pd

    if frame.empty:
        return pd.DataFrame()
    g = frame.groupby("system")
    table = pd.DataFrame({
        "n_ratings": g.size(),
        "mean_utility": g["likert"].mean(),
        "sd_utility": g["likert"].std(ddof=1),
        "acceptable_share": g["likert"].apply(lambda s: float((s >= 4).mean())),
        "preferred_share": g["preferred"].mean(),
    })
    counts = frame.pivot_table(index="system", columns="likert", values="item_id", aggfunc="count", fill_value=0)
    counts = counts.reindex(columns=list(LIKERT), fill_value=0)
    counts.columns = [f"n_{k}" for k in counts.columns]
    return table.join(counts).sort_values("mean_utility", ascending=False)


def error_rates(frame):
    """Per system: share of ratings marked with each error type."""
    import pandas as pd

    if frame.empty:
        return pd.DataFrame()
    return frame.groupby("system")[list(ERROR_TYPES)].mean().astype(float)


def agreement(frame) -> dict[str, Any]:
    """Inter-rater agreement on the 1-5 utility of the same (item, candidate) units.

    Cohen's kappa (unweighted and quadratic-weighted, scikit-learn) for each reviewer pair on
    the units both rated; Fleiss' kappa (statsmodels) on the units every reviewer rated.
    """
    import numpy as np
    from sklearn.metrics import cohen_kappa_score
    from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

    if frame.empty:
        return {"reviewers": [], "n_units": 0, "cohen": [], "fleiss": None, "note": "no ratings"}
    units = frame.drop_duplicates(["item_id", "label", "reviewer_id"])
    wide = units.pivot_table(index=["item_id", "label"], columns="reviewer_id", values="likert", aggfunc="first")
    reviewers = list(wide.columns)
    out: dict[str, Any] = {"reviewers": reviewers, "n_units": len(wide), "cohen": [], "fleiss": None}
    if len(reviewers) < 2:
        out["note"] = "agreement needs at least two reviewers rating the same items"
        return out
    for a, b in combinations(reviewers, 2):
        both = wide[[a, b]].dropna()
        if len(both) < 2:
            continue
        x, y = both[a].astype(int), both[b].astype(int)
        same = len(set(x) | set(y)) == 1  # one category only: kappa is undefined
        kappas = {}
        for name, weights in (("kappa", None), ("kappa_quadratic", "quadratic")):
            value = None if same else float(cohen_kappa_score(x, y, labels=list(LIKERT), weights=weights))
            kappas[name] = value if value is not None and np.isfinite(value) else None
        out["cohen"].append({"a": a, "b": b, "n_units": len(both), **kappas,
                             "exact_agreement": float((x == y).mean())})
    full = wide.dropna()
    if len(full) >= 2:
        table, _ = aggregate_raters(full.to_numpy(dtype=int), n_cat=None)
        value = fleiss_kappa(table, method="fleiss")
        out["fleiss"] = {"n_units": len(full), "n_raters": len(reviewers),
                         "kappa": None if not np.isfinite(value) else float(value)}
    return out


def plot_utility_distribution(table, note: str | None = None):
    """Stacked horizontal bars: share of each Likert score per system (``note`` is added to the title)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.45 * max(1, len(table))))
    counts = table[[f"n_{k}" for k in LIKERT]]
    shares = counts.div(counts.sum(axis=1), axis=0)
    left = [0.0] * len(shares)
    colors = ["#b42318", "#f79009", "#fdb022", "#66c61c", "#1a7f37"]
    for k, color in zip(LIKERT, colors):
        values = shares[f"n_{k}"].to_numpy()
        ax.barh(list(shares.index), values, left=left, color=color, label=LIKERT[k])
        left = [a + b for a, b in zip(left, values)]
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("share of ratings")
    ax.set_title("Clinical utility per system (1-5 Likert)" + (f"\n{note}" if note else ""))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="utility")
    fig.tight_layout()
    return fig


def plot_error_rates(rates, note: str | None = None):
    """Grouped bars: share of ratings with each error type, per system (``note`` is added to the title)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    n = max(1, len(rates))
    width = 0.8 / n
    x = list(range(len(ERROR_TYPES)))
    for i, (system, row) in enumerate(rates.iterrows()):
        ax.bar([v + i * width for v in x], row.to_numpy(), width=width, label=system)
    ax.set_xticks([v + 0.4 - width / 2 for v in x], list(ERROR_TYPES.values()), rotation=20, ha="right")
    ax.set_ylabel("share of ratings")
    ax.set_ylim(0, 1)
    ax.set_title("Error types marked per system" + (f"\n{note}" if note else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
