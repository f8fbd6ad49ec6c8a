"""Two non-LLM reference points for impression generation.

* :func:`majority_baseline`: always answer the most frequent training
  impression (after normalisation), in its most common written form.
* :class:`RetrievalBaseline`: nearest-neighbour retrieval. Training findings
  are embedded with scikit-learn TF-IDF (word 1-2-grams, sublinear tf,
  lower-cased, L2-normalised); a new report gets the impression of the
  training report whose findings are most cosine-similar to its findings.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

__all__ = ["normalize_impression", "majority_baseline", "RetrievalBaseline"]

_LIST_MARKER = re.compile(r"(?:(?<=\s)|^)\d{1,2}[.)](?=\s)")
_TRAILING = re.compile(r"[\s.;,:]+$")
_WS = re.compile(r"\s+")


def _check_strings(values: Sequence[str], what: str, *, allow_empty: bool = False) -> None:
    if isinstance(values, str):
        raise TypeError(f"{what} must be a sequence of strings, not a single string")
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise TypeError(f"{what} #{i}: expected str, got {type(v).__name__}")
        if not allow_empty and not v.strip():
            raise ValueError(f"{what} #{i} is empty")


def normalize_impression(text: str) -> str:
    """Key under which impressions are counted as "the same".

    Lower-cases, drops list markers ("1.", "2)"), collapses whitespace and
    strips trailing punctuation, so "1. No acute disease. ." and
    "No acute disease" share a key.
    """
    t = _LIST_MARKER.sub(" ", text.lower())
    t = _WS.sub(" ", t).strip()
    return _TRAILING.sub("", t)


def majority_baseline(train_impressions: Sequence[str]) -> str:
    """Most frequent normalised impression, returned in its most common surface form.

    Surface forms are compared after whitespace normalisation; ties are broken
    by first occurrence.
    """
    _check_strings(train_impressions, "train impression")
    if len(train_impressions) == 0:
        raise ValueError("no training impressions")
    surfaces: dict[str, Counter[str]] = {}
    keys: Counter[str] = Counter()
    for text in train_impressions:
        key = normalize_impression(text)
        keys[key] += 1
        surfaces.setdefault(key, Counter())[_WS.sub(" ", text).strip()] += 1
    best_key = keys.most_common(1)[0][0]
    return surfaces[best_key].most_common(1)[0][0]


class RetrievalBaseline:
    """TF-IDF nearest-neighbour retrieval of a training impression.

    Parameters are passed to :class:`sklearn.feature_extraction.text.TfidfVectorizer`;
    the defaults are word 1-2-grams, ``sublinear_tf=True``, ``lowercase=True``,
    ``min_df=1``. Ties in similarity go to the earliest training report.
    """

    def __init__(
        self, *, ngram_range: tuple[int, int] = (1, 2), sublinear_tf: bool = True, **tfidf_kwargs: Any
    ) -> None:
        self.vectorizer = TfidfVectorizer(
            ngram_range=ngram_range, sublinear_tf=sublinear_tf, lowercase=True, **tfidf_kwargs
        )
        self._matrix: Any = None
        self._impressions: list[str] = []

    def fit(self, findings: Sequence[str], impressions: Sequence[str]) -> RetrievalBaseline:
        """Index training findings and remember their impressions."""
        _check_strings(findings, "training findings")
        _check_strings(impressions, "training impression")
        if len(findings) != len(impressions):
            raise ValueError(f"{len(findings)} training findings but {len(impressions)} impressions")
        if len(findings) == 0:
            raise ValueError("no training reports")
        self._matrix = self.vectorizer.fit_transform(list(findings))
        self._impressions = list(impressions)
        return self

    def neighbours(self, findings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Index of the nearest training report and its cosine similarity, per query."""
        if self._matrix is None:
            raise RuntimeError("RetrievalBaseline.fit must be called before predicting")
        _check_strings(findings, "query findings")
        if len(findings) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        sims = (self.vectorizer.transform(list(findings)) @ self._matrix.T).toarray()
        best = sims.argmax(axis=1)
        return best.astype(np.int64), sims[np.arange(len(best)), best]

    def predict(self, findings_list: Sequence[str]) -> list[str]:
        """Impression of the nearest training report for each query findings text."""
        best, _ = self.neighbours(findings_list)
        return [self._impressions[i] for i in best]
