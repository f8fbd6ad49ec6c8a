"""Rule-based CheXpert-style labeler for chest X-ray report text.

It assigns each of the 14 CheXpert observations one of four statuses:
``positive``, ``negative``, ``uncertain`` or ``absent`` (not mentioned), first
per sentence (:func:`label_sentence`) and then per report
(:func:`label_report`), using the CheXpert aggregation rules
(Irvin et al., AAAI 2019; github.com/stanfordmlgroup/chexpert-labeler):

* a report-level status is the "strongest" sentence-level status:
  positive > uncertain > negative > absent (CheXpert: 1 beats u beats 0);
* report-level **No Finding** is ``positive`` when no other observation except
  Support Devices is positive or uncertain, else ``absent`` (CheXpert leaves it
  blank). The original CheXpert labeler also blanks No Finding for a list of
  non-CheXpert abnormalities (emphysema, granuloma, scoliosis, ...); this labeler
  deliberately does not, so that Open-i impressions such as "Degenerative
  changes of the spine. No acute cardiopulmonary abnormality." count as normal.

At the **sentence** level No Finding is only ever an explicit statement of a
normal study ("No acute cardiopulmonary abnormality", "No active disease",
"Normal chest", "Negative for acute abnormality"), which is ``positive``.

Why hand-written rules rather than a library
--------------------------------------------
``medspacy`` (ConText) would force numpy < 2 into an environment pinned to
numpy 2.x; ``negspacy`` pulls in spaCy 3.8 plus a dozen packages, handles only
negation (no uncertainty) and still needs an entity pipeline built around it;
the CheXpert/NegBio labeler needs a constituency parser and Python-2-era
tooling. The rules below are NegEx-style (Chapman et al., 2001), dependency
free, fast (< 1 ms a sentence) and validated against hand labels of Open-i
training sentences (``tests/labeler_gold.py``).

How a sentence is labelled
--------------------------
1. The sentence is lower-cased and hyphens and slashes are read as spaces
   (offsets kept). De-identification tokens ``XXXX`` are ordinary unknown
   words; only ``most XXXX`` / ``is more XXXX`` (Open-i's scrubbed "most
   likely") are read as uncertainty cues, and "no acute thoracic XXXX" as a
   normal-study statement.
2. **Mentions** are found with per-observation lexicons adapted from the
   CheXpert mention/unmention phrase lists, with these documented choices:
   "cardiomediastinal"/"mediastinum" phrases belong to Enlarged
   Cardiomediastinum only (as in CheXpert); "calcified nodule" and "granuloma"
   are not Lung Lesions and "nodular opacity/density" is a Lung Lesion, not a
   Lung Opacity (CheXpert unmention lists); "scar(ring)" and "fibrosis" of the
   lung are Lung Opacity while pleural/pleuro-parenchymal scarring or
   thickening is Pleural Other; blunting of the costophrenic angle alone is not
   a pleural effusion (CheXpert puts "blunt" among non-CheXpert findings);
   surgical clips and nipple markers are not Support Devices, sternotomy wires,
   monitoring leads and fixation hardware are; "pericardial effusion" is not a
   Pleural Effusion; "osseous infection" and "(prior) granulomatous/
   histoplasmosis infection" are not Pneumonia. Adjacent mentions of one
   observation ("mass lesion") are merged.
3. **Structures that need a descriptor.** "heart", "heart size", "cardiac
   silhouette", ... (Cardiomegaly), "mediastinum", "cardiomediastinal
   silhouette", ... (Enlarged Cardiomediastinum) and "pulmonary vascularity",
   ... (Edema) are observations only together with a descriptor in the same
   clause: an abnormal one ("enlarged", "widened", "prominent", "engorged")
   makes a mention whose status is then decided by cues like any other;
   a normal one ("normal", "unremarkable", "within normal limits") makes a
   ``negative`` mention (Cardiomegaly and Enlarged Cardiomediastinum only:
   "normal pulmonary vascularity" says nothing explicit about edema and is
   left ``absent``); a borderline one ("upper limits of normal", "top normal",
   "borderline", "normal to mildly enlarged") makes an ``uncertain`` mention.
   "Stable cardiomediastinal silhouette" (no descriptor) is ``absent``.
4. **Cues** (NegEx style): pre-negation ("no", "not", "without",
   "negative for", "no evidence of", "free of", "clear of", "absence of",
   "resolution of", "removal of", "resolved", "clear" (short scope), ...),
   post-negation ("is not seen", "has resolved", "removed", "absent", ...),
   pre-uncertainty ("may", "could", "possible", "probable", "questionable",
   "suspicious for", "suggest...", "cannot exclude", "borderline",
   "versus", "most XXXX", ...) and post-uncertainty ("cannot be excluded",
   "is not excluded", "is suspected", "is in the differential", "?" ...;
   "differential diagnosis includes" has a long scope). Pseudo-negations ("no
   change", "no interval change", "not only", "no increase") are ignored. A
   cue's scope runs over at most ``window`` words, not counting the words of
   other finding mentions and list connectors, so one "no" covers a whole list
   ("no consolidation, suspicious opacity, large effusion, or pneumothorax");
   it is cut by terminators ("but",
   "however", "although", "though", "except", "other than", "aside from",
   "with", "which", "whereas", "while", ";", ":", "there is/are",
   "and the/a/there").
5. **Resolution.** The nearest pre-cue in scope wins; with none, the nearest
   post-cue in scope. "Relational" uncertainty cues ("to suggest", "suggestive
   of", "suspicious for", "concerning for", "worrisome for") inherit a negation
   that governs them, so "no opacity to suggest pneumonia" makes Pneumonia
   negative while "no effusion, possible atelectasis" makes Atelectasis
   uncertain. A mention that is not negated and stands next to "or",
   "versus" or "and/or" with another finding on the other side
   ("atelectasis or scarring", "infiltrate versus atelectasis") is uncertain.
   Otherwise it is positive. Several mentions of one observation in a
   sentence aggregate as in CheXpert (positive > uncertain > negative).

The statuses are plain strings so that results are JSON-serialisable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "OBSERVATIONS",
    "STATUSES",
    "POSITIVE",
    "NEGATIVE",
    "UNCERTAIN",
    "ABSENT",
    "Mention",
    "normalize_whitespace",
    "split_sentences",
    "find_mentions",
    "label_sentence",
    "label_report",
    "label_reports",
    "aggregate_statuses",
    "label_agreement",
]

#: The 14 CheXpert observations, in CheXpert's column order.
OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

Status = Literal["positive", "negative", "uncertain", "absent"]
POSITIVE: Status = "positive"
NEGATIVE: Status = "negative"
UNCERTAIN: Status = "uncertain"
ABSENT: Status = "absent"
#: All statuses, strongest first (CheXpert aggregation order).
STATUSES: tuple[str, ...] = (POSITIVE, UNCERTAIN, NEGATIVE, ABSENT)
_RANK = {POSITIVE: 3, UNCERTAIN: 2, NEGATIVE: 1, ABSENT: 0}

# --------------------------------------------------------------------------
# Sentence splitting
# --------------------------------------------------------------------------

_WS = re.compile(r"\s+")
# Tokens after which a period does not end a sentence.
_NO_SPLIT_AFTER = re.compile(r"(?:\b(?:vs|e\.g|i\.e|dr|approx|st|no|fig|mr|mrs|ms)\.|\b[A-Z]\.)$", re.IGNORECASE)
_CANDIDATE = re.compile(r"(?<=[.!?])\s+")
_LIST_MARKER = re.compile(r"\d{1,2}[.)]")
_PUNCT_ONLY = re.compile(r"[.!?,;:\s]+")
# A numbered item "2. Xxx" starting inside a line that lacks a period before it.
_INLINE_ITEM = re.compile(r"(?<=[a-z0-9,)])\s+(?=\d{1,2}\.\s+[A-Z])")


def normalize_whitespace(text: str) -> str:
    """Collapse every run of whitespace to one space and strip the ends."""
    if not isinstance(text, str):
        raise TypeError(f"expected report text as str, got {type(text).__name__}")
    return _WS.sub(" ", text).strip()


def split_sentences(text: str) -> list[str]:
    """Split report text into sentences.

    The text is whitespace-normalised first. A sentence ends at ``.``, ``!`` or
    ``?`` followed by whitespace, except after abbreviations ("vs.", "e.g.",
    "Dr.", single initials). A bare list marker ("1.") is glued to the sentence
    that follows it; punctuation-only fragments (Open-i's ". .") are glued to
    the sentence before. A numbered item that starts without a preceding
    period ("... disease 2. Stable ...") starts a new sentence. Joining the
    returned sentences with single spaces gives back the normalised text.
    """
    norm = normalize_whitespace(text)
    if not norm:
        return []
    norm_parts: list[str] = []
    for chunk in _INLINE_ITEM.split(norm):
        start = 0
        for m in _CANDIDATE.finditer(chunk):
            head = chunk[start : m.start()]
            if _NO_SPLIT_AFTER.search(head) and not _LIST_MARKER.fullmatch(head.split(" ")[-1]):
                continue
            norm_parts.append(head)
            start = m.end()
        norm_parts.append(chunk[start:])
    sentences: list[str] = []
    prefix = ""
    for part in norm_parts:
        if _LIST_MARKER.fullmatch(part):
            prefix = f"{prefix}{part} "
            continue
        if _PUNCT_ONLY.fullmatch(part) and sentences and not prefix:
            sentences[-1] = f"{sentences[-1]} {part}"
            continue
        sentences.append(prefix + part)
        prefix = ""
    if prefix:
        sentences.append(prefix.strip())
    return sentences


# --------------------------------------------------------------------------
# Lexicons
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pattern:
    """One mention pattern: regex, plus context regexes that cancel it.

    ``not_before`` is searched in the 30 characters before the match,
    ``not_after`` in the 30 characters after it; a hit cancels the mention.
    """

    regex: re.Pattern[str]
    not_before: re.Pattern[str] | None = None
    not_after: re.Pattern[str] | None = None


def _p(regex: str, not_before: str | None = None, not_after: str | None = None) -> _Pattern:
    return _Pattern(
        re.compile(regex),
        re.compile(not_before + r"\s*$") if not_before else None,
        re.compile(r"^\s*" + not_after) if not_after else None,
    )


# Mentions that are observations by themselves (status decided by cues).
_DIRECT: dict[str, list[_Pattern]] = {
    "Enlarged Cardiomediastinum": [
        _p(r"\bmediastinal (?:widening|enlargement|prominence)\b"),
        _p(r"\b(?:widened|widening of the) (?:superior )?mediastinum\b"),
        _p(r"\benlarged cardiomediastinum\b"),
    ],
    "Cardiomegaly": [
        _p(r"\bcardiomegaly\b"),
        _p(r"\bcardiac enlargement\b"),
    ],
    "Lung Lesion": [
        _p(
            r"\bnodul(?:e|es|ar|arity)\b",
            not_before=r"\b(?:calcified(?: \w+){0,3}|reticular|fibro)",
            not_after=r"(?:calcification|granuloma)",
        ),
        _p(r"\bmass(?:es)?\b", not_after=r"effect\b"),
        _p(
            r"\blesions?\b",
            not_before=r"\b(?:lytic|sclerotic|blastic|osseous|bony|bone|skin|osteolytic|expansile|rib)(?: \w+)?",
        ),
        _p(r"\btumou?rs?\b"),
        _p(r"\bneoplas\w*"),
        _p(r"\bcarcinoma\w*"),
        _p(r"\bcancers?\b"),
        _p(r"\bmalignan\w*"),
        _p(r"\bmetasta\w*", not_before=r"\b(?:osseous|bony|bone|skeletal|osteoblastic|osteolytic)(?: \w+)?"),
    ],
    "Lung Opacity": [
        _p(r"\bopaci\w*", not_before=r"\b(?:nodular|pleural based|pleural)"),
        _p(r"\binfiltrat\w*"),
        _p(r"\b(?:air ?space|alveolar) (?:disease|process|filling)\b"),
        _p(
            r"\bdensit(?:y|ies)\b",
            not_before=r"\b(?:bone|bony|osseous|soft tissue|nodular|calcified|calcific|metallic|metal|breast|nipple|fat|fatty|mineral|pleural|pleural based)",
        ),
        _p(r"\bhaz(?:y|iness)\b"),
        _p(r"\bground glass\b"),
        _p(
            r"\binterstitial (?:markings?|opacit\w*|pattern|prominence|thickening|disease|changes?|lung disease|infiltrat\w*|accentuation)\b"
        ),
        _p(r"\bincreased (?:lung|pulmonary|bronchovascular|interstitial|reticular) markings\b"),
        _p(r"\breticula\w*|\breticulonodular\b"),
        _p(r"\bperibronchial (?:thickening|cuffing)\b"),
        _p(r"\bbronchial wall thickening\b"),
        _p(
            r"\bscar(?:s|ring|red)?\b",
            not_before=r"\b(?:pleural|pleuroparenchymal|pleuro parenchymal)(?: \w+)?(?: (?:and|or))?",
        ),
        _p(r"\bfibros[ie]s\b|\bfibrotic\b", not_before=r"\b(?:pleural|pleuroparenchymal|pleural parenchymal)"),
    ],
    "Edema": [
        _p(r"\bedema\b", not_before=r"\bsoft tissue"),
        _p(r"\b(?:congestive )?heart failure\b"),
        _p(r"\bchf\b"),
        _p(r"\bcongest(?:ion|ive|ed)\b", not_after=r"heart failure"),
        _p(r"\bcephalization\b"),
        _p(r"\bkerley\b"),
        _p(r"\bfluid overload\b"),
        _p(
            r"\bindistinct(?:ness)? (?:of )?(?:the )?(?:pulmonary |central |hilar )?(?:vascular|vessels?|vasculature)\w*"
        ),
    ],
    "Consolidation": [_p(r"\bconsolidat\w*")],
    "Pneumonia": [
        _p(r"\b(?:broncho)?pneumoni(?:a|as|c)\b"),
        _p(
            r"\binfect(?:ion|ions|ious)\b",
            not_before=r"\b(?:osseous|bone|bony|soft tissue|wound|skin|urinary|joint|histoplasmosis|granulomatous|fungal)",
        ),
    ],
    "Atelectasis": [
        _p(r"\batelecta\w*"),
        _p(r"\bcollaps(?:e|ed|es|ing)\b", not_before=r"\b(?:vertebral|vertebra|body|compression|spinal)(?: \w+){0,2}"),
    ],
    "Pneumothorax": [
        _p(r"\b(?:hydro)?pneumothora(?:x|ces|xes)\b"),
        _p(r"\bptx\b"),
    ],
    "Pleural Effusion": [
        _p(r"\beffusions?\b", not_before=r"\b(?:pericardial|joint|pericardial or pleural)"),
        _p(r"\bpleural fluid\b|\b(?:loculated|localized|layering) (?:pleural )?fluid\b"),
        _p(r"\bhydro(?:pneumo)?thora(?:x|ces)\b"),
        _p(r"\bfissural fluid\b|\bfluid (?:in|within|along) the (?:\w+ )?fissure\b"),
    ],
    "Pleural Other": [
        _p(r"\bpleural (?:based )?(?:thickening|plaques?|calcifications?|scar\w*|fibrosis|reaction)\b"),
        _p(r"\b(?:pleuro ?parenchymal|pleural parenchymal) (?:scar\w*|thickening|fibrosis|changes?|opacit\w*)\b"),
        _p(r"\bfibrothorax\b"),
        _p(r"\bapical (?:pleural )?(?:cap|capping|caps)\b"),
        _p(r"\bpleural (?:based )?(?:opacit\w*|density|densities)\b"),
    ],
    "Fracture": [_p(r"\bfractur\w*"), _p(r"\bfx\b")],
    "Support Devices": [
        _p(r"\bpace ?makers?\b|\bpacers?\b|\bpacing (?:wires?|device|generator)\b"),
        _p(r"\bdefibrillators?\b|\ba?icds?\b|\bloop recorder\b"),
        _p(r"\bleads?\b", not_before=r"\b(?:which|that|this)", not_after=r"(?:to|poisoning)\b"),
        _p(r"\bcatheters?\b|\bpiccs?\b|\bport a cath\b|\bportacath\b|\bmediport\b|\bports?\b"),
        _p(
            r"\b(?:central|venous|picc|midline|arterial|dialysis|hemodialysis|jugular|subclavian|swan ganz|ij) (?:venous )?lines?\b"
        ),
        _p(r"\btubes?\b|\btracheostom\w*"),
        _p(r"\bstents?\b|\bvalves?\b|\bcoils?\b|\bfilters?\b|\bdrains?\b|\bcannula\w*"),
        _p(r"\b(?:internal |external )?fixation\b|\bgenerators?\b"),
        _p(r"\bhardware\b|\bscrews?\b|\brods?\b|\barthroplast\w*|\bprosthes[ie]s\b|\bprosthetic\b"),
        _p(r"\bplates?\b", not_after=r"like\b"),
        _p(r"\b(?:sternotomy|sternal|cerclage|pacing|monitoring|ekg|ecg) (?:wires?|sutures?|xxxx)\b|\bwires?\b"),
        _p(r"\b(?:support |medical )?devices?\b|\bapparatus\b|\belectrodes?\b"),
        _p(r"\bmarkers?\b", not_before=r"\b(?:nipple|skin|external)"),
    ],
}

# "No Finding" statements (always positive mentions).
_NF_LEAD = r"(?:no|negative for|without|free of)"
_NF_EVIDENCE = (
    r"(?:(?:(?:radiographic|radiographically|definite|convincing|any) )?(?:evidence|signs?) (?:of|for) )?(?:any )?"
)
_NF_ADJ = r"(?:acute|active|significant)"
_NF_DOMAIN = r"(?:(?:radiographic|radiographically|cardiopulmonary|cardiac|pulmonary|intrathoracic|thoracic|chest|lung|cardiothoracic|or|and|detectable|visible|xxxx)\s+){0,4}"
_NF_NOUN = r"(?:disease|diseases|abnormalit(?:y|ies)|process(?:es)?|findings?|pathology|issues?)"
_NO_FINDING = [
    re.compile(rf"\b{_NF_LEAD}\s+{_NF_EVIDENCE}{_NF_ADJ}\s+{_NF_DOMAIN}{_NF_NOUN}\b"),
    re.compile(
        r"\b(?:normal|negative|unremarkable) (?:(?:pa and lateral|frontal and lateral|two view|2 view|portable|single view|xxxx) )*"
        r"(?:chest|cxr|examination|exam|study|radiographs?|x ray|xray)\b(?! wall)"
    ),
    re.compile(r"\b(?:chest|examination|exam|study) (?:is |appears |remains )?(?:normal|negative|unremarkable)\b"),
    re.compile(r"\bno (?:significant |radiographic )?abnormalit(?:y|ies)\b"),
    # scrubbed noun after an explicit domain word: "no evidence of acute thoracic XXXX"
    re.compile(
        rf"\b{_NF_LEAD}\s+{_NF_EVIDENCE}{_NF_ADJ}\s+(?:radiographic |cardiopulmonary |pulmonary |intrathoracic |thoracic |chest ){{1,3}}xxxx\b"
    ),
]

# Anatomical structures that are an observation only with a descriptor.
_STRUCTURES: dict[str, list[_Pattern]] = {
    "Cardiomegaly": [
        _p(
            r"\bheart(?: size)?\b",
            not_after=r"(?:failure|valve|border|rate|disease)",
        ),
        _p(r"\bcardiac (?:silhouette|size|contours?|shadow|diameter|dimensions?|configuration)\b"),
        _p(r"\bcardiac(?= (?:and|&) (?:mediastinal|mediastinum|cardiomediastinal))\b"),
        _p(r"\bcardio ?pericardial silhouette\b|\bpericardial silhouette\b"),
    ],
    "Enlarged Cardiomediastinum": [
        _p(
            r"\bcardiomediastin\w*(?: (?:silhouette|contours?|shadow|structures?|width|size))?",
        ),
        _p(
            r"\b(?:superior )?mediastin(?:um|al)(?: (?:silhouette|contours?|configuration|width|structures?|size|shadow))?\b",
            not_after=r"(?:lymph|nodes?|adenopathy|lymphadenopathy|mass|clips?|surgical|shift|air|emphysema)",
        ),
    ],
    "Edema": [
        _p(
            r"\b(?:pulmonary |lung |central |perihilar |interstitial )?(?:vascularity|vasculature|vessels|vascular markings|vascular structures)\b"
        ),
    ],
}
_STRUCTURE_NORMAL_MEANS_NEGATIVE = {"Cardiomegaly", "Enlarged Cardiomediastinum"}

_DESC_BORDERLINE = re.compile(
    r"\b(?:(?:at |towards? )?(?:the )?upper limits? (?:of )?normal|top (?:of )?normal|upper normal|high normal|"
    r"borderline(?: (?:enlarged|enlargement|large|prominent|size|in size|cardiomegaly))?|"
    r"normal (?:to|or) (?:mildly |slightly |minimally |borderline )?(?:enlarged|large|prominent))\b"
)
_DESC_NORMAL = re.compile(
    r"\b(?:normal(?! (?:position|location|placement|course|alignment|appearing bony|for technique))(?: sized?| in size)?|"
    r"unremarkable|within (?:the )?normal (?:limits|range)|wnl|normal limits)\b"
)
_DESC_ABNORMAL = {
    "Cardiomegaly": re.compile(
        r"\b(?:enlarge(?:d|ment)|(?:is|are|appears?|remains?|looks?|slightly|mildly|moderately|markedly|severely) large|"
        r"larger|large (?=heart|cardiac)|prominen(?:t|ce)|increased in size|globular|cardiomegaly)\b"
    ),
    "Enlarged Cardiomediastinum": re.compile(
        r"\b(?:enlarge(?:d|ment)|widen(?:ed|ing)?|wide|prominen(?:t|ce)|increased in size|(?:is|are|appears?|remains?) large)\b"
    ),
    "Edema": re.compile(
        r"\b(?:increased|increase in|prominen(?:t|ce)|engorge(?:d|ment)|indistinct(?:ness)?|congest(?:ed|ion)|"
        r"cephaliz(?:ed|ation)|redistribut(?:ed|ion)|fuzzy|hazy|ill defined)\b"
    ),
}

# --------------------------------------------------------------------------
# Cues
# --------------------------------------------------------------------------

_NEG, _UNC = "neg", "unc"


@dataclass(frozen=True)
class _Cue:
    kind: str  # _NEG or _UNC
    direction: str  # "pre" or "post"
    window: int  # max number of words between cue and mention
    relational: bool = False  # uncertainty cue that inherits a governing negation


_CUE_DEFS: list[tuple[str, _Cue]] = [
    # pre-negation
    (r"\bno(?:ne)?\b", _Cue(_NEG, "pre", 8)),
    (r"\bnot\b", _Cue(_NEG, "pre", 6)),
    (r"\bnor\b", _Cue(_NEG, "pre", 6)),
    (r"\bwithout\b", _Cue(_NEG, "pre", 8)),
    (r"\bnegative for\b", _Cue(_NEG, "pre", 8)),
    (r"\b(?:free|clear) of\b", _Cue(_NEG, "pre", 8)),
    (r"\bclear\b", _Cue(_NEG, "pre", 2)),
    (r"\babsen(?:ce|t) of\b", _Cue(_NEG, "pre", 6)),
    (r"\b(?:interval )?(?:resolution|removal|clearing|resolving|disappearance) of\b", _Cue(_NEG, "pre", 6)),
    (r"\bresolved\b", _Cue(_NEG, "pre", 3)),
    (r"\bfails? to (?:demonstrate|show|reveal)\b", _Cue(_NEG, "pre", 6)),
    (r"\bno longer\b", _Cue(_NEG, "pre", 4)),
    # post-negation
    (
        r"\b(?:is|are|was|were|has|have)? ?(?:not|no longer|never) (?:been )?(?:\w+ )?(?:seen|identified|visualized|visible|present|"
        r"demonstrated|appreciated|evident|noted|detected|apparent|shown)\b",
        _Cue(_NEG, "post", 5),
    ),
    (
        r"\b(?:has|have)? ?(?:since )?(?:resolved|cleared|been removed|been resolved|disappeared)\b",
        _Cue(_NEG, "post", 5),
    ),
    (r"\bremoved\b", _Cue(_NEG, "post", 4)),
    (r"\b(?:is|are)? ?absent\b", _Cue(_NEG, "post", 3)),
    (r"\bnegative\b", _Cue(_NEG, "post", 2)),
    # uncertainty (pre)
    (r"\b(?:may|might|could|can)\b", _Cue(_UNC, "pre", 8)),
    (r"\bpossib(?:le|ly|ility)\b", _Cue(_UNC, "pre", 8)),
    (r"\bprobab(?:le|ly)\b|\blikely\b|\bmost xxxx\b|\bpresum(?:ably|ed|ptive)\b", _Cue(_UNC, "pre", 8)),
    (r"\bquestion(?:able|ably|ed)?\b|\bequivocal\b|\bindeterminate\b|\buncertain\b|\bunlikely\b", _Cue(_UNC, "pre", 8)),
    (r"\bborderline\b", _Cue(_UNC, "pre", 4)),
    (
        r"\b(?:cannot|can not|can't|could not|not) (?:be )?(?:entirely |completely |totally |definitely |definitively )?(?:excluded?|ruled? out)\b",
        _Cue(_UNC, "pre", 8),
    ),
    (r"\b(?:difficult|hard) to (?:exclude|rule out)\b", _Cue(_UNC, "pre", 8)),
    (r"\bdifferential(?: diagnos[ie]s)?(?: (?:is|includes?|considerations?))?\b", _Cue(_UNC, "pre", 12)),
    (
        r"\b(?:consider|considered|considering|favou?r(?:s|ed|ing)?|versus|vs|and or|r o|evaluate for|rule[sd]? out)\b",
        _Cue(_UNC, "pre", 6),
    ),
    (r"\bsuspect(?:ed|s)?\b|\bsuspicion\b", _Cue(_UNC, "pre", 8)),
    (r"\b(?:clinical(?:ly)? )?correlat\w* (?:clinically )?(?:for|with)\b", _Cue(_UNC, "pre", 6)),
    # relational uncertainty (pre): inherits a negation that governs it
    (r"\b(?:to suggest|suggest(?:s|ed|ing|ive)?(?: of)?)\b", _Cue(_UNC, "pre", 8, relational=True)),
    (
        r"\b(?:suspicious|concerning|worrisome|worrying) (?:for|of)\b|\bconcern for\b",
        _Cue(_UNC, "pre", 8, relational=True),
    ),
    # uncertainty (post)
    (
        r"\b(?:cannot|can not|can't|could not|not|is not|are not) (?:be )?(?:entirely |completely |totally |definitely )?(?:excluded|ruled out)\b",
        _Cue(_UNC, "post", 6),
    ),
    (
        r"\b(?:is|are) (?:suspected|questioned|possible|likely|not certain|uncertain|considered|suggested)\b",
        _Cue(_UNC, "post", 4),
    ),
    (r"\b(?:is|are) (?:also )?(?:an?|another) (?:consideration|possibility)\b", _Cue(_UNC, "post", 4)),
    (r"\b(?:is|are) (?:more|most) (?:xxxx|likely)\b", _Cue(_UNC, "post", 4)),
    (r"\b(?:is|are) (?:also )?(?:in|within) the differential\b", _Cue(_UNC, "post", 4)),
    (r"\?", _Cue(_UNC, "post", 4)),
]
_CUES: list[tuple[re.Pattern[str], _Cue]] = [(re.compile(rx), cue) for rx, cue in _CUE_DEFS]

_PSEUDO = re.compile(
    r"\b(?:no|without|not) (?:(?:significant|interval|appreciable|substantial|definite|other|marked|acute) )*"
    r"(?:change|changes|changed|increase|increased in size|decrease|progression|worsening|improvement)\b"
    r"|\bnot only\b|\bnot necessarily\b|\bno further\b|\bnot well (?:seen|visualized)\b"
)
# Words and punctuation that end a cue's scope.
_TERMINATORS = re.compile(
    r"\b(?:but|however|although|though|except|whereas|while|which|with|aside from|apart from|other than|besides|"
    r"otherwise|now|there (?:is|are|was|were)|and (?:the|there|a|an)|given)\b|[;:]"
)
_DIFFERENTIAL = re.compile(r"\b(?:and or|or|versus|vs)\b")
# Non-CheXpert findings that can be the other arm of a differential.
_OTHER_FINDINGS = re.compile(
    r"\b(?:scar\w*|fibros\w*|granulom\w*|emphysema\w*|artifact\w*|vessels?|vascular\w*|nipple\w*|shadows?|"
    r"thickening|fat|hernia|calcification\w*|lymph nodes?|bronchiectasis|pneumonitis|aspiration|hemorrhage|"
    r"contusion|bleb\w*|bull(?:a|ae|ous)|overlap\w*|soft tissues?|superimpos\w*|infarct\w*|inflammat\w*)\b"
)
_WORD = re.compile(r"[a-z0-9]+")
_CONNECTORS = frozenset({"or", "and", "nor"})
# Verbs that separate a structure from its descriptor ("heart is enlarged").
_COPULA = re.compile(r"\b(?:is|are|was|were|be|been|appears?|remains?|seems?|looks?|measures?)\b")


@dataclass(frozen=True)
class Mention:
    """One observation mention in a sentence.

    ``start``/``end`` are character offsets into the sentence, ``text`` is the
    mention as written, ``cue`` the text of the cue that set the status (``""``
    when none did).
    """

    observation: str
    status: str
    start: int
    end: int
    text: str
    cue: str = ""


@dataclass(frozen=True)
class _FoundCue:
    start: int
    end: int
    text: str
    cue: _Cue


def _prepare(sentence: str) -> str:
    """Lower-case and read hyphens/slashes-in-words as spaces; keep offsets."""
    low = sentence.lower()
    if len(low) != len(sentence):  # exotic unicode; fall back to ASCII lowering
        low = "".join(ch.lower() if len(ch.lower()) == 1 else ch for ch in sentence)
    return low.replace("-", " ").replace("/", " ")


def _words_between(text: str, a: int, b: int, skip: Sequence[tuple[int, int]] = ()) -> int:
    """Words in ``text[a:b]``; with ``skip``, words inside those spans (other
    finding mentions) and list connectors ("or", "and", "nor") do not count, so
    that a cue's scope runs over a whole list of findings
    ("no consolidation, suspicious opacity, large effusion, or pneumothorax").
    """
    if b <= a:
        return 0
    if not skip:
        return len(_WORD.findall(text, a, b))
    n = 0
    for w in _WORD.finditer(text, a, b):
        if w.group(0) in _CONNECTORS or any(s <= w.start() < e for s, e in skip):
            continue
        n += 1
    return n


def _has_terminator(text: str, a: int, b: int) -> bool:
    return b > a and _TERMINATORS.search(text, a, b) is not None


def _find_cues(text: str, masked: list[tuple[int, int]]) -> list[_FoundCue]:
    pseudo = [(m.start(), m.end()) for m in _PSEUDO.finditer(text)]
    blocked = pseudo + masked
    found: list[_FoundCue] = []
    for rx, cue in _CUES:
        for m in rx.finditer(text):
            if any(m.start() < e and s < m.end() for s, e in blocked):
                continue
            found.append(_FoundCue(m.start(), m.end(), m.group(0), cue))
    # Keep the longest of overlapping cues of the same direction.
    found.sort(key=lambda c: (c.start, -(c.end - c.start)))
    kept: list[_FoundCue] = []
    for c in found:
        if any(c.start < k.end and k.start < c.end and k.cue.direction == c.cue.direction for k in kept):
            continue
        kept.append(c)
    return kept


def _pre_cue(
    text: str, cues: list[_FoundCue], anchor: int, skip: Sequence[tuple[int, int]], lower_bound: int = 0
) -> _FoundCue | None:
    """Nearest pre-cue governing position ``anchor`` (not before ``lower_bound``)."""
    best: _FoundCue | None = None
    for c in cues:
        if c.cue.direction != "pre" or c.end > anchor or c.start < lower_bound:
            continue
        if _words_between(text, c.end, anchor, skip) > c.cue.window or _has_terminator(text, c.end, anchor):
            continue
        if best is None or c.end > best.end:
            best = c
    return best


def _post_cue(text: str, cues: list[_FoundCue], anchor: int, skip: Sequence[tuple[int, int]]) -> _FoundCue | None:
    """Nearest post-cue governing a mention that ends at ``anchor``."""
    best: _FoundCue | None = None
    for c in cues:
        if c.cue.direction != "post" or c.start < anchor:
            continue
        if _words_between(text, anchor, c.start, skip) > c.cue.window or _has_terminator(text, anchor, c.start):
            continue
        if best is None or c.start < best.start:
            best = c
    return best


def _resolve(
    text: str,
    cues: list[_FoundCue],
    start: int,
    end: int,
    skip: Sequence[tuple[int, int]],
    lower_bound: int = 0,
) -> tuple[str, str]:
    """Status and deciding cue text for a mention spanning ``[start, end)``."""
    pre = _pre_cue(text, cues, start, skip, lower_bound)
    if pre is not None:
        if pre.cue.kind == _NEG:
            return NEGATIVE, pre.text
        if pre.cue.relational:
            governing = _pre_cue(text, cues, pre.start, skip, lower_bound)
            if governing is not None and governing.cue.kind == _NEG:
                return NEGATIVE, governing.text
        return UNCERTAIN, pre.text
    post = _post_cue(text, cues, end, skip)
    if post is not None:
        return (NEGATIVE if post.cue.kind == _NEG else UNCERTAIN), post.text
    return POSITIVE, ""


def _is_finding_at(text: str, spans: list[tuple[int, int]], a: int, b: int) -> bool:
    if any(a <= s < b for s, _ in spans):
        return True
    return _OTHER_FINDINGS.search(text, a, b) is not None


def _in_differential(text: str, start: int, end: int, finding_spans: list[tuple[int, int]]) -> bool:
    """True when the mention is one arm of "X or Y" / "X versus Y" with a finding Y.

    The mention must be next to the connector (at most one word after it, as
    in "atelectasis bilaterally or ..."; at most two modifiers before it, as in
    "... or early infiltrate"); the other arm must hold a finding within four
    words.
    """
    for m in _DIFFERENTIAL.finditer(text):
        if m.start() >= end:  # mention ... or Y
            if _words_between(text, end, m.start()) <= 1 and not _has_terminator(text, end, m.start()):
                after_end = _span_after_words(text, m.end(), 4)
                if _is_finding_at(text, finding_spans, m.end(), after_end):
                    return True
        elif m.end() <= start:  # X or ... mention
            if _words_between(text, m.end(), start) <= 2 and not _has_terminator(text, m.end(), start):
                before_start = _span_before_words(text, m.start(), 4)
                if _is_finding_at(text, [(s, e) for s, e in finding_spans if e <= m.start()], before_start, m.start()):
                    return True
    return False


def _span_after_words(text: str, pos: int, n: int) -> int:
    words = list(_WORD.finditer(text, pos))
    return words[n - 1].end() if len(words) >= n else len(text)


def _span_before_words(text: str, pos: int, n: int) -> int:
    words = list(_WORD.finditer(text, 0, pos))
    return words[-n].start() if len(words) >= n else 0


def _pattern_hits(text: str, pattern: _Pattern) -> Iterable[re.Match[str]]:
    for m in pattern.regex.finditer(text):
        if pattern.not_before is not None and pattern.not_before.search(text[max(0, m.start() - 30) : m.start()]):
            continue
        if pattern.not_after is not None and pattern.not_after.search(text[m.end() : m.end() + 30]):
            continue
        yield m


def _descriptor_for(text: str, obs: str, s_start: int, s_end: int) -> tuple[str, int, int] | None:
    """Find the descriptor of a structure mention: (kind, start, end) or None.

    Looks first just before the structure ("normal heart size", "enlarged
    cardiac silhouette"; up to 5 words, no comma or terminator between), then
    after it up to 10 words within the clause ("heart size is normal", "heart
    and mediastinum are unremarkable").
    """
    kinds: list[tuple[str, re.Pattern[str]]] = [("borderline", _DESC_BORDERLINE)]
    if obs in _STRUCTURE_NORMAL_MEANS_NEGATIVE:
        kinds.append(("normal", _DESC_NORMAL))
    kinds.append(("abnormal", _DESC_ABNORMAL[obs]))

    def hits(a: int, b: int) -> list[tuple[str, int, int]]:
        out: list[tuple[str, int, int]] = []
        taken: list[tuple[int, int]] = []
        for kind, rx in kinds:  # borderline masks the "normal" inside it
            for m in rx.finditer(text, a, b):
                if any(m.start() < e and s < m.end() for s, e in taken):
                    continue
                taken.append((m.start(), m.end()))
                out.append((kind, m.start(), m.end()))
        return out

    before_start = _span_before_words(text, s_start, 5)
    before = [
        h
        for h in hits(before_start, s_start)
        if "," not in text[h[2] : s_start] and not _has_terminator(text, h[2], s_start)
    ]
    if before:
        return max(before, key=lambda h: h[1])
    after_end = _span_after_words(text, s_end, 10)
    after = [h for h in hits(s_end, after_end) if not _has_terminator(text, s_end, h[1])]
    if after:
        return min(after, key=lambda h: h[1])
    return None


def _merge_adjacent(text: str, spans: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """Join mentions of one observation separated only by spaces ("mass lesion")."""
    spans = sorted(spans, key=lambda x: (x[1], x[2]))
    out: list[tuple[str, int, int]] = []
    for obs, s, e in spans:
        for j in range(len(out) - 1, -1, -1):
            o2, s2, e2 = out[j]
            if o2 == obs and (s < e2 or (s >= e2 and text[e2:s].strip() == "")):
                out[j] = (obs, min(s, s2), max(e, e2))
                break
        else:
            out.append((obs, s, e))
    return out


def find_mentions(sentence: str) -> list[Mention]:
    """All observation mentions in one sentence, with their statuses."""
    if not isinstance(sentence, str):
        raise TypeError(f"expected a sentence as str, got {type(sentence).__name__}")
    text = _prepare(sentence)
    mentions: list[Mention] = []

    nf_spans: list[tuple[int, int]] = []
    for rx in _NO_FINDING:
        for m in rx.finditer(text):
            if any(m.start() < e and s < m.end() for s, e in nf_spans):
                continue
            nf_spans.append((m.start(), m.end()))
            mentions.append(Mention("No Finding", POSITIVE, m.start(), m.end(), sentence[m.start() : m.end()]))

    direct: list[tuple[str, int, int]] = []
    for obs, patterns in _DIRECT.items():
        for pat in patterns:
            for m in _pattern_hits(text, pat):
                if not any(m.start() < e and s < m.end() for s, e in nf_spans):
                    direct.append((obs, m.start(), m.end()))
    direct = _merge_adjacent(text, direct)

    structures: list[tuple[str, int, int]] = []
    for obs, patterns in _STRUCTURES.items():
        for pat in patterns:
            for m in _pattern_hits(text, pat):
                overlaps = [(s, e) for s, e in nf_spans] + [(s, e) for o, s, e in structures + direct if o == obs]
                if not any(m.start() < e and s < m.end() for s, e in overlaps):
                    structures.append((obs, m.start(), m.end()))

    cues = _find_cues(text, nf_spans)
    finding_spans = [(s, e) for _, s, e in direct] + [(s, e) for _, s, e in structures]

    for obs, start, end in direct:
        others = [x for x in finding_spans if x != (start, end)]
        status, cue = _resolve(text, cues, start, end, others)
        if status == POSITIVE and _in_differential(text, start, end, others):
            status, cue = UNCERTAIN, "differential"
        mentions.append(Mention(obs, status, start, end, sentence[start:end], cue))

    for obs, start, end in structures:
        desc = _descriptor_for(text, obs, start, end)
        if desc is None:
            continue
        kind, d_start, d_end = desc
        lo, hi = min(start, d_start), max(end, d_end)
        others = [x for x in finding_spans if not (lo <= x[0] < hi)]
        if kind == "borderline":
            status, cue = UNCERTAIN, text[d_start:d_end]
        elif kind == "normal":
            status, cue = NEGATIVE, text[d_start:d_end]
        else:
            noun_phrase = d_start < end or (
                _words_between(text, end, d_start) <= 2 and not _COPULA.search(text, end, d_start)
            )
            if noun_phrase:
                # "no enlarged heart", "no mediastinal widening": cues precede the phrase.
                status, cue = _resolve(text, cues, lo, hi, others)
            else:
                # "heart is not enlarged": only cues after the structure count,
                # so "no effusion, heart is enlarged" stays positive.
                status, cue = _resolve(text, cues, d_start, hi, others, lower_bound=start)
            if status == POSITIVE and _in_differential(text, lo, hi, others):
                status, cue = UNCERTAIN, "differential"
        mentions.append(Mention(obs, status, lo, hi, sentence[lo:hi], cue))

    mentions.sort(key=lambda m: (m.start, m.end, m.observation))
    return mentions


def aggregate_statuses(statuses: Iterable[str]) -> str:
    """CheXpert aggregation: positive > uncertain > negative > absent."""
    best = ABSENT
    for s in statuses:
        if s not in _RANK:
            raise ValueError(f"unknown status {s!r}; expected one of {STATUSES}")
        if _RANK[s] > _RANK[best]:
            best = s
    return best


def label_sentence(sentence: str) -> dict[str, str]:
    """Observation -> status for one sentence (mention level, see module doc)."""
    per_obs: dict[str, list[str]] = {obs: [] for obs in OBSERVATIONS}
    for m in find_mentions(sentence):
        per_obs[m.observation].append(m.status)
    return {obs: aggregate_statuses(v) for obs, v in per_obs.items()}


def label_report(text: str) -> dict[str, str]:
    """Observation -> status for a whole report or impression.

    Sentence labels are aggregated with :func:`aggregate_statuses`; No Finding
    is then ``positive`` if no observation other than Support Devices is
    positive or uncertain, else ``absent`` (CheXpert convention).
    """
    per_obs: dict[str, list[str]] = {obs: [] for obs in OBSERVATIONS}
    for sentence in split_sentences(text):
        for m in find_mentions(sentence):
            per_obs[m.observation].append(m.status)
    labels = {obs: aggregate_statuses(v) for obs, v in per_obs.items()}
    abnormal = any(
        labels[obs] in (POSITIVE, UNCERTAIN) for obs in OBSERVATIONS if obs not in ("No Finding", "Support Devices")
    )
    labels["No Finding"] = ABSENT if abnormal else POSITIVE
    return labels


def label_reports(texts: Sequence[str]) -> list[dict[str, str]]:
    """:func:`label_report` over many texts; errors name the offending index."""
    out: list[dict[str, str]] = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text #{i}: expected str, got {type(t).__name__}")
        out.append(label_report(t))
    return out


def label_agreement(gold: Sequence[Mapping[str, str]], pred: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """Agreement of predicted with reference labels (e.g. hand labels).

    ``gold`` and ``pred`` are parallel sequences of observation -> status maps;
    observations missing from a map count as ``absent``. Returns
    ``{"n", "exact_match" (share of items whose 14 statuses all agree),
    "cell_accuracy" (share of (item, observation) pairs that agree),
    "per_status": {status: {"precision", "recall", "f1", "support"}},
    "per_observation_accuracy": {observation: accuracy}}``.
    """
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} items but pred has {len(pred)}")
    if not gold:
        raise ValueError("no items to compare")
    exact = 0
    agree = 0
    per_obs = {obs: 0 for obs in OBSERVATIONS}
    pairs: list[tuple[str, str]] = []
    for i, (g, p) in enumerate(zip(gold, pred)):
        for name, m in (("gold", g), ("pred", p)):
            bad = set(m) - set(OBSERVATIONS)
            if bad:
                raise ValueError(f"{name} item #{i}: unknown observation(s) {sorted(bad)}")
            bad_st = {v for v in m.values() if v not in _RANK}
            if bad_st:
                raise ValueError(f"{name} item #{i}: unknown status(es) {sorted(bad_st)}")
        all_ok = True
        for obs in OBSERVATIONS:
            gs, ps = g.get(obs, ABSENT), p.get(obs, ABSENT)
            pairs.append((gs, ps))
            if gs == ps:
                agree += 1
                per_obs[obs] += 1
            else:
                all_ok = False
        exact += all_ok
    per_status: dict[str, dict[str, float]] = {}
    for st in STATUSES:
        tp = sum(1 for gs, ps in pairs if gs == st and ps == st)
        n_pred = sum(1 for _, ps in pairs if ps == st)
        n_gold = sum(1 for gs, _ in pairs if gs == st)
        prec = tp / n_pred if n_pred else float("nan")
        rec = tp / n_gold if n_gold else float("nan")
        f1 = 2 * tp / (n_pred + n_gold) if (n_pred + n_gold) else float("nan")
        per_status[st] = {"precision": prec, "recall": rec, "f1": f1, "support": n_gold}
    n = len(gold)
    return {
        "n": n,
        "exact_match": exact / n,
        "cell_accuracy": agree / (n * len(OBSERVATIONS)),
        "per_status": per_status,
        "per_observation_accuracy": {obs: c / n for obs, c in per_obs.items()},
    }
