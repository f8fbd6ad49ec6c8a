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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

__all__ = ["normalize_impression", "majority_baseline", "RetrievalBaseline", "RetrievalContext", "with_similar_impressions"]

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
        from radimpress_lib.data import normalize_findings

        self._matrix = self.vectorizer.fit_transform(list(findings))
        self._impressions = list(impressions)
        self._findings_keys = [normalize_findings(f) for f in findings]
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

    def similar_impressions(
        self, findings_list: Sequence[str], k: int, *, exclude_same_findings: bool = True, chunk: int = 512
    ) -> list[list[str]]:
        """The ``k`` most similar *distinct* training impressions per query, most similar first.

        With ``exclude_same_findings`` a training report whose normalised findings equal the
        query's is never returned: that removes the query itself when the pool is its own
        training set (leave-one-out) and copies of it, so training sees the situation of
        the test split, whose copies the leakage guard removed from the pool.
        Impressions are distinct after :func:`normalize_impression`.
        """
        if self._matrix is None:
            raise RuntimeError("RetrievalBaseline.fit must be called before predicting")
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        _check_strings(findings_list, "query findings")
        from radimpress_lib.data import normalize_findings

        keys = [normalize_impression(t) for t in self._impressions]
        out: list[list[str]] = []
        for start in range(0, len(findings_list), chunk):
            part = list(findings_list[start: start + chunk])
            sims = (self.vectorizer.transform(part) @ self._matrix.T).toarray()
            for row, query in enumerate(part):
                qkey = normalize_findings(query) if exclude_same_findings else None
                chosen: list[str] = []
                seen: set[str] = set()
                # stable sort: ties go to the earliest training report, as in predict()
                for j in np.argsort(-sims[row], kind="stable"):
                    if qkey is not None and self._findings_keys[j] == qkey:
                        continue
                    if keys[j] in seen:
                        continue
                    seen.add(keys[j])
                    chosen.append(self._impressions[j])
                    if len(chosen) == k:
                        break
                out.append(chosen)
        return out


class RetrievalContext:
    """Adds ``similar_impressions`` (the ``k`` nearest distinct impressions of ``pool``) to records.

    Retrieval-augmented prompting (see :func:`radimpress_lib.prompting.build_messages`):
    TF-IDF neighbours over the pool's findings, never a pool report with the same normalised
    findings as the query (so a training pool can serve its own examples, leave-one-out).
    The index is built once; calling the object on a batch of records returns copies of
    them with the field set. ``pool`` must never hold test reports.
    """

    def __init__(self, pool: Sequence[Mapping[str, Any]] | Any, k: int) -> None:
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        pool_rows = list(pool)
        self.k = k
        self.n_pool = len(pool_rows)
        self.index = RetrievalBaseline().fit([r["findings"] for r in pool_rows], [r["impression"] for r in pool_rows])

    def __call__(self, records: Sequence[Mapping[str, Any]] | Any) -> list[dict[str, Any]]:
        rows = [dict(r) for r in records]
        if rows:
            similar = self.index.similar_impressions([r["findings"] for r in rows], self.k)
            for row, sims in zip(rows, similar):
                row["similar_impressions"] = sims
        return rows


def with_similar_impressions(
    records: Sequence[Mapping[str, Any]] | Any, pool: Sequence[Mapping[str, Any]] | Any, k: int
) -> list[dict[str, Any]]:
    """``records`` (as dicts) with ``similar_impressions`` from ``pool`` (see :class:`RetrievalContext`).

    ``k == 0`` returns the records unchanged (as dicts).
    """
    if k == 0:
        return [dict(r) for r in records]
    return RetrievalContext(pool, k)(records)
