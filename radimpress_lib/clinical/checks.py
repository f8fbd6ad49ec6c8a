"""Draft checks: flags of a draft against its findings (labeler and entity graph), and why a draft needs review."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from radimpress_lib.clinical import graph, labeler
from radimpress_lib.data.scope import StudyScope

#: Kinds of :func:`review_reasons` (each reason is ``{"kind": ..., "message": ...}``; more kinds may be added).
REVIEW_REASON_KINDS: dict[str, str] = {
    "out_of_scope": "the study (modality / body part) is not one the model was trained on",
    "empty_draft": "the model returned no text",
    "truncated": "the draft was cut at the token limit before the model ended it",
    "negation_flip": "a finding present in one of draft / findings is negated in the other (factual check)",
    "not_in_findings": "the draft states a finding the findings do not mention (factual check)",
    "omitted": "the draft leaves out a finding the findings state (factual check, --flag-omissions)",
}

#: A factual-consistency check: ``(input record, draft) -> flags``; each flag is a JSON-able dict
#: with at least ``check``, ``kind``, ``finding`` and ``message``.
Checker = Callable[[Mapping[str, Any], str], list[dict[str, Any]]]


def labeler_checker(record: Mapping[str, Any], draft: str, *, include_omissions: bool = False) -> list[dict[str, Any]]:
    """Flags from the CheXpert-style labeler: the draft's labels against the findings' labels.

    Kinds: ``not_in_findings`` (the draft states an observation as present or possible that
    the findings do not mention), ``negation_flip`` (present in one, negated in the other),
    and with ``include_omissions`` ``omitted`` (present in the findings, not in the draft;
    impressions legitimately leave out minor findings, so this is off by default).
    ``No Finding`` is not compared directly: a normal-study draft over abnormal findings
    surfaces as the flips/omissions of those findings.
    """

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


def graph_checker(record: Mapping[str, Any], draft: str, *, include_omissions: bool = False) -> list[dict[str, Any]]:
    """Flags from the entity graph (:mod:`radimpress_lib.clinical.graph`): the draft's graph against the findings'.

    Kinds as :func:`labeler_checker` (``not_in_findings``, ``negation_flip``, ``omitted`` with
    ``include_omissions``), per observation of the graph (hallucinated observations, negation flips,
    omitted significant findings of :func:`radimpress_lib.clinical.graph.compare_to_findings`).
    """
    result = graph.compare_to_findings(graph.extract_graph(draft), graph.extract_graph(record.get("findings") or ""))
    flags: list[dict[str, Any]] = []
    for key, (kind, message) in _GRAPH_KINDS.items():
        if key == "omitted" and not include_omissions:
            continue
        flags.extend({"check": "graph", "kind": kind, "finding": g, "message": message.format(g=g)}
                     for g in result.get(key, ()))
    return flags


def default_checkers(*, include_omissions: bool = False) -> list[tuple[str, Checker]]:
    """The labeler checker and the entity-graph checker, as ``(name, checker)`` pairs."""
    return [
        ("labeler", lambda rec, draft: labeler_checker(rec, draft, include_omissions=include_omissions)),
        ("graph", lambda rec, draft: graph_checker(rec, draft, include_omissions=include_omissions)),
    ]


_GRAPH_KINDS = {"hallucinated": ("not_in_findings", "draft states {g} but the findings do not mention it"),
                "negation_flips": ("negation_flip", "{g}: present in one of draft / findings, negated in the other"),
                "omitted": ("omitted", "findings state {g} but the draft does not mention it")}


def review_reasons(record: Mapping[str, Any], draft: str, flags: Sequence[Mapping[str, Any]], *,
                   stopped: bool | None = None, n_new_tokens: int | None = None,
                   scope: StudyScope | None = None) -> list[dict[str, str]]:
    """Why a draft needs review: a list of ``{"kind", "message"}`` (empty: nothing found).

    In order: the study is outside ``scope`` (``out_of_scope``), the draft is empty
    (``empty_draft``), decoding stopped at the token limit (``stopped`` False: ``truncated``), then
    one reason per factual flag (its ``kind`` and ``message``, see :func:`labeler_checker`). The
    kinds are those of :data:`REVIEW_REASON_KINDS`; new kinds (and fields such as a severity) can
    be added without changing the rows' shape.
    """
    reasons: list[dict[str, str]] = []
    outside = scope.problem(record.get("modality"), record.get("body_part")) if scope is not None else None
    if outside is not None:
        reasons.append({"kind": "out_of_scope",
                        "message": f"{outside[1]}: drafted by a model trained on other studies"})
    if not draft.strip():
        reasons.append({"kind": "empty_draft", "message": "the model returned an empty draft"})
    elif stopped is False:
        at = f" ({n_new_tokens} tokens)" if n_new_tokens is not None else ""
        reasons.append({"kind": "truncated", "message": f"the draft was cut at the token limit{at} before the model "
                                                        "ended it: it may stop mid-sentence"})
    reasons.extend({"kind": str(f["kind"]), "message": str(f["message"])} for f in flags)
    return reasons


# --------------------------------------------------------------------------- drafting-time triage signals

#: Severity rank of each review-reason kind (0 most severe): :func:`order_reasons` sorts by it. A study
#: the model was not trained on and an empty draft come first, then contradictions of the findings,
#: omitted findings, unsupported findings, a cut draft, and last the statistical signals (the review-risk
#: model, :mod:`radimpress_lib.evaluation.triage`).
REASON_SEVERITY: dict[str, int] = {
    "out_of_scope": 0,
    "empty_draft": 0,
    "negation_flip": 1,
    "omitted": 2,
    "not_in_findings": 3,
    "truncated": 4,
    "review_risk": 5,
}
#: Severity names by rank, written into each reason as ``severity``.
SEVERITY_NAMES: tuple[str, ...] = ("critical", "high", "high", "medium", "medium", "low")

#: Labeler observations compared by the triage signals (``No Finding`` is read through the others).
TRIAGE_OBSERVATIONS: tuple[str, ...] = tuple(o for o in labeler.OBSERVATIONS if o != "No Finding")
_PRESENT = (labeler.POSITIVE, labeler.UNCERTAIN)

#: Signal groups of :func:`draft_signals` (the triage ablation drops one group at a time).
CHECK_SIGNALS: tuple[str, ...] = (
    *(f"omitted:{o}" for o in TRIAGE_OBSERVATIONS),
    "negation_flip", "not_in_findings", "graph_omitted", "graph_negation_flip", "graph_not_in_findings",
    "normal_draft_abnormal_findings",
)
NEIGHBOUR_SIGNALS: tuple[str, ...] = ("nb_missing", "nb_missing_max", "nb_extra", "nb_normal_gap", "nb_text_distance")
COMPLEXITY_SIGNALS: tuple[str, ...] = ("findings_words", "findings_sentences", "findings_present", "draft_words")


def order_reasons(reasons: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``reasons`` sorted by :data:`REASON_SEVERITY` (stable: equal kinds keep their order), each with ``severity``.

    A kind without a rank sorts with the statistical signals.
    """
    last = max(REASON_SEVERITY.values())
    ranked = sorted(reasons, key=lambda r: REASON_SEVERITY.get(str(r["kind"]), last))
    return [{**r, "severity": SEVERITY_NAMES[REASON_SEVERITY.get(str(r["kind"]), last)]} for r in ranked]


def _word_set(text: str) -> set[str]:
    return {w for w in labeler.normalize_whitespace(text.lower()).replace(".", " ").replace(",", " ").split() if w}


def draft_signals(record: Mapping[str, Any], draft: str, *,
                  labels: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, float]:
    """Drafting-time signals of how likely ``draft`` needs a fix; only the record's own inputs are read.

    Never the reference impression: the findings, the draft and, when the record carries them, the
    ``similar_impressions`` of the prompt's retrieval context (impressions of the most similar
    training reports). Keys (all floats):

    * checks against the findings, **omissions included**, by kind and finding (:data:`CHECK_SIGNALS`):
      ``omitted:<observation>`` (labeler: the findings state it, the draft does not mention it; one
      feature per finding, so a risk model can weight a left-out effusion above a left-out granuloma),
      ``negation_flip`` / ``not_in_findings`` (labeler counts), the entity-graph counts
      ``graph_omitted`` / ``graph_negation_flip`` / ``graph_not_in_findings``, and
      ``normal_draft_abnormal_findings`` (a normal-study draft over abnormal findings);
    * disagreement with the retrieved neighbours (:data:`NEIGHBOUR_SIGNALS`, 0 without them):
      ``nb_missing`` (sum over findings of the share of neighbours stating a finding the draft
      does not), ``nb_missing_max``, ``nb_extra`` (share of neighbours *not* stating a finding the draft
      states), ``nb_normal_gap`` (normal-study draft vs share of normal neighbours), ``nb_text_distance``
      (1 - best word-overlap Jaccard with a neighbour);
    * findings complexity (:data:`COMPLEXITY_SIGNALS`): words and sentences (log1p), findings the labeler
      finds present, draft words (log1p).

    ``labels`` may pass precomputed labeler output ``{"findings": ..., "draft": ...}``.
    """
    findings = record.get("findings") or ""
    src = labels["findings"] if labels else labeler.label_report(findings)
    out = labels["draft"] if labels else labeler.label_report(draft)
    sig: dict[str, float] = {}
    for obs in TRIAGE_OBSERVATIONS:
        sig[f"omitted:{obs}"] = float(src[obs] in _PRESENT and out[obs] == labeler.ABSENT)
    lab = labeler_checker(record, draft)
    sig["negation_flip"] = float(sum(f["kind"] == "negation_flip" for f in lab))
    sig["not_in_findings"] = float(sum(f["kind"] == "not_in_findings" for f in lab))
    g = graph.compare_to_findings(graph.extract_graph_cached(draft), graph.extract_graph_cached(findings))
    sig["graph_omitted"] = float(len(g["omitted"]))
    sig["graph_negation_flip"] = float(len(g["negation_flips"]))
    sig["graph_not_in_findings"] = float(len(g["hallucinated"]))
    findings_abnormal = any(src[o] in _PRESENT for o in TRIAGE_OBSERVATIONS if o != "Support Devices")
    draft_normal = out["No Finding"] == labeler.POSITIVE
    sig["normal_draft_abnormal_findings"] = float(draft_normal and findings_abnormal)

    similar = [s for s in (record.get("similar_impressions") or []) if isinstance(s, str)]
    if similar:
        nb = [labeler.label_report(s) for s in similar]
        share = {o: sum(n[o] in _PRESENT for n in nb) / len(nb) for o in labeler.OBSERVATIONS}
        missing = [share[o] for o in TRIAGE_OBSERVATIONS if out[o] not in _PRESENT]
        sig["nb_missing"] = float(sum(missing))
        sig["nb_missing_max"] = float(max(missing, default=0.0))
        sig["nb_extra"] = float(sum(1.0 - share[o] for o in TRIAGE_OBSERVATIONS if out[o] == labeler.POSITIVE))
        sig["nb_normal_gap"] = float(abs(float(draft_normal) - share["No Finding"]))
        words = _word_set(draft)
        best = max((len(words & _word_set(s)) / len(words | _word_set(s)) if words | _word_set(s) else 1.0)
                   for s in similar)
        sig["nb_text_distance"] = float(1.0 - best)
    else:
        sig.update(dict.fromkeys(NEIGHBOUR_SIGNALS, 0.0))

    sig["findings_words"] = math.log1p(len(findings.split()))
    sig["findings_sentences"] = math.log1p(len(labeler.split_sentences(findings)))
    sig["findings_present"] = float(sum(src[o] in _PRESENT for o in TRIAGE_OBSERVATIONS))
    sig["draft_words"] = math.log1p(len(draft.split()))
    return sig


def triage_flags(record: Mapping[str, Any], draft: str) -> list[dict[str, Any]]:
    """Every factual flag of ``draft`` against its findings, omissions included (labeler, then entity graph).

    What the review-risk reasons are built from; unlike :func:`default_checkers`, omitted findings
    are always checked, since the risk model weights them by finding.
    """
    return [f for _name, check in default_checkers(include_omissions=True) for f in check(record, draft)]
