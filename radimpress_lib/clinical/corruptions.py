"""Factual corruptions of impressions: labelled, seeded, and how far each metric notices them.

Five corruption types, each a small edit that makes an impression factually wrong while
keeping most of its words:

* ``negation_flip``: one observation changes status: "Small left pleural effusion." ->
  "No small left pleural effusion."; "No pneumothorax." -> "Pneumothorax."; "The heart is
  enlarged." -> "The heart is not enlarged." (findings, devices and the generic "no acute
  abnormality" are flipped; normal descriptors only when nothing else is there).
* ``laterality_swap``: one "left" becomes "right" or vice versa.
* ``dropped_finding``: a sentence asserting a finding is removed; a one-sentence
  impression loses the clause of one finding ("Cardiomegaly with small effusion." ->
  "Cardiomegaly.").
* ``inserted_finding``: a sentence asserting a finding of a group the impression does not
  mention is inserted ("Small right pleural effusion.", "Right lower lobe pneumonia.", ...).
* ``severity_change``: one severity word changes level ("mild" -> "severe", "small" ->
  "large", "mildly" -> "severely").

Entities, statuses and cue words come from :mod:`radimpress_lib.clinical.graph`. A corruption
that does not apply returns ``None`` (counted by the batch functions, never dropped
silently). Everything is deterministic given ``seed``: the random choices of one text use
``random.Random(f"{seed}|{type}|{text}")`` (string seeds are hashed with SHA-512, so runs
and processes agree). Corrupted texts are whitespace-normalised; the batch functions
normalise the reference the same way, so that whitespace never tells chosen from rejected.

:func:`factual_preference_pairs` writes the shared preference-pair format of
:mod:`radimpress_lib.data.preferences` (``pair_type="factual:<type>"``, chosen = reference,
rejected = corrupted). :func:`sensitivity_table` scores references against corrupted
copies of themselves with :mod:`radimpress_lib.evaluation.metrics` and reports how far each metric
drops (paired bootstrap CI of identity minus corrupted).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from radimpress_lib.clinical import graph as G
from radimpress_lib.clinical import graph_lexicon as L
from radimpress_lib.clinical.labeler import normalize_whitespace

__all__ = [
    "CORRUPTION_TYPES",
    "Corruption",
    "corrupt",
    "corrupt_impression",
    "corrupt_many",
]

CORRUPTION_TYPES = ("negation_flip", "laterality_swap", "dropped_finding", "inserted_finding", "severity_change")


#: Sentences asserting one finding each, with the synonym group they assert.
INSERT_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("Small right pleural effusion.", "pleural effusion"),
    ("Small left pleural effusion.", "pleural effusion"),
    ("Right lower lobe pneumonia.", "pneumonia"),
    ("Left lower lobe consolidation.", "consolidation"),
    ("Mild cardiomegaly.", "cardiomegaly"),
    ("Small right apical pneumothorax.", "pneumothorax"),
    ("Mild pulmonary edema.", "edema"),
    ("Bibasilar atelectasis.", "atelectasis"),
    ("Right upper lobe nodule.", "lung lesion"),
    ("Acute fracture of a left rib.", "fracture"),
    ("Patchy right upper lobe opacity.", "lung opacity"),
)

_SEVERITY_WORDS = {
    "minimal": ("minimal", "adj"), "minimally": ("minimal", "adv"), "trace": ("minimal", "adj"),
    "tiny": ("minimal", "adj"), "slight": ("minimal", "adj"), "slightly": ("minimal", "adv"),
    "mild": ("mild", "adj"), "mildly": ("mild", "adv"), "moderate": ("moderate", "adj"),
    "moderately": ("moderate", "adv"), "severe": ("severe", "adj"), "severely": ("severe", "adv"),
    "marked": ("severe", "adj"), "markedly": ("severe", "adv"), "extensive": ("severe", "adj"),
    "small": ("small", "adj"), "large": ("large", "adj"),
}
_ADVERB = {"minimal": "minimally", "mild": "mildly", "moderate": "moderately", "severe": "severely"}
_SEVERITY_RX = re.compile(r"\b(" + "|".join(sorted(_SEVERITY_WORDS, key=len, reverse=True)) + r")\b", re.IGNORECASE)
_SIDE_RX = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_THERE_IS = re.compile(r"\bthere (?:is|are|was|were|has been|have been)\s+(?:(?:a|an|some)\s+)?$", re.IGNORECASE)
_COPULA_END = re.compile(r"\b(?:is|are|was|were|appears?|remains?)\s+(?:(?:again|now|still|also)\s+)?$",
                         re.IGNORECASE)
_ARTICLE = re.compile(r"\b(?:a|an|some)\s+$", re.IGNORECASE)
_NOT_LEADING = {"is", "are", "was", "were", "with", "without", "and", "or", "of", "in", "there", "has", "have", "the",
                "at", "on", "to", "for", "from", "by", "shows", "show", "demonstrates", "seen", "noted", "but"}
_LIST_PREFIX = re.compile(r"^\s*(?:\d{1,2}[.)]\s*)?")
_NP_WORDS = re.compile(r"(?:\b(?:left|right|bilateral|both|sided)\b|[\s-])+$", re.IGNORECASE)
_NEG_REPLACE: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bnegative for\b", re.IGNORECASE), "positive for"),
    (re.compile(r"\bwithout\b", re.IGNORECASE), "with"),
    (re.compile(r"\b(?:free|clear) of\b", re.IGNORECASE), "with"),
    (re.compile(r"\babsence of\b", re.IGNORECASE), "presence of"),
    (re.compile(r"\b(?:resolution|removal|clearing) of\b", re.IGNORECASE), "development of"),
    (re.compile(r"\b(?:has |have )?(?:since )?(?:resolved|cleared|been removed|disappeared)\b", re.IGNORECASE),
     "is present"),
    (re.compile(r"\b(?:is |are )?absent\b", re.IGNORECASE), "is present"),
    (re.compile(r"\bnegative\b", re.IGNORECASE), "positive"),
    (re.compile(r"\bno longer\s+", re.IGNORECASE), ""),
    (re.compile(r"\b(?:no|not|none|nor)\s+", re.IGNORECASE), ""),
)


@dataclass(frozen=True)
class Corruption:
    """One corrupted text: ``type`` (see :data:`CORRUPTION_TYPES`), texts and what changed."""

    type: str
    original: str
    corrupted: str
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def pair_type(self) -> str:
        return f"factual:{self.type}"


def _rng(text: str, kind: str, seed: int) -> random.Random:
    return random.Random(f"{seed}|{kind}|{text}")


def _match_case(template: str, word: str) -> str:
    if word.isupper() and len(word) > 1:
        return template.upper()
    if word[:1].isupper():
        return template[:1].upper() + template[1:]
    return template


def _capitalise_first(sentence: str) -> str:
    m = _LIST_PREFIX.match(sentence)
    k = m.end() if m else 0
    return sentence[:k] + sentence[k:k + 1].upper() + sentence[k + 1:] if k < len(sentence) else sentence


def _join(sentences: Sequence[str]) -> str:
    return " ".join(s for s in sentences if s.strip())


# ---------------------------------------------------------------------------
# The five corruptions
# ---------------------------------------------------------------------------


def _np_start(sentence: str, ent: G.Entity, graph: G.EntityGraph) -> int:
    """Start of the noun phrase of an observation: preceding modifiers, anatomy and side words."""
    spans = [(e.start, e.end) for e in graph.entities if e.sentence == ent.sentence and e.end <= ent.start]
    start = ent.start
    changed = True
    while changed:
        changed = False
        head = sentence[:start]
        m = _NP_WORDS.search(head)
        if m and m.start() < start and head[m.start():].strip():
            start, changed = m.start(), True
            continue
        stripped = head.rstrip()
        for s, e in spans:
            if e == len(stripped) and s < start:
                start, changed = s, True
                break
    while start < len(sentence) and sentence[start] == " ":
        start += 1
    return start


def _negate(sentence: str, ent: G.Entity, graph: G.EntityGraph) -> str:
    start = _np_start(sentence, ent, graph)
    head, tail = sentence[:start], sentence[start:]
    if _THERE_IS.search(head):
        art = _ARTICLE.search(head)
        head = head[: art.start()] if art else head
        return f"{head}no {tail}"
    if _COPULA_END.search(head) and head.strip():
        return f"{head}not {tail}"
    art = _ARTICLE.search(head)
    if art:
        head = head[: art.start()]
    prefix = _LIST_PREFIX.match(head)
    k = prefix.end() if prefix else 0
    if k == len(head):  # the phrase starts the sentence
        return f"{head}No {tail[:1].lower()}{tail[1:]}"
    lead = head[k:].split()
    if len(lead) <= 3 and all(w.isalpha() and w.lower() not in _NOT_LEADING for w in lead):
        # "Stable right upper lobe nodule." -> "No stable right upper lobe nodule."
        return f"{head[:k]}No {head[k:k + 1].lower()}{head[k + 1:]}{tail}"
    return f"{head}no {tail}"


def _affirm(sentence: str, ent: G.Entity) -> str | None:
    """Remove the negation governing ``ent`` (the cue nearest to it)."""
    best: tuple[int, int, int, str] | None = None
    for rx, repl in _NEG_REPLACE:
        for m in rx.finditer(sentence):
            dist = ent.start - m.end() if m.end() <= ent.start else m.start() - ent.end + 1000
            if dist < 0:
                continue
            if best is None or dist < best[0]:
                best = (dist, m.start(), m.end(), repl)
    if best is None:
        return None
    _, start, end, repl = best
    out = re.sub(r"\s{2,}", " ", sentence[:start] + repl + sentence[end:]).strip()
    return _capitalise_first(out) if start <= len(_LIST_PREFIX.match(sentence).group(0)) else out


def _negation_flip(text: str, rng: random.Random) -> Corruption | None:
    graph = G.extract_graph(text)
    obs = [e for e in graph.observations() if e.status in (G.PRESENT, G.ABSENT)]
    pool = [e for e in obs if e.kind != L.NORMAL] or obs
    if not pool:
        return None
    ent = rng.choice(pool)
    sentences = list(graph.sentences)
    sentence = sentences[ent.sentence]
    new = _negate(sentence, ent, graph) if ent.status == G.PRESENT else _affirm(sentence, ent)
    if new is None or new == sentence:
        return None
    sentences[ent.sentence] = new
    to = G.ABSENT if ent.status == G.PRESENT else G.PRESENT
    return Corruption("negation_flip", text, _join(sentences),
                      {"entity": ent.name, "from": ent.status, "to": to, "sentence": ent.sentence})


def _laterality_swap(text: str, rng: random.Random) -> Corruption | None:
    norm = normalize_whitespace(text)
    hits = list(_SIDE_RX.finditer(norm))
    if not hits:
        return None
    m = rng.choice(hits)
    word = m.group(0)
    new = "right" if word.lower() == "left" else "left"
    corrupted = norm[: m.start()] + _match_case(new, word) + norm[m.end():]
    return Corruption("laterality_swap", text, corrupted, {"from": word.lower(), "to": new, "offset": m.start()})


_CLAUSE_SPLIT = re.compile(r"\s*(?:,|;|\bwith\b|\band\b|\bas well as\b)\s*", re.IGNORECASE)


def _dropped_finding(text: str, rng: random.Random) -> Corruption | None:
    graph = G.extract_graph(text)
    asserted = [e for e in graph.observations() if e.kind == L.FINDING and e.status in (G.PRESENT, G.UNCERTAIN_STATUS)]
    if not asserted:
        return None
    ent = rng.choice(asserted)
    sentences = list(graph.sentences)
    if len(sentences) > 1:
        dropped = sentences.pop(ent.sentence)
        return Corruption("dropped_finding", text, _join(sentences),
                          {"entity": ent.name, "dropped": dropped, "sentence": ent.sentence})
    sentence = sentences[0]
    cuts = [(m.start(), m.end()) for m in _CLAUSE_SPLIT.finditer(sentence)]
    if not cuts:
        return None
    bounds = [0] + [c for pair in cuts for c in pair] + [len(sentence)]
    parts = [(bounds[i], bounds[i + 1]) for i in range(0, len(bounds), 2)]
    k = next((i for i, (a, b) in enumerate(parts) if a <= ent.start < b), None)
    if k is None or len(parts) < 2:
        return None
    a, b = parts[k]
    if k == 0:  # drop the first clause and the connector after it
        new = sentence[parts[1][0]:]
        new = _capitalise_first(sentence[: len(_LIST_PREFIX.match(sentence).group(0))] + new)
    else:  # drop the connector before the clause and the clause
        new = sentence[: cuts[k - 1][0]] + sentence[b:]
        if not re.search(r"[.!?]\s*$", new) and re.search(r"[.!?]\s*$", sentence):
            new = new.rstrip() + "."
    new = re.sub(r"\s{2,}", " ", new).strip()
    if not re.search(r"[a-z]", new, re.IGNORECASE) or new == sentence:
        return None
    return Corruption("dropped_finding", text, new, {"entity": ent.name, "dropped": sentence[a:b], "sentence": 0})


def _inserted_finding(text: str, rng: random.Random) -> Corruption | None:
    graph = G.extract_graph(text)
    mentioned = {e.group for e in graph.observations()}
    choices = [(t, g) for t, g in INSERT_TEMPLATES if g not in mentioned]
    if not choices:
        return None
    template, group = rng.choice(choices)
    sentences = list(graph.sentences) or [normalize_whitespace(text)]
    pos = rng.randint(0, len(sentences))
    sentences.insert(pos, template)
    return Corruption("inserted_finding", text, _join(sentences), {"inserted": template, "group": group,
                                                                   "position": pos})


def _severity_change(text: str, rng: random.Random) -> Corruption | None:
    norm = normalize_whitespace(text)
    hits = list(_SEVERITY_RX.finditer(norm))
    if not hits:
        return None
    m = rng.choice(hits)
    word = m.group(0)
    canon, form = _SEVERITY_WORDS[word.lower()]
    options = [o for o in L.SEVERITY_SWAPS[canon] if form == "adj" or o in _ADVERB]
    if not options:
        return None
    new = rng.choice(options)
    new = _ADVERB[new] if form == "adv" else new
    corrupted = norm[: m.start()] + _match_case(new, word) + norm[m.end():]
    return Corruption("severity_change", text, corrupted, {"from": word.lower(), "to": new})


_FUNCS = {
    "negation_flip": _negation_flip,
    "laterality_swap": _laterality_swap,
    "dropped_finding": _dropped_finding,
    "inserted_finding": _inserted_finding,
    "severity_change": _severity_change,
}


def corrupt(text: str, kind: str, seed: int = 0) -> Corruption | None:
    """One corruption of ``text`` of type ``kind``, or ``None`` when it does not apply."""
    if kind not in _FUNCS:
        raise ValueError(f"unknown corruption type {kind!r}; expected one of {CORRUPTION_TYPES}")
    if not isinstance(text, str):
        raise TypeError(f"expected text as str, got {type(text).__name__}")
    if not text.strip():
        return None
    out = _FUNCS[kind](text, _rng(text, kind, seed))
    if out is None or out.corrupted.strip() == normalize_whitespace(text):
        return None
    return out


def corrupt_impression(text: str, rng: random.Random, kinds: Sequence[str] = CORRUPTION_TYPES, *,
                       prefer: Callable[[str], float] | None = None) -> tuple[str, str] | None:
    """One corruption of a kind drawn with ``rng``: ``(corrupted text, kind)``, or None if no kind applies.

    The kinds are tried in an ``rng``-shuffled order, each with a seed drawn from ``rng`` (the
    reward model's factual pairs, :func:`radimpress_lib.train.reward.build_factual_pairs`).
    ``prefer`` reorders them (stable sort on ``prefer(kind)``, lowest first, the shuffle breaking
    ties): e.g. the number of pairs of each kind built so far, so the rarely applicable kinds are
    taken wherever they apply.
    """
    order = list(kinds)
    rng.shuffle(order)
    if prefer is not None:
        order.sort(key=prefer)
    seed = rng.randrange(2**31)
    for kind in order:
        c = corrupt(text, kind, seed)
        if c is not None:
            return c.corrupted, kind
    return None


def corrupt_many(texts: Sequence[str], kinds: Sequence[str] = CORRUPTION_TYPES, seed: int = 0
                 ) -> tuple[dict[str, list[Corruption | None]], dict[str, int]]:
    """Every kind over every text: ``({kind: [Corruption | None per text]}, {kind: n not applicable})``."""
    out: dict[str, list[Corruption | None]] = {}
    skipped: dict[str, int] = {}
    for kind in kinds:
        out[kind] = []
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text #{i}: expected str, got {type(t).__name__}")
            out[kind].append(corrupt(t, kind, seed))
        skipped[kind] = sum(c is None for c in out[kind])
    return out, skipped


# ---------------------------------------------------------------------------
# Preference pairs
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Corruption sensitivity of the metrics
# ---------------------------------------------------------------------------


