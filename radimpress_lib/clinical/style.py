"""Radiologist style: content-independent style features, pseudo-radiologist groups, style classifier, style strings.

Public Open-i reports carry no reader id, but every reader writes their own template:
the phrase for a normal study ("No acute cardiopulmonary abnormality." / "No active
disease." / "Negative chest."), numbered lists or prose, one sentence or several, hedging,
punctuation habits. This module

1. computes **style features** of an impression that do not depend on what was found
   (:func:`style_features`): the wording of the normal-study statement (lead, adjective,
   domain, noun), numbering, sentence count, words per sentence, length, punctuation
   (double periods, commas, semicolons/colons, missing final period), hedging words,
   "there is" phrasing, comparison words, upper-case words;
2. induces **K pseudo-radiologist groups** from the *train* split only
   (:func:`fit_style_groups`). K is chosen over ``style.k_min..k_max`` by the mean
   silhouette score (seeded, on at most ``style.silhouette_sample`` impressions); ties go
   to the smaller K. Groups are named ``R1..RK`` by decreasing size. Two methods
   (``style.group_method``):

   * ``readers`` (default): k-means on the style features of the impressions that carry a
     normal-study statement, the part of an impression that is pure reader template. An
     impression without one ("Right lower lobe pneumonia.") says little about who wrote it,
     and clustering it by its features makes a group of *abnormal reports* (content, not a
     reader). Such a report is instead given to a reader by how its **findings** are
     written: a classifier of content-masked findings phrasing (each reader dictates their
     own findings boilerplate), trained on the template reports, assigns it. Every group
     then holds a reader's normal and abnormal reports. :meth:`StyleModel.reader_agreement`
     measures the findings classifier against the impression template on held-out
     template reports;
   * ``impressions``: k-means on the style features of every impression (the first
     version; it forms one group of abnormal impressions without a normal statement).

   When the data carry a ``radiologist_id`` (a user's own reports, see
   :mod:`radimpress_lib.core.schema`), those ids are the groups instead;
3. trains a **style classifier** (TF-IDF word + character n-grams, logistic regression) on
   *content-masked* train impressions (:func:`mask_content`: CheXpert observation mentions
   found by :mod:`radimpress_lib.clinical.labeler`, an anatomy lexicon and measurements are replaced
   by placeholders), so it must recognise the reader from how they write, not from what
   they saw. Its accuracy on validation and test references is the bar the fine-tuned
   model's impressions are held to;
4. builds the **style slot** of the prompt (:func:`style_prefix`: radiologist id and a
   one-line description of the group's habits, for radiologists seen in training;
   :func:`fewshot_style`: k example impressions of a radiologist not seen in training,
   drawn from train/validate only).

Test-split reports are only ever *assigned* to a group (to know whose style the reference
is in); nothing here is fitted on them.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from radimpress_lib.clinical import labeler

__all__ = [
    "FEATURE_NAMES",
    "StyleModel",
    "cluster_examples",
    "cluster_table",
    "feature_matrix",
    "fewshot_style",
    "fit_style_classifier",
    "fit_style_groups",
    "group_checks",
    "mask_content",
    "normal_statement",
    "restyle",
    "style_features",
    "style_prefix",
]

# --------------------------------------------------------------------------- features

_LEADS = {
    "no_evidence": re.compile(r"\bno (?:\w+ )?(?:evidence|signs?) of\b", re.IGNORECASE),
    "negative": re.compile(r"\bnegative\b", re.IGNORECASE),
    "without": re.compile(r"\b(?:without|free of)\b", re.IGNORECASE),
    "normal": re.compile(r"\b(?:normal|unremarkable|clear)\b", re.IGNORECASE),
    "no": re.compile(r"\bno\b", re.IGNORECASE),
}
_ADJECTIVES = {"acute": r"\bacute\b", "active": r"\bactive\b", "significant": r"\bsignificant\b"}
_DOMAINS = {
    "cardiopulmonary": r"\bcardiopulmonary\b",
    "cardiothoracic": r"\b(?:cardiothoracic|intrathoracic|thoracic|chest)\b",
    "pulmonary": r"\b(?:pulmonary|lung)\b",
    "radiographic": r"\bradiographic(?:ally)?\b",
}
_NOUNS = {
    "abnormality": r"\babnormalit(?:y|ies)\b",
    "disease": r"\bdiseases?\b",
    "process": r"\bprocess(?:es)?\b",
    "finding": r"\bfindings?\b",
}
_HEDGES = re.compile(
    r"\b(?:likely|probabl[ey]|possibl[ey]|may|might|could|questionable|suspicious|suggest\w*|consistent with|"
    r"cannot be excluded|not excluded|cannot exclude|favou?r\w*|presumed|perhaps|versus|vs|differential)\b|\?",
    re.IGNORECASE,
)
_THERE_IS = re.compile(r"\bthere (?:is|are|has|have)\b", re.IGNORECASE)
_COMPARISON = re.compile(r"\b(?:stable|unchanged|interval|again|previous(?:ly)?|prior|compared)\b", re.IGNORECASE)
_NUMBERED = re.compile(r"(?:^|\s)(?:1[.)]|[-*\u2022])\s")
_ITEM = re.compile(r"(?:^|\s)\d{1,2}[.)]\s")
_DOUBLE_PERIOD = re.compile(r"\.\s*\.")
_UPPER_WORD = re.compile(r"\b(?!XXXX\b)[A-Z]{3,}\b")
_WORDS = re.compile(r"[A-Za-z]+")
_WORD_RUN = re.compile(r"\w+")


def word_count(text: str) -> int:
    """Number of words (``\\w+`` runs) of ``text``: the unit of every length ratio of the style and RL stages."""
    return len(_WORD_RUN.findall(text))


def normal_statement(text: str) -> str | None:
    """The first normal-study statement of an impression (labeler 'No Finding' mention), lower-case, or None."""
    for sentence in labeler.split_sentences(text):
        for m in labeler.find_mentions(sentence):
            if m.observation == "No Finding":
                return labeler.normalize_whitespace(m.text).lower()
    return None


def _first_match(patterns: Mapping[str, str | re.Pattern[str]], text: str) -> str:
    for name, rx in patterns.items():
        if (rx.search(text) if isinstance(rx, re.Pattern) else re.search(rx, text, re.IGNORECASE)):
            return name
    return "other"


def _onehot(prefix: str, options: Iterable[str], value: str) -> dict[str, float]:
    return {f"{prefix}={o}": float(o == value) for o in options}


_LEAD_OPTIONS = [*_LEADS, "other"]
_ADJ_OPTIONS = [*_ADJECTIVES, "other"]
_DOMAIN_OPTIONS = [*_DOMAINS, "other"]
_NOUN_OPTIONS = [*_NOUNS, "other"]


def style_features(text: str) -> dict[str, float]:
    """Content-independent style features of one impression (every value in [0, 1]).

    The normal-statement features are one-hot over its lead ("no", "no evidence of",
    "negative", "without", "normal"), adjective, domain and noun, and all zero when the
    impression has no normal statement. Counts are clipped and scaled to [0, 1].
    """
    if not isinstance(text, str):
        raise TypeError(f"expected an impression as str, got {type(text).__name__}")
    norm = labeler.normalize_whitespace(text)
    sentences = labeler.split_sentences(norm) or [norm]
    words = _WORDS.findall(norm)
    n_sent = len(sentences)
    nf = normal_statement(norm)
    feats: dict[str, float] = {"normal_statement": float(nf is not None)}
    if nf is None:
        for prefix, options in (("nf_lead", _LEAD_OPTIONS), ("nf_adj", _ADJ_OPTIONS),
                                ("nf_domain", _DOMAIN_OPTIONS), ("nf_noun", _NOUN_OPTIONS)):
            feats.update({f"{prefix}={o}": 0.0 for o in options})
    else:
        feats.update(_onehot("nf_lead", _LEAD_OPTIONS, _first_match(_LEADS, nf)))
        feats.update(_onehot("nf_adj", _ADJ_OPTIONS, _first_match(_ADJECTIVES, nf)))
        feats.update(_onehot("nf_domain", _DOMAIN_OPTIONS, _first_match(_DOMAINS, nf)))
        feats.update(_onehot("nf_noun", _NOUN_OPTIONS, _first_match(_NOUNS, nf)))
    feats.update({
        "numbered": float(bool(_NUMBERED.search(" " + norm))),
        "items": min(len(_ITEM.findall(" " + norm)), 4) / 4,
        "sentences": min(n_sent, 5) / 5,
        "log_words": min(math.log1p(len(words)) / math.log1p(60), 1.0),
        "words_per_sentence": min(len(words) / n_sent, 30) / 30,
        "double_period": float(bool(_DOUBLE_PERIOD.search(norm))),
        "no_final_period": float(not norm.rstrip().endswith((".", "?", "!"))),
        "commas": min(norm.count(",") / n_sent, 3) / 3,
        "semicolon_colon": float(";" in norm or ":" in norm),
        "hedges": min(len(_HEDGES.findall(norm)) / n_sent, 2) / 2,
        "there_is": float(bool(_THERE_IS.search(norm))),
        "comparison_words": float(bool(_COMPARISON.search(norm))),
        "upper_words": float(bool(_UPPER_WORD.search(norm))),
    })
    return feats


FEATURE_NAMES: list[str] = list(style_features("No acute disease."))


def feature_matrix(texts: Sequence[str]) -> np.ndarray:
    """``[n, len(FEATURE_NAMES)]`` float matrix of :func:`style_features`."""
    return np.array([[f[name] for name in FEATURE_NAMES] for f in map(style_features, texts)], dtype=float)


# --------------------------------------------------------------------------- content masking

#: Anatomy / location words (lower-case) replaced by ``<loc>`` before style classification.
ANATOMY_LEXICON = frozenset(["left", "right", "bilateral", "bilaterally", "unilateral", "upper", "lower", "middle", "mid", "lobe", "lobes", "lung", "lungs", "apex", "apices", "apical", "base", "bases", "basilar", "basal", "bibasilar", "hilar", "hilum", "hila", "perihilar", "lingula", "lingular", "retrocardiac", "costophrenic", "hemidiaphragm", "hemidiaphragms", "diaphragm", "mediastinum", "mediastinal", "heart", "cardiac", "pleural", "pleura", "chest", "thorax", "thoracic", "spine", "vertebral", "vertebra", "vertebrae", "rib", "ribs", "clavicle", "shoulder", "humerus", "sternum", "sternal", "aorta", "aortic", "trachea", "tracheal", "airway", "airways", "bronchial", "bronchovascular", "interstitial", "parenchymal", "paratracheal", "subcarinal", "axillary", "abdomen", "abdominal", "subdiaphragmatic", "upper", "quadrant", "lateral", "anterior", "posterior", "superior", "inferior", "medial", "peripheral", "central"])

_MEASURE = re.compile(r"\b\d+(?:\.\d+)?\s*(?:x\s*\d+(?:\.\d+)?\s*)?(?:cm|mm)\b", re.IGNORECASE)
_TOKEN = re.compile(r"[A-Za-z]+")


def mask_content(text: str) -> str:
    """The impression with its content replaced by placeholders: how it is written, not what it says.

    CheXpert observation mentions other than the normal-study statement (found by
    :func:`radimpress_lib.clinical.labeler.find_mentions`) become ``<obs>``, words of
    :data:`ANATOMY_LEXICON` become ``<loc>``, measurements ``<size>``. Negation and hedging
    cues, list numbering, punctuation and the normal-study phrase are kept.
    """
    out = []
    for sentence in labeler.split_sentences(text):
        spans = sorted((m.start, m.end) for m in labeler.find_mentions(sentence) if m.observation != "No Finding")
        pieces, pos = [], 0
        for start, end in spans:
            if start < pos:
                continue
            pieces.append(sentence[pos:start])
            pieces.append("<obs>")
            pos = end
        pieces.append(sentence[pos:])
        masked = _MEASURE.sub("<size>", "".join(pieces))
        masked = _TOKEN.sub(lambda m: "<loc>" if m.group(0).lower() in ANATOMY_LEXICON else m.group(0), masked)
        out.append(masked)
    return " ".join(out)


# --------------------------------------------------------------------------- groups


@dataclass
class StyleModel:
    """Radiologist groups fitted on the train split: how to assign a report, and each group's profile."""

    method: str  # "readers" | "clusters" (impressions only) | "radiologist_id"
    groups: list[str]
    profiles: dict[str, dict[str, Any]]
    k_scores: list[dict[str, float]] = field(default_factory=list)
    unseen: str | None = None
    seed: int = 0
    _kmeans: Any = None
    _order: dict[int, str] = field(default_factory=dict)
    _findings_clf: Any = None  # readers: content-masked findings phrasing -> group

    @property
    def k(self) -> int:
        """Number of groups."""
        return len(self.groups)

    @property
    def seen_groups(self) -> list[str]:
        """Groups the fine stage is trained on (all but the unseen one)."""
        return [g for g in self.groups if g != self.unseen]

    def assign(self, records: Sequence[Mapping[str, Any]]) -> list[str]:
        """Group of each record.

        * ``radiologist_id``: the record's id;
        * ``clusters``: the nearest cluster of its impression's style features;
        * ``readers``: the nearest cluster when the impression has a normal-study statement,
          otherwise the group the findings phrasing classifier gives its findings (the
          nearest cluster when the findings are empty).
        """
        if self.method == "radiologist_id":
            out = []
            for i, r in enumerate(records):
                rid = r.get("radiologist_id")
                if rid is None or not str(rid).strip():
                    raise ValueError(f"record {i} (report_id={r.get('report_id')!r}): field 'radiologist_id' is empty "
                                     "but the style groups are radiologist ids")
                out.append(str(rid))
            return out
        out = self.assign_texts([r["impression"] for r in records])
        if self.method == "readers":
            by_findings = [i for i, r in enumerate(records) if _route(r) == "findings_phrasing"]
            if by_findings:
                predicted = self._findings_clf.predict([mask_content(records[i]["findings"]) for i in by_findings])
                for i, g in zip(by_findings, predicted):
                    out[i] = str(g)
        return out

    def assign_texts(self, impressions: Sequence[str]) -> list[str]:
        """Nearest cluster of each impression's style features (cluster and reader methods)."""
        if self.method not in ("clusters", "readers"):
            raise ValueError("assign_texts needs a cluster method; radiologist ids come from the records")
        if not impressions:
            return []
        return [self._order[int(c)] for c in self._kmeans.predict(feature_matrix(impressions))]

    def reader_agreement(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """How well findings phrasing alone recovers the reader (``readers`` method).

        On the records whose impression has a normal-study statement (their group is known
        from the impression template), the share whose findings classifier group equals the
        template group, beside the majority-group share. Use held-out (validate) records.
        """
        if self.method != "readers":
            raise ValueError("reader_agreement needs the readers method")
        rows = [r for r in records if normal_statement(r["impression"]) is not None and (r.get("findings") or "").strip()]
        if not rows:
            return {"n": 0, "agreement": None, "majority": None}
        template = self.assign_texts([r["impression"] for r in rows])
        predicted = [str(g) for g in self._findings_clf.predict([mask_content(r["findings"]) for r in rows])]
        majority = Counter(template).most_common(1)[0][1] / len(rows)
        return {"n": len(rows), "agreement": float(np.mean([a == b for a, b in zip(template, predicted)])),
                "majority": float(majority)}

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable description (method, K, silhouette per K, group sizes, unseen group)."""
        return {"method": self.method, "k": self.k, "groups": self.groups, "unseen": self.unseen,
                "k_scores": self.k_scores,
                "sizes": {g: self.profiles[g]["n"] for g in self.groups}}

    def assignment_counts(self, records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        """How the records' groups were decided: by the impression template, by the findings phrasing, or by id."""
        if self.method == "radiologist_id":
            return {"radiologist_id": len(records)}
        if self.method == "clusters":
            return {"impression_template": len(records)}
        routes = Counter(map(_route, records))
        return {route: routes.get(route, 0) for route in _ROUTES}


_ROUTES = ("impression_template", "findings_phrasing", "impression_features_no_findings")


def _route(record: Mapping[str, Any]) -> str:
    """How the readers method decides a record's group (one of :data:`_ROUTES`)."""
    if normal_statement(record["impression"]) is not None:
        return "impression_template"
    return "findings_phrasing" if (record.get("findings") or "").strip() else "impression_features_no_findings"


def _profile(impressions: Sequence[str]) -> dict[str, Any]:
    feats = feature_matrix(impressions)
    col = {name: feats[:, i] for i, name in enumerate(FEATURE_NAMES)}
    statements = Counter(s for s in map(normal_statement, impressions) if s)
    n_words = [len(_WORDS.findall(t)) for t in impressions]
    n_sent = [len(labeler.split_sentences(t)) for t in impressions]
    return {
        "n": len(impressions),
        "normal_phrase": statements.most_common(1)[0][0] if statements else None,
        "normal_share": float(col["normal_statement"].mean()),
        "numbered_share": float(col["numbered"].mean()),
        "median_words": float(np.median(n_words)),
        "median_sentences": float(np.median(n_sent)),
        "hedge_share": float((col["hedges"] > 0).mean()),
        "double_period_share": float(col["double_period"].mean()),
    }


def _choose_unseen(profiles: Mapping[str, Mapping[str, Any]], groups: Sequence[str], unseen: str | None) -> str | None:
    if unseen is None or unseen == "none":
        return None
    if unseen != "auto":
        if unseen not in profiles:
            raise ValueError(f"style.unseen_group={unseen!r} is not one of the groups {list(groups)}")
        return unseen
    if len(groups) < 3:
        return None  # keep at least two seen groups for style pairs
    total = sum(p["n"] for p in profiles.values())
    # the smallest group that still holds >= 5% of the train reports (enough examples and test reports)
    candidates = [g for g in groups if profiles[g]["n"] >= 0.05 * total]
    return min(candidates, key=lambda g: (profiles[g]["n"], g)) if candidates else None


GROUP_METHODS = ("readers", "impressions")


def fit_style_groups(train_records: Sequence[Mapping[str, Any]], *, k_min: int = 3, k_max: int = 8,
                     seed: int = 0, silhouette_sample: int = 2000, unseen: str | None = "auto",
                     method: str = "readers", classifier_c: float = 4.0) -> StyleModel:
    """Pseudo-radiologist groups from the train reports (or their ``radiologist_id`` when present).

    Args:
        train_records: canonical train records (``impression``, ``findings``; ``radiologist_id``
            used when every record has one).
        k_min, k_max: range of K tried; the K with the highest mean silhouette wins (ties: smaller K).
        seed: k-means and silhouette-sample seed.
        silhouette_sample: impressions the silhouette is computed on (it is quadratic).
        unseen: group held out as the "unseen radiologist" (few-shot case): "auto" (the
            smallest group with >= 5% of the reports, when K >= 3), a group name, or None.
        method: "readers" (k-means on the impressions with a normal-study statement, the rest
            assigned by findings phrasing) or "impressions" (k-means on every impression); see
            the module docstring.
        classifier_c: inverse L2 strength of the findings phrasing classifier (readers).
    """
    if method not in GROUP_METHODS:
        raise ValueError(f"style.group_method={method!r}: expected one of {list(GROUP_METHODS)}")
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    if not train_records:
        raise ValueError("no train records to fit style groups on")
    impressions = [r["impression"] for r in train_records]
    ids = [r.get("radiologist_id") for r in train_records]
    if all(i is not None and str(i).strip() for i in ids):
        counts = Counter(map(str, ids))
        groups = [g for g, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))]
        profiles = {g: _profile([t for t, i in zip(impressions, ids) if str(i) == g]) for g in groups}
        return StyleModel("radiologist_id", groups, profiles, unseen=_choose_unseen(profiles, groups, unseen), seed=seed)
    if any(i is not None and str(i).strip() for i in ids):
        missing = sum(1 for i in ids if i is None or not str(i).strip())
        raise ValueError(f"{missing}/{len(ids)} train records lack 'radiologist_id': give it for every report "
                         "or for none (then style groups are induced by clustering)")
    if not 2 <= k_min <= k_max:
        raise ValueError(f"need 2 <= style.k_min <= style.k_max, got {k_min}, {k_max}")
    template = [normal_statement(t) is not None for t in impressions]
    clustered = [t for t, has in zip(impressions, template) if has] if method == "readers" else impressions
    what = "train impressions with a normal-study statement" if method == "readers" else "train impressions"
    x = feature_matrix(clustered) if clustered else np.zeros((0, len(FEATURE_NAMES)))
    n_distinct = len(np.unique(x, axis=0)) if len(x) else 0
    k_max = min(k_max, n_distinct, len(clustered) - 1)
    if k_max < k_min:
        raise ValueError(f"only {n_distinct} distinct style-feature vectors among {len(clustered)} {what}: "
                         f"cannot form {k_min} groups (style.group_method={method!r})")
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(x), size=min(silhouette_sample, len(x)), replace=False)
    scores, fits = [], {}
    for k in range(k_min, k_max + 1):
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
        labels = km.labels_[sample]
        s = float(silhouette_score(x[sample], labels)) if len(set(labels)) > 1 else -1.0
        scores.append({"k": k, "silhouette": round(s, 4), "inertia": float(km.inertia_)})
        fits[k] = km
    best = max(scores, key=lambda d: (d["silhouette"], -d["k"]))["k"]
    km = fits[best]
    findings_clf = None
    if method == "readers":
        with_findings = [(r["findings"], int(c)) for r, c in
                         zip((r for r, has in zip(train_records, template) if has), km.labels_)
                         if (r.get("findings") or "").strip()]
        if len({c for _, c in with_findings}) < 2:
            raise ValueError("style.group_method='readers' needs train findings for at least two template groups")
        findings_clf = _text_classifier(seed, classifier_c).fit(
            [mask_content(f) for f, _ in with_findings], [c for _, c in with_findings])
    model_method = "readers" if method == "readers" else "clusters"
    # Every train report's cluster number exactly as assign() decides it (the names R1.. follow
    # from the sizes, so a provisional model names each cluster by its number first).
    numbers = {c: str(c) for c in range(best)}
    provisional = StyleModel(model_method, list(numbers.values()), {}, _kmeans=km, _order=numbers,
                             _findings_clf=findings_clf)
    raw = [int(g) for g in provisional.assign(train_records)]
    sizes = Counter(raw)  # every cluster has members: k-means labels its own points
    order = {c: f"R{i + 1}" for i, (c, _) in enumerate(sorted(sizes.items(), key=lambda x: (-x[1], x[0])))}
    groups = [order[c] for c in sorted(order, key=lambda c: order[c][1:].zfill(3))]
    labels = [order[c] for c in raw]
    profiles = {g: _profile([t for t, lab in zip(impressions, labels) if lab == g]) for g in groups}
    if findings_clf is not None:
        findings_clf = _Relabel(findings_clf, order)
    return StyleModel(model_method, groups, profiles, k_scores=scores,
                      unseen=_choose_unseen(profiles, groups, unseen), seed=seed, _kmeans=km, _order=order,
                      _findings_clf=findings_clf)


@dataclass
class _Relabel:
    """A fitted classifier of cluster numbers that predicts group names."""

    pipeline: Any
    order: dict[int, str]

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.order[int(c)] for c in self.pipeline.predict(list(texts))]


def _text_classifier(seed: int, c: float):
    """TF-IDF word 1-2-grams (placeholders as tokens) + character 2-4-grams, logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(
        TfidfVectorizer(analyzer="word", ngram_range=(1, 2), token_pattern=r"<\w+>|\w+|[^\w\s]", lowercase=True,
                        sublinear_tf=True, min_df=2),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), lowercase=False, sublinear_tf=True, min_df=2),
    )
    return make_pipeline(features, LogisticRegression(C=c, max_iter=3000, random_state=seed))


def cluster_table(model: StyleModel) -> pd.DataFrame:
    """One row per group: size, share, normal phrase, numbering, length, hedging."""
    total = sum(p["n"] for p in model.profiles.values())
    rows = [{"group": g, "share": round(model.profiles[g]["n"] / total, 3), **model.profiles[g],
             "unseen": g == model.unseen} for g in model.groups]
    table = pd.DataFrame(rows).set_index("group")
    # A group without a normal-study phrase keeps None (pandas would turn it into NaN, which is not JSON).
    table["normal_phrase"] = table["normal_phrase"].astype(object).where(table["normal_phrase"].notna(), None)
    return table


def cluster_examples(model: StyleModel, records: Sequence[Mapping[str, Any]], k: int = 3, seed: int = 0) -> pd.DataFrame:
    """k seeded example impressions per group (from ``records``, e.g. the train split)."""
    groups = model.assign(records)
    rng = random.Random(seed)
    rows = []
    for g in model.groups:
        members = [r["impression"] for r, lab in zip(records, groups) if lab == g]
        for text in rng.sample(members, min(k, len(members))):
            rows.append({"group": g, "impression": text})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- classifier


@dataclass
class StyleClassifier:
    """TF-IDF (word 1-2-grams + character 2-4-grams) logistic regression on content-masked impressions."""

    pipeline: Any
    groups: list[str]

    def predict(self, impressions: Sequence[str]) -> list[str]:
        """Predicted group of each impression (masked here)."""
        if not impressions:
            return []
        return [str(g) for g in self.pipeline.predict([mask_content(t) for t in impressions])]

    def accuracy(self, impressions: Sequence[str], targets: Sequence[str]) -> float:
        """Share of impressions whose predicted group is the target group."""
        if len(impressions) != len(targets):
            raise ValueError(f"{len(impressions)} impressions for {len(targets)} targets")
        if not impressions:
            return float("nan")
        return float(np.mean([p == t for p, t in zip(self.predict(impressions), targets)]))


def fit_style_classifier(impressions: Sequence[str], groups: Sequence[str], *, seed: int = 0,
                         c: float = 4.0) -> StyleClassifier:
    """Fit the style classifier on (train) impressions and their groups."""
    if len(impressions) != len(groups):
        raise ValueError(f"{len(impressions)} impressions for {len(groups)} groups")
    if len(set(groups)) < 2:
        raise ValueError("the style classifier needs at least two groups")
    pipe = _text_classifier(seed, c)
    pipe.fit([mask_content(t) for t in impressions], list(groups))
    return StyleClassifier(pipe, sorted(set(groups)))


def group_checks(model: StyleModel, clf: StyleClassifier, splits: Mapping[str, Sequence[Mapping[str, Any]]]
                 ) -> pd.DataFrame:
    """Per split: how the groups were assigned and how recognisable each kind of report is.

    Columns: ``n``; the :meth:`StyleModel.assignment_counts`; the style classifier's accuracy
    on the references overall, on those with a normal-study statement (``acc_template``) and on
    those without (``acc_no_template``: readers' abnormal impressions, the hard case); and for
    the readers method the findings-phrasing agreement with the impression template and the
    majority share it is to be compared with.
    """
    rows = []
    for name, records in splits.items():
        records = list(records)
        groups = model.assign(records)
        has = [normal_statement(r["impression"]) is not None for r in records]
        hit = [p == g for p, g in zip(clf.predict([r["impression"] for r in records]), groups)]
        row: dict[str, Any] = {"split": name, "n": len(records), **model.assignment_counts(records),
                               "acc": float(np.mean(hit)) if hit else None}
        for key, want in (("acc_template", True), ("acc_no_template", False)):
            sub = [h for h, t in zip(hit, has) if t == want]
            row[key] = float(np.mean(sub)) if sub else None
        if model.method == "readers":
            agreement = model.reader_agreement(records)
            row["findings_vs_template_agreement"] = agreement["agreement"]
            row["majority_share"] = agreement["majority"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("split")


# --------------------------------------------------------------------------- style strings


def style_prefix(model: StyleModel, group: str) -> str:
    """Style slot for a radiologist seen in training: the id and a one-line description of their habits."""
    if group not in model.profiles:
        raise KeyError(f"unknown radiologist group {group!r}; known: {model.groups}")
    p = model.profiles[group]
    sent = round(p["median_sentences"])
    parts = [f"Radiologist {group}.", f"About {round(p['median_words'])} words, {sent} sentence{'s' * (sent != 1)}"]
    parts[-1] += ", numbered list." if p["numbered_share"] >= 0.5 else ", prose."
    if p["normal_phrase"]:
        parts.append(f"Normal study: \"{p['normal_phrase'][:1].upper()}{p['normal_phrase'][1:]}.\"")
    if p["hedge_share"] >= 0.25:
        parts.append("Hedges uncertain findings.")
    return " ".join(parts)


def fewshot_style(model: StyleModel, group: str, pool: Sequence[Mapping[str, Any]], k: int = 3, seed: int = 0,
                  max_chars: int = 200) -> str:
    """Style slot for a radiologist not seen in training: k of their impressions as examples.

    ``pool`` must hold train/validate records only (never test); examples are drawn seeded from
    the records of ``group`` (shortest-first among a seeded sample, so the prompt stays short).
    """
    splits = {r.get("split") for r in pool}
    if "test" in splits:
        raise ValueError("few-shot style examples must come from train/validate records, not the test split")
    members = [r["impression"].strip() for r, g in zip(pool, model.assign(pool)) if g == group]
    members = [m for m in dict.fromkeys(members) if len(m) <= max_chars]
    if not members:
        raise ValueError(f"no impressions of group {group!r} (<= {max_chars} characters) in the pool")
    rng = random.Random(seed)
    chosen = rng.sample(members, min(k, len(members)))
    lines = "\n".join(f"- {t}" for t in chosen)
    return f"Radiologist {group}. Example impressions by this radiologist:\n{lines}"


# --------------------------------------------------------------------------- restyling (style pairs)

_LIST_PREFIX = re.compile(r"^\s*\d{1,2}[.)]\s*")


def restyle(impression: str, model: StyleModel, group: str) -> str:
    """The impression rewritten in ``group``'s template: its normal phrase and its numbering habit.

    Content is kept: only the normal-study sentence is replaced by the group's phrase, and
    sentences are numbered (or un-numbered) as the group usually does. Used for style pairs
    when no same-content impression of another group exists.
    """
    p = model.profiles[group]
    sentences = [_LIST_PREFIX.sub("", s).strip() for s in labeler.split_sentences(impression)]
    out = []
    for s in sentences:
        if p["normal_phrase"] and any(m.observation == "No Finding" for m in labeler.find_mentions(s)):
            s = p["normal_phrase"][:1].upper() + p["normal_phrase"][1:] + "."
        out.append(s if s.endswith((".", "?", "!")) else s + ".")
    if p["numbered_share"] >= 0.5:
        return " ".join(f"{i}. {s}" for i, s in enumerate(out, start=1))
    return " ".join(out)


# --------------------------------------------------------------------------- notebook entry point


def fit_for_run(train_records: Sequence[Mapping[str, Any]], params: Any, *, classifier: bool = True
                ) -> tuple[StyleModel, StyleClassifier | None]:
    """The run's style groups and (optionally) style classifier, fitted on the train split with its ``style_*`` settings.

    Deterministic for a given seed, so notebooks 01, 03, 04 and 05 refit the same groups.
    """
    if any(r.get("split") == "test" for r in train_records):
        raise ValueError("style groups are fitted on train reports only")
    s, seed = params.style, params.run.seed
    model = fit_style_groups(train_records, k_min=s.k_min, k_max=s.k_max, seed=seed,
                             silhouette_sample=s.silhouette_sample, unseen=s.unseen_group,
                             method=s.group_method, classifier_c=s.classifier_c)
    clf = None
    if classifier:
        clf = fit_style_classifier([r["impression"] for r in train_records], model.assign(train_records), seed=seed,
                                   c=s.classifier_c)
    return model, clf


def plot_k_scores(model: StyleModel):
    """Mean silhouette against K (the chosen K marked)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    ks = [d["k"] for d in model.k_scores]
    ax.plot(ks, [d["silhouette"] for d in model.k_scores], marker="o")
    ax.axvline(model.k, color="grey", ls="--", lw=1, label=f"chosen K = {model.k}")
    ax.set_xlabel("K (k-means on style features)")
    ax.set_ylabel("mean silhouette")
    ax.set_title("Choosing the number of pseudo-radiologists")
    ax.legend()
    fig.tight_layout()
    return fig
