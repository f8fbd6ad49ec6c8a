"""Entity graph of a chest X-ray findings or impression text (RadGraph-style, rule based, offline).

A text becomes a graph of **entities** and **relations** in the spirit of RadGraph
(Jain et al., NeurIPS Datasets & Benchmarks 2021):

* ``anatomy`` entities ("lung", "lower lobe", "heart", "pleura", ...);
* ``observation`` entities with a **status** ``present`` / ``absent`` / ``uncertain``
  (RadGraph's OBS-DP / OBS-DA / OBS-U) and a ``kind`` (``finding``, ``device``,
  ``normal`` descriptor, ``generic`` "abnormality"), see :mod:`radimpress_lib.clinical.graph_lexicon`;
* ``modifier`` entities (severity "mild", "small", "large", ...; "focal", "acute",
  "calcified", ...), which RadGraph folds into observations;
* a **laterality** (``left`` / ``right`` / ``bilateral``) on anatomy and observations;
* relations ``located_at`` (observation -> anatomy), ``modify`` (modifier ->
  observation) and ``suggestive_of`` (observation -> observation, "opacity suggestive of
  pneumonia", "opacity, likely atelectasis").

Entities carry canonical lexicon names ("effusions" and "pleural fluid" are ``effusion``;
"the heart is enlarged" is ``cardiomegaly`` located at ``heart``), so graphs of different
texts can be compared (:func:`graph_scores`, :func:`compare_to_findings`).

How a sentence is read (:func:`extract_sentence`)
-------------------------------------------------
1. Sentences come from :func:`radimpress_lib.clinical.labeler.split_sentences`; each is prepared
   (lower-cased, hyphens/slashes as spaces) as the labeler does.
2. Lexicon terms are matched, longest match first, without overlaps; the sentence becomes
   a sequence of units (entity, laterality word, other word, punctuation). A *phrase* is a
   maximal run of adjacent entities and laterality words.
3. Inside a phrase: a laterality word applies to the entities after it ("left lower lobe
   opacity"), "bilaterally" to those before it; a modifier modifies the next observation
   ("small left pleural effusion"); anatomy before an observation is its location
   ("pleural effusion", "bibasilar atelectasis"), anatomy after the last observation too
   ("enlarged heart", "clear lungs").
4. Across phrases: an observation followed by a prepositional phrase ("opacity in the left
   lower lobe", "degenerative changes of the thoracic spine") is located at its anatomy;
   a subject of coordinated anatomy followed by a predicate ("heart and mediastinum are
   normal", "the lungs are clear and expanded") locates every predicate observation that
   has no anatomy of its own at the subject's anatomies (not at "of the X" complements).
   ``suggestive_of`` links the observation before a cue ("suggestive of", "consistent
   with", "likely", "may represent", ...) to those right after it.
5. **Status** uses the labeler's NegEx-style cue scopes (imported from
   :mod:`radimpress_lib.clinical.labeler`, not copied): nearest pre-cue in scope, else post-cue,
   relational "suggest" cues inheriting a governing negation, "X or Y" differentials
   uncertain. A predicate is only governed by cues after its subject ("no effusion, heart
   is enlarged"). "Borderline" heart size is an ``uncertain`` cardiomegaly.
6. Observations without laterality inherit it from their anatomy; generic descriptors are
   renamed by their anatomy ("enlarged" at the heart is ``cardiomegaly``).

Why our own scope handling: the labeler's docstring explains why medspacy (ConText forces
numpy < 2) and negspacy (spaCy plus a dozen packages, negation only) are not used; the
graph reuses the labeler's validated cue lexicon and scope rules instead of a second set.

Validation: ``tests/graph_gold.py`` holds hand-annotated Open-i train sentences (as
references, never text); ``tests/test_graph.py`` reports entity and relation F1 on them.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from radimpress_lib.clinical import graph_lexicon as L

# the labeler's cue scopes, shared rather than duplicated
from radimpress_lib.clinical.labeler import (
    NEGATIVE,
    POSITIVE,
    UNCERTAIN,
    _Cue,
    _find_cues,
    _FoundCue,
    _in_differential,
    _prepare,
    _resolve,
    split_sentences,
)

__all__ = [
    "ABSENT",
    "GRAPH_TABLE_METRICS",
    "PRESENT",
    "RELATIONS",
    "UNCERTAIN_STATUS",
    "Entity",
    "EntityGraph",
    "Relation",
    "compare_to_findings",
    "entity_key",
    "extract_graph",
    "extract_graph_cached",
    "extract_graphs",
    "extract_sentence",
    "graph_facts",
    "graph_scores",
    "linearize_graph",
    "set_f1",
    "with_findings_graph",
]

PRESENT, ABSENT, UNCERTAIN_STATUS = "present", "absent", "uncertain"
_FROM_LABELER = {POSITIVE: PRESENT, NEGATIVE: ABSENT, UNCERTAIN: UNCERTAIN_STATUS}
LOCATED_AT, MODIFY, SUGGESTIVE_OF = "located_at", "modify", "suggestive_of"
RELATIONS = (LOCATED_AT, MODIFY, SUGGESTIVE_OF)

#: Graph metrics for the evaluation table of notebook 05 (see :mod:`radimpress_lib.evaluation.metrics`).
GRAPH_TABLE_METRICS = ("rougeL", "label_f1_micro", "graph_entity_f1", "graph_f1", "negation_flip_rate",
                       "hallucinated_finding_rate", "omitted_finding_rate")


@dataclass(frozen=True)
class Entity:
    """One entity; ``start``/``end`` are character offsets into sentence number ``sentence``."""

    id: int
    type: str  # anatomy | observation | modifier
    name: str
    status: str | None = None  # observations: present | absent | uncertain
    laterality: str | None = None  # left | right | bilateral
    kind: str | None = None  # observations: finding | device | normal | generic
    group: str | None = None  # observations: synonym group
    text: str = ""
    sentence: int = 0
    start: int = 0
    end: int = 0
    cue: str = ""  # the cue that set the status ("" when none did)

    def key(self) -> tuple[str, str, str | None, str | None]:
        return entity_key(self.type, self.name, self.status, self.laterality)


@dataclass(frozen=True)
class Relation:
    """``src -rel-> dst`` between entity ids."""

    src: int
    rel: str
    dst: int


@dataclass
class EntityGraph:
    """Entities and relations of one text (sentence order)."""

    entities: list[Entity] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)
    sentences: list[str] = field(default_factory=list)

    def by_id(self) -> dict[int, Entity]:
        return {e.id: e for e in self.entities}

    def observations(self) -> list[Entity]:
        return [e for e in self.entities if e.type == L.OBSERVATION]

    def to_dict(self) -> dict[str, Any]:
        return {"entities": [asdict(e) for e in self.entities], "relations": [asdict(r) for r in self.relations],
                "sentences": list(self.sentences)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EntityGraph:
        return cls([Entity(**e) for e in data.get("entities", [])],
                   [Relation(**r) for r in data.get("relations", [])], list(data.get("sentences", [])))


def entity_key(type_: str, name: str, status: str | None = None, laterality: str | None = None
               ) -> tuple[str, str, str | None, str | None]:
    """Match key of an entity: (type, name, status, laterality); modifiers match by name only."""
    if type_ == L.MODIFIER:
        return (type_, name, None, None)
    return (type_, name, status if type_ == L.OBSERVATION else None, laterality)


# ---------------------------------------------------------------------------
# Units of a sentence
# ---------------------------------------------------------------------------

_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
_LAT_WORDS = {**L.LATERALITY_PRE, **L.LATERALITY_POST}
_NP_GLUE = {"sided", "side", "biventricular", "dual", "single", "chamber", "lead"}
_PREPOSITIONS = {"in", "of", "at", "within", "involving", "along", "over", "overlying", "projecting", "throughout",
                 "through", "near", "adjacent", "on", "into", "around", "from", "to", "behind", "above", "below",
                 "beneath", "across", "about"}
_PREP_FILLER = _PREPOSITIONS | {"the", "a", "an", "level", "region", "regions", "aspect", "portion", "posterior",
                                "anterior", "lateral", "medial", "inferior", "superior", "mid", "distal", "proximal",
                                "xxxx", "segment", "area", "areas", "zone", "each", "this", "these", "projection",
                                "periphery", "peripheral", "tip", "seen", "noted", "identified", "present", "is", "are",
                                "terminates", "terminating", "projects", "extends", "extending", "overlies", "ends",
                                "positioned", "located"}
_COORD = {"and", ",", "the", "xxxx", "or"}
_COPULA = {"is", "are", "was", "were", "appear", "appears", "appearing", "remain", "remains", "has", "have", "been",
           "be", "again", "otherwise", "grossly", "overall", "now", "also", "demonstrate", "demonstrates", "show",
           "shows", "without", "not", "no", "both", "each", "still", "essentially", "largely", "generally",
           "relatively", "stable", "stably", "appeared", "look", "looks", "within", "of", "xxxx", "there", "and",
           "significantly", "definitely", "normally", "well", "clearly", "currently", "entirely"}
_PRED_FILLER = {"and", "or", ",", "in", "size", "contour", "contours", "configuration", "appearance", "of", "no",
                "without", "are", "is", "the", "for", "age", "shape", "position", "caliber", "any", "evidence",
                "xxxx"}
_SUGGEST = re.compile(
    r"\b(?:suggest(?:s|ed|ing|ive)?(?: of)?|to suggest|consistent with|compatible with|represent(?:s|ing)?"
    r"|(?:may|might|could) (?:represent|reflect|be)|reflect(?:s|ing)?|likely(?: represents?| representing"
    r"| reflecting| reflects)?|concerning for|suspicious (?:for|of)|worrisome for|possibly|probably|most xxxx"
    r"|most likely|which (?:may|could|likely) (?:represent|reflect|be))\b")
_SENTENCE_STOP = re.compile(r"[.;:]")
_TERMINATOR = re.compile(r"\b(?:but|however|although|though|except|whereas|while|with|aside from|apart from|"
                         r"other than|besides|otherwise|there (?:is|are|was|were)|and (?:the|there|a|an))\b|[;:]")


@dataclass
class _Ent:
    type: str
    name: str
    start: int
    end: int
    kind: str | None = None
    group: str | None = None
    laterality: str | None = None
    status: str | None = None
    cue: str = ""
    lower_bound: int = 0


@dataclass
class _Unit:
    kind: str  # ent | lat | word | punct
    start: int
    end: int
    text: str = ""
    ent: _Ent | None = None


def _match_terms(text: str) -> list[_Ent]:
    hits: list[tuple[int, int, int, L.Term]] = []
    for order, (rx, term) in enumerate(L.compiled_terms()):
        for m in rx.finditer(text):
            if m.end() > m.start():
                hits.append((m.start(), m.end(), order, term))
    hits.sort(key=lambda h: (-(h[1] - h[0]), h[0], h[2]))
    taken: list[tuple[int, int]] = []
    out: list[_Ent] = []
    for s, e, _, term in hits:
        if any(s < te and ts < e for ts, te in taken):
            continue
        taken.append((s, e))
        out.append(_Ent(term.type, term.name, s, e, term.kind, term.group, term.laterality))
    out.sort(key=lambda x: x.start)
    return out


def _units(text: str, ents: list[_Ent]) -> list[_Unit]:
    by_start = {e.start: e for e in ents}
    units: list[_Unit] = []
    pos_end = -1
    for m in _TOKEN.finditer(text):
        if m.start() < pos_end:
            continue
        ent = by_start.get(m.start())
        if ent is not None:
            units.append(_Unit("ent", ent.start, ent.end, text[ent.start:ent.end], ent))
            pos_end = ent.end
            continue
        if any(e.start <= m.start() < e.end for e in ents):
            continue
        tok = m.group(0)
        if tok in _LAT_WORDS:
            units.append(_Unit("lat", m.start(), m.end(), tok))
        elif tok.isalnum():
            units.append(_Unit("word", m.start(), m.end(), tok))
        else:
            units.append(_Unit("punct", m.start(), m.end(), tok))
    return units


def _phrases(units: list[_Unit]) -> list[tuple[int, int]]:
    """Index ranges [a, b) of maximal runs of entities / laterality words (glue words allowed inside)."""
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(units):
        if units[i].kind in ("ent", "lat"):
            j = i + 1
            while j < len(units):
                if units[j].kind in ("ent", "lat"):
                    j += 1
                    continue
                k = j
                while k < len(units) and units[k].kind == "word" and units[k].text in _NP_GLUE:
                    k += 1
                if k > j and k < len(units) and units[k].kind in ("ent", "lat"):
                    j = k
                    continue
                break
            out.append((i, j))
            i = j
        else:
            i += 1
    return out


# ---------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------


def _phrase_rules(units: list[_Unit], a: int, b: int, links: set[tuple[int, str, int]], ents: list[_Ent]) -> None:
    idx = {id(e): k for k, e in enumerate(ents)}
    members = units[a:b]
    # Laterality
    current: str | None = None
    for u in members:
        if u.kind == "lat" and u.text in L.LATERALITY_PRE:
            current = L.LATERALITY_PRE[u.text]
        elif u.kind == "lat" and u.text in L.LATERALITY_POST:
            for v in members:
                if v.start >= u.start:
                    break
                if v.kind == "ent" and v.ent.type != L.MODIFIER and v.ent.laterality is None:
                    v.ent.laterality = L.LATERALITY_POST[u.text]
        elif u.kind == "ent":
            if u.ent.laterality is not None and u.ent.type == L.ANATOMY:
                current = current or u.ent.laterality
            if current is not None and u.ent.type != L.MODIFIER and u.ent.laterality is None:
                u.ent.laterality = current
    seq = [u.ent for u in members if u.kind == "ent"]
    # "borderline cardiomegaly": an observation-as-modifier followed by an observation
    for k, e in enumerate(seq):
        if e.type == L.OBSERVATION and e.name in L.OBSERVATION_AS_MODIFIER and any(
                x.type == L.OBSERVATION for x in seq[k + 1:]):
            e.type, e.kind, e.group = L.MODIFIER, None, None
    # Modifiers
    for k, e in enumerate(seq):
        if e.type != L.MODIFIER:
            continue
        target = next((x for x in seq[k + 1:] if x.type == L.OBSERVATION), None)
        if target is not None:
            links.add((idx[id(e)], MODIFY, idx[id(target)]))
        elif e.name in L.MODIFIER_AS_OBSERVATION:
            e.type, e.name = L.OBSERVATION, L.MODIFIER_AS_OBSERVATION[e.name]
            e.kind, e.group = L.FINDING, L.group_of(e.name)
    # Anatomy inside the phrase
    obs_pos = [k for k, e in enumerate(seq) if e.type == L.OBSERVATION]
    for k, e in enumerate(seq):
        if e.type != L.ANATOMY or not obs_pos:
            continue
        after = [p for p in obs_pos if p > k]
        target = seq[after[0]] if after else seq[obs_pos[-1]]
        links.add((idx[id(target)], LOCATED_AT, idx[id(e)]))


def _words_only(units: list[_Unit], allowed: set[str], limit: int) -> bool:
    words = [u for u in units if u.kind in ("word", "punct")]
    return len(words) <= limit and all(u.text in allowed for u in words)


def _anatomy_head(members: list[_Unit]) -> list[_Ent]:
    """Anatomy of a phrase that precedes its first observation."""
    out: list[_Ent] = []
    for u in members:
        if u.kind != "ent":
            continue
        if u.ent.type == L.OBSERVATION:
            break
        if u.ent.type == L.ANATOMY:
            out.append(u.ent)
    return out


def _has_obs(members: list[_Unit]) -> bool:
    return any(u.kind == "ent" and u.ent.type == L.OBSERVATION for u in members)


def _cross_phrase_rules(text: str, units: list[_Unit], phrases: list[tuple[int, int]],
                        links: set[tuple[int, str, int]], ents: list[_Ent]) -> None:
    idx = {id(e): k for k, e in enumerate(ents)}
    located = {s for s, r, _ in links if r == LOCATED_AT}
    # Prepositional attachment: observation + (prep words) + anatomy phrase (+ "and" anatomy phrases)
    for p, (a, b) in enumerate(phrases):
        members = units[a:b]
        obs = [u.ent for u in members if u.kind == "ent" and u.ent.type == L.OBSERVATION]
        if not obs or p + 1 >= len(phrases):
            continue
        target = obs[-1]
        na = phrases[p + 1][0]
        gap = units[b:na]
        gap_words = [u.text for u in gap]
        if not gap_words or not _words_only(gap, _PREP_FILLER, 6) or not any(w in _PREPOSITIONS for w in gap_words):
            continue
        q = p + 1
        while q < len(phrases):
            qa, qb = phrases[q]
            heads = _anatomy_head(units[qa:qb])
            if not heads or (q > p + 1 and _has_obs(units[qa:qb])):
                break
            for h in heads:
                links.add((idx[id(target)], LOCATED_AT, idx[id(h)]))
            located.add(idx[id(target)])
            if _has_obs(units[qa:qb]) or q + 1 >= len(phrases):
                break
            nxt = phrases[q + 1][0]
            if not _words_only(units[qb:nxt], {"and", ",", "or", "the"}, 2) or not units[qb:nxt]:
                break
            q += 1
    # Subject (coordinated anatomy) + copula + predicate observations
    p = 0
    while p < len(phrases):
        a, b = phrases[p]
        members = units[a:b]
        if _has_obs(members) or not _anatomy_head(members):
            p += 1
            continue
        before = [u for u in units[:a] if u.kind in ("word", "punct")][-2:]
        if before and (before[-1].text in _PREPOSITIONS or (
                len(before) == 2 and before[-1].text == "the" and before[-2].text in _PREPOSITIONS)):
            p += 1
            continue
        subject = _anatomy_head(members)
        subject_start = members[0].start
        q = p
        while q + 1 < len(phrases):  # coordination and "of the X" complements
            qa, qb = phrases[q + 1]
            gap = units[phrases[q][1]:qa]
            if not _anatomy_head(units[qa:qb]) or units[qa].kind != "ent" or units[qa].ent.type != L.ANATOMY:
                break
            gap_words = [u.text for u in gap]
            if _has_obs(units[qa:qb]):
                # last conjunct carries the predicate: "heart and mediastinum normal"
                if gap_words and _words_only(gap, _COORD, 3):
                    tail = [u.ent for u in units[qa:qb] if u.kind == "ent" and u.ent.type == L.OBSERVATION]
                    for o in tail:
                        if o.kind == L.NORMAL or o.name in ("enlarged", "borderline"):
                            for s in subject:
                                links.add((idx[id(o)], LOCATED_AT, idx[id(s)]))
                break
            if gap_words and _words_only(gap, _COORD, 3):
                subject += _anatomy_head(units[qa:qb])
            elif gap_words and _words_only(gap, {"of", "the", "in", "at"}, 2):
                pass  # complement: not part of the subject
            else:
                break
            q += 1
        if q + 1 >= len(phrases):
            break
        pa = phrases[q + 1][0]
        gap = units[phrases[q][1]:pa]
        if not _words_only(gap, _COPULA, 6) or _TERMINATOR.search(text, units[phrases[q][1] - 1].end, units[pa].start):
            p = q + 1
            continue
        copula = bool(gap)
        r = q + 1
        while r < len(phrases):
            ra, rb = phrases[r]
            if r > q + 1:
                prev_end = phrases[r - 1][1]
                between = units[prev_end:ra]
                if not _words_only(between, _PRED_FILLER, 3) or _TERMINATOR.search(
                        text, units[prev_end - 1].end, units[ra].start):
                    break
            if not _has_obs(units[ra:rb]):
                break
            for u in units[ra:rb]:
                if u.kind == "ent" and u.ent.type == L.OBSERVATION and idx[id(u.ent)] not in located:
                    own_anat = any(v.kind == "ent" and v.ent.type == L.ANATOMY for v in units[ra:rb])
                    if own_anat and r > q + 1:
                        continue
                    for s in subject:
                        links.add((idx[id(u.ent)], LOCATED_AT, idx[id(s)]))
                    if copula or u.ent.kind == L.NORMAL:
                        u.ent.lower_bound = subject_start
            r += 1
        p = max(r, p + 1)
    # suggestive_of
    for m in _SUGGEST.finditer(text):
        obs = [e for e in ents if e.type == L.OBSERVATION]
        before = [e for e in obs if e.end <= m.start() and not _SENTENCE_STOP.search(text, e.end, m.start())]
        after = [e for e in obs if e.start >= m.end()]
        if not before or not after:
            continue
        src = max(before, key=lambda e: e.end)
        first = min(after, key=lambda e: e.start)
        if _gap_words(text, ents, m.end(), first.start) > 3:
            continue
        targets = [first]
        for e in sorted(after, key=lambda e: e.start):
            if e.start <= targets[-1].start:
                continue
            between = _gap_word_list(text, ents, targets[-1].end, e.start)
            if all(w in {"or", "and", ",", "versus", "vs"} for w in between) and len(between) <= 2:
                targets.append(e)
            else:
                break
        for t in targets:
            if t is not src:
                links.add((idx[id(src)], SUGGESTIVE_OF, idx[id(t)]))


def _gap_word_list(text: str, ents: list[_Ent], a: int, b: int) -> list[str]:
    out = []
    for m in _TOKEN.finditer(text, a, b):
        if any(e.start <= m.start() < e.end for e in ents) or m.group(0) in _LAT_WORDS:
            continue
        out.append(m.group(0))
    return out


def _gap_words(text: str, ents: list[_Ent], a: int, b: int) -> int:
    return sum(1 for w in _gap_word_list(text, ents, a, b) if w.isalnum())


# Uncertainty cues the labeler lacks (kept here so the labeler's validated behaviour is unchanged).
_EXTRA_CUES = [(re.compile(r"\bconsiderations?(?: (?:would|could|may))?(?: include)?\b"), _Cue("unc", "pre", 10))]


def _statuses(sentence: str, text: str, ents: list[_Ent]) -> None:
    obs_spans = [(e.start, e.end) for e in ents if e.type == L.OBSERVATION]
    inside = [(e.start, e.end) for e in ents if e.type == L.OBSERVATION and e.kind != L.GENERIC]
    # A cue lying inside an observation ("clear" of "lungs are clear") is not a cue; a longer one is ("clear of").
    cues = [c for c in _find_cues(text, []) if not any(s <= c.start and c.end <= e for s, e in inside)]
    for rx, cue in _EXTRA_CUES:
        cues += [_FoundCue(m.start(), m.end(), m.group(0), cue) for m in rx.finditer(text)]
    obs = sorted((e for e in ents if e.type == L.OBSERVATION), key=lambda e: e.start)
    slashed = set()  # "atelectasis/scarring": a differential
    for x, y in itertools.pairwise(obs):
        if sentence[x.end:y.start].strip() == "/":
            slashed.update((id(x), id(y)))
    all_spans = [(e.start, e.end) for e in ents]
    for e in ents:
        if e.type != L.OBSERVATION:
            continue
        others = [s for s in all_spans if s != (e.start, e.end)]
        status, cue = _resolve(text, cues, e.start, e.end, others, lower_bound=e.lower_bound)
        if status == POSITIVE and _in_differential(text, e.start, e.end, [s for s in obs_spans if s != (e.start,
                                                                                                        e.end)]):
            status, cue = UNCERTAIN, "differential"
        if status == POSITIVE and id(e) in slashed:
            status, cue = UNCERTAIN, "/"
        e.status, e.cue = _FROM_LABELER[status], cue


def extract_sentence(sentence: str, sentence_no: int = 0, first_id: int = 0) -> tuple[list[Entity], list[Relation]]:
    """Entities and relations of one sentence (ids from ``first_id``)."""
    if not isinstance(sentence, str):
        raise TypeError(f"expected a sentence as str, got {type(sentence).__name__}")
    text = _prepare(sentence)
    ents = _match_terms(text)
    units = _units(text, ents)
    phrases = _phrases(units)
    links: set[tuple[int, str, int]] = set()
    for a, b in phrases:
        _phrase_rules(units, a, b, links, ents)
    # Modifiers that modify nothing are not kept.
    modified = {s for s, r, _ in links if r == MODIFY}
    keep = [k for k, e in enumerate(ents) if e.type != L.MODIFIER or k in modified]
    _cross_phrase_rules(text, units, phrases, links, ents)
    _statuses(sentence, text, ents)
    # Rename generic descriptors by anatomy; inherit laterality from anatomy.
    located: dict[int, list[int]] = {}
    for s, r, d in sorted(links):
        if r == LOCATED_AT:
            located.setdefault(s, []).append(d)
    for k, e in enumerate(ents):
        if e.type != L.OBSERVATION:
            continue
        anats = [ents[d] for d in located.get(k, [])]
        for an in anats:
            spec = L.ANATOMY_SPECIFIC.get((e.name, an.name))
            if spec is not None:
                if e.name == "borderline" and e.status == PRESENT:
                    e.status = UNCERTAIN_STATUS
                e.name, e.group = spec
                break
        if e.name == "borderline" and e.status == PRESENT:
            e.status = UNCERTAIN_STATUS
        sides = {an.laterality for an in anats if an.laterality}
        if e.laterality is None and len(sides) == 1:
            e.laterality = sides.pop()
    new_id = {k: first_id + n for n, k in enumerate(keep)}
    entities = [Entity(new_id[k], ents[k].type, ents[k].name, ents[k].status, ents[k].laterality, ents[k].kind,
                       ents[k].group, sentence[ents[k].start:ents[k].end], sentence_no, ents[k].start, ents[k].end,
                       ents[k].cue) for k in keep]
    relations = [Relation(new_id[s], r, new_id[d]) for s, r, d in sorted(links) if s in new_id and d in new_id]
    return entities, relations


def extract_graph(text: str) -> EntityGraph:
    """Entity graph of a findings or impression text (sentences from the labeler's splitter)."""
    if not isinstance(text, str):
        raise TypeError(f"expected report text as str, got {type(text).__name__}")
    graph = EntityGraph(sentences=split_sentences(text))
    for n, sentence in enumerate(graph.sentences):
        ents, rels = extract_sentence(sentence, n, first_id=len(graph.entities))
        graph.entities.extend(ents)
        graph.relations.extend(rels)
    return graph


@lru_cache(maxsize=8192)
def extract_graph_cached(text: str) -> EntityGraph:
    """:func:`extract_graph` memoised by text (treat the result as read-only)."""
    return extract_graph(text)


def extract_graphs(texts: Sequence[str]) -> list[EntityGraph]:
    """:func:`extract_graph` over many texts; errors name the offending index."""
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text #{i}: expected str, got {type(t).__name__}")
        out.append(extract_graph(t))
    return out


# ---------------------------------------------------------------------------
# Graph F1
# ---------------------------------------------------------------------------


def graph_facts(graph: EntityGraph | tuple[Iterable[Entity], Iterable[Relation]]) -> tuple[set, set]:
    """(entity keys of anatomy and observations, relation keys ``(src key, rel, dst key)``)."""
    if isinstance(graph, EntityGraph):
        entities, relations = graph.entities, graph.relations
    else:
        entities, relations = graph
    entities = list(entities)
    by_id = {e.id: e for e in entities}
    ents = {e.key() for e in entities if e.type != L.MODIFIER}
    rels = {(by_id[r.src].key(), r.rel, by_id[r.dst].key()) for r in relations}
    return ents, rels


def set_f1(pred: set, ref: set) -> tuple[float, int, int, int]:
    """(F1, tp, fp, fn) of two sets; F1 is 1.0 when both are empty."""
    tp = len(pred & ref)
    fp, fn = len(pred) - tp, len(ref) - tp
    f1 = 1.0 if not pred and not ref else 2 * tp / (2 * tp + fp + fn)
    return f1, tp, fp, fn


def graph_scores(pred: EntityGraph, ref: EntityGraph) -> dict[str, float]:
    """RadGraph-F1-style agreement of two graphs (0-1).

    ``entity_f1``: F1 of the entity keys (type, name, status, laterality);
    ``relation_f1``: F1 of the relation keys; ``graph_f1``: F1 of entities and relations
    together (each fact counted once). Two empty graphs score 1.
    """
    pe, pr = graph_facts(pred)
    re_, rr = graph_facts(ref)
    return {
        "entity_f1": set_f1(pe, re_)[0],
        "relation_f1": set_f1(pr, rr)[0],
        "graph_f1": set_f1(pe | {("rel",) + r for r in pr}, re_ | {("rel",) + r for r in rr})[0],
    }


# ---------------------------------------------------------------------------
# Impression vs findings
# ---------------------------------------------------------------------------

_ASSERTED = (L.FINDING, L.DEVICE)


def _group_statuses(graph: EntityGraph) -> dict[str, set[str]]:
    by_id = graph.by_id()
    out: dict[str, set[str]] = {}
    for e in graph.observations():
        if e.kind in _ASSERTED:
            out.setdefault(e.group or e.name, set()).add(e.status or PRESENT)
    for r in graph.relations:  # normal descriptors imply absences ("heart size is normal")
        src, dst = by_id[r.src], by_id[r.dst]
        if r.rel == LOCATED_AT and src.kind == L.NORMAL and src.status == PRESENT:
            for g in L.NORMAL_IMPLIES_ABSENT.get(dst.name, ()):
                out.setdefault(g, set()).add(ABSENT)
    return out


def compare_to_findings(impression: EntityGraph, findings: EntityGraph) -> dict[str, Any]:
    """Hallucinations, negation flips and omissions of an impression against its findings.

    Observations are compared by synonym group (``effusion`` and ``pleural fluid`` alike;
    findings and devices only; normal descriptors and generic "abnormality" are not
    claims of their own, but "heart size is normal" implies an absent cardiomegaly):

    * ``hallucinated``: groups the impression asserts ``present`` that the findings do not
      mention at all;
    * ``negation_flips``: groups with the opposite status: ``present`` in the impression
      where the findings only say ``absent``, or ``absent`` where they only say ``present``;
    * ``omitted``: significant groups (``graph_lexicon.SIGNIFICANT_GROUPS``) present in the
      findings that the impression does not mention with any status.
    """
    imp, fnd = _group_statuses(impression), _group_statuses(findings)
    hallucinated, flips, omitted = [], [], []
    for g, sts in sorted(imp.items()):
        f = fnd.get(g, set())
        if PRESENT in sts and not f:
            hallucinated.append(g)
        if (PRESENT in sts and f == {ABSENT}) or (ABSENT in sts and PRESENT not in sts and UNCERTAIN_STATUS not in sts
                                                  and f == {PRESENT}):
            flips.append(g)
    for g, sts in sorted(fnd.items()):
        if g in L.SIGNIFICANT_GROUPS and PRESENT in sts and g not in imp:
            omitted.append(g)
    return {"hallucinated": hallucinated, "negation_flips": flips, "omitted": omitted}


# ---------------------------------------------------------------------------
# Linearisation (graph-as-text prompt variant)
# ---------------------------------------------------------------------------


def linearize_graph(graph: EntityGraph, *, include_normal: bool = False, max_items: int | None = None) -> str:
    """One line per observation, e.g. ``effusion [present; left; small] at pleura (left)``.

    Devices and findings are listed; normal descriptors only with ``include_normal``;
    ``suggestive_of`` targets follow ``-> suggests``. Duplicates are listed once. Returns
    ``"no findings extracted"`` for an empty list.
    """
    by_id = graph.by_id()
    mods: dict[int, list[str]] = {}
    locs: dict[int, list[str]] = {}
    sugg: dict[int, list[str]] = {}
    for r in graph.relations:
        if r.rel == MODIFY:
            mods.setdefault(r.dst, []).append(by_id[r.src].name)
        elif r.rel == LOCATED_AT:
            a = by_id[r.dst]
            locs.setdefault(r.src, []).append(a.name + (f" ({a.laterality})" if a.laterality else ""))
        elif r.rel == SUGGESTIVE_OF:
            sugg.setdefault(r.src, []).append(by_id[r.dst].name)
    lines: list[str] = []
    for e in graph.observations():
        if e.kind == L.NORMAL and not include_normal:
            continue
        attrs = [e.status or PRESENT] + ([e.laterality] if e.laterality else []) + mods.get(e.id, [])
        line = f"{e.name} [{'; '.join(attrs)}]"
        if locs.get(e.id):
            line += " at " + ", ".join(locs[e.id])
        if sugg.get(e.id):
            line += " -> suggests " + ", ".join(sugg[e.id])
        if line not in lines:
            lines.append(line)
    if max_items is not None:
        lines = lines[:max_items]
    return "\n".join(lines) if lines else "no findings extracted"


def with_findings_graph(records: Iterable[Mapping[str, Any]], *, include_normal: bool = False,
                        max_items: int | None = None) -> list[dict[str, Any]]:
    """``records`` as dicts, each with ``findings_graph``: its findings' graph linearised as text.

    The prompt slot of the graph-as-text variant (:func:`radimpress_lib.llm.prompting.build_messages`
    shows it after the findings); see :func:`linearize_graph` for the format.
    """
    rows = [dict(r) for r in records]
    for row in rows:
        findings = row.get("findings")
        if not isinstance(findings, str):
            raise ValueError(f"report_id={row.get('report_id')!r}: field 'findings' must be a string, "
                             f"got {type(findings).__name__}")
        row["findings_graph"] = linearize_graph(extract_graph_cached(findings), include_normal=include_normal,
                                                max_items=max_items)
    return rows
