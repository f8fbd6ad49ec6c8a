"""Retrieval: the TF-IDF nearest-report baseline and the retrieval context of the prompts."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from radimpress_lib.clinical.graph import with_findings_graph
from radimpress_lib.core.config import Params
from radimpress_lib.data import normalize_findings
from radimpress_lib.data.loading import load_data

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

    def fit(self, findings: Sequence[str], impressions: Sequence[str],
            ids: Sequence[str | None] | None = None) -> RetrievalBaseline:
        """Index training findings and remember their impressions (and report ids, for ``exclude_ids``)."""
        _check_strings(findings, "training findings")
        _check_strings(impressions, "training impression")
        if len(findings) != len(impressions):
            raise ValueError(f"{len(findings)} training findings but {len(impressions)} impressions")
        if len(findings) == 0:
            raise ValueError("no training reports")

        self._matrix = self.vectorizer.fit_transform(list(findings))
        self._impressions = list(impressions)
        self._findings_keys = [normalize_findings(f) for f in findings]
        self._by_findings: dict[str, list[int]] = {}
        for j, key in enumerate(self._findings_keys):
            self._by_findings.setdefault(key, []).append(j)
        self._ids = [None if i is None else str(i) for i in ids] if ids is not None else [None] * len(findings)
        if len(self._ids) != len(findings):
            raise ValueError(f"{len(findings)} training findings but {len(self._ids)} ids")
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

    def same_findings_impressions(self, findings_list: Sequence[str], k: int, *,
                                  exclude_ids: Sequence[str | None] | None = None) -> list[list[str]]:
        """Per query, the distinct impressions (at most ``k``, in pool order) of the pool reports whose normalised
        findings equal the query's (its twins); never the query itself (``exclude_ids``, as in
        :meth:`similar_impressions`). Empty when the pool holds no twin."""
        if self._matrix is None:
            raise RuntimeError("RetrievalBaseline.fit must be called before predicting")
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        _check_strings(findings_list, "query findings")
        out: list[list[str]] = []
        for row, query in enumerate(findings_list):
            qid = None if exclude_ids is None or exclude_ids[row] is None else str(exclude_ids[row])
            chosen: list[str] = []
            seen: set[str] = set()
            for j in self._by_findings.get(normalize_findings(query), ()):
                key = normalize_impression(self._impressions[j])
                if (qid is not None and self._ids[j] == qid) or key in seen:
                    continue
                seen.add(key)
                chosen.append(self._impressions[j])
                if len(chosen) == k:
                    break
            out.append(chosen)
        return out

    def similar_impressions(
        self, findings_list: Sequence[str], k: int, *, exclude_same_findings: bool = True,
        exclude_ids: Sequence[str | None] | None = None, chunk: int = 512
    ) -> list[list[str]]:
        """The ``k`` most similar *distinct* training impressions per query, most similar first.

        With ``exclude_same_findings`` a training report whose normalised findings equal the
        query's is never returned: that removes the query itself when the pool is its own
        training set (leave-one-out) and copies of it, so training sees the situation of
        the test split, whose copies the leakage guard removed from the pool. Without it
        (the published protocol), a report with identical findings may be returned, but never
        the query itself: ``exclude_ids`` (one report id per query, or None) names it.
        Impressions are distinct after :func:`normalize_impression`.
        """
        if self._matrix is None:
            raise RuntimeError("RetrievalBaseline.fit must be called before predicting")
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        _check_strings(findings_list, "query findings")

        keys = [normalize_impression(t) for t in self._impressions]
        out: list[list[str]] = []
        for start in range(0, len(findings_list), chunk):
            part = list(findings_list[start: start + chunk])
            sims = (self.vectorizer.transform(part) @ self._matrix.T).toarray()
            for row, query in enumerate(part):
                qkey = normalize_findings(query) if exclude_same_findings else None
                qid = None if exclude_ids is None or exclude_ids[start + row] is None else str(exclude_ids[start + row])
                chosen: list[str] = []
                seen: set[str] = set()
                # stable sort: ties go to the earliest training report, as in predict()
                for j in np.argsort(-sims[row], kind="stable"):
                    if qkey is not None and self._findings_keys[j] == qkey:
                        continue
                    if qid is not None and self._ids[j] == qid:
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

    Retrieval-augmented prompting (see :func:`radimpress_lib.llm.prompting.build_messages`):
    TF-IDF neighbours over the pool's findings. By default (the deduplicated protocol) never a pool
    report with the same normalised findings as the query (so a training pool can serve its own
    examples, leave-one-out, and training sees the situation of the test split, whose copies the
    leakage guard removed). With ``same_findings`` (the published protocol, as the paper's in-context
    examples) neighbours may have identical findings, but a record is never its own neighbour (same
    ``report_id``). The index is built once; calling the object on a batch of records returns copies
    of them with the field set. ``pool`` must never hold test reports.
    """

    def __init__(self, pool: Sequence[Mapping[str, Any]] | Any, k: int, *, same_findings: bool = False) -> None:
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        pool_rows = list(pool)
        self.k = k
        self.same_findings = same_findings
        self.n_pool = len(pool_rows)
        self.index = RetrievalBaseline().fit([r["findings"] for r in pool_rows], [r["impression"] for r in pool_rows],
                                             [r.get("report_id") for r in pool_rows])

    def __call__(self, records: Sequence[Mapping[str, Any]] | Any) -> list[dict[str, Any]]:
        rows = [dict(r) for r in records]
        if rows:
            similar = self.index.similar_impressions(
                [r["findings"] for r in rows], self.k, exclude_same_findings=not self.same_findings,
                exclude_ids=[r.get("report_id") for r in rows] if self.same_findings else None)
            for row, sims in zip(rows, similar):
                row["similar_impressions"] = sims
        return rows


def with_similar_impressions(
    records: Sequence[Mapping[str, Any]] | Any, pool: Sequence[Mapping[str, Any]] | Any, k: int, *,
    same_findings: bool = False,
) -> list[dict[str, Any]]:
    """``records`` (as dicts) with ``similar_impressions`` from ``pool`` (see :class:`RetrievalContext`;
    ``same_findings``: the published protocol's rule).

    ``k == 0`` returns the records unchanged (as dicts).
    """
    if k == 0:
        return [dict(r) for r in records]
    return RetrievalContext(pool, k, same_findings=same_findings)(records)


def with_prompt_context(params: Params, records, pool, *, graph_variant: str | None = None,
                        protocol: str = "deduplicated"):
    """``records`` as dicts with the prompt context the run's SFT model is trained with.

    * ``sft.retrieval_k > 0``: the impressions of the k nearest ``pool`` reports
      (:func:`radimpress_lib.llm.retrieval.with_similar_impressions`); under ``protocol``
      ``deduplicated`` never one with the query's findings, under ``published`` (protocol A, train as
      given) possibly one with identical findings, never the query report itself;
    * graph variant ``text``: the linearised entity graph of the findings
      (:func:`radimpress_lib.clinical.graph.with_findings_graph`).

    ``graph.variant`` overrides ``params.graph.variant`` (notebook 09 builds each variant);
    ``none`` and ``gnn`` add no text (the GNN reads the graph itself). ``pool`` is the training
    split when building training/validation examples and train+validate for the test split; it
    never holds test reports.
    """
    if protocol not in ("deduplicated", "published"):
        raise ValueError(f"protocol must be deduplicated or published, got {protocol!r}")
    pool = list(pool)
    _check_pool(pool)
    rows = with_similar_impressions(records, pool, params.sft.retrieval_k, same_findings=protocol == "published")
    return _with_graph_text(params, rows, graph_variant)


def _with_graph_text(params: Params, rows, graph_variant: str | None):
    variant = graph_variant or params.graph.variant
    if variant not in ("none", "text", "gnn"):
        raise ValueError(f"graph variant must be none, text or gnn, got {variant!r}")
    if variant != "text":
        return [dict(r) for r in rows]

    return with_findings_graph(rows, include_normal=params.graph.include_normal,
                               max_items=params.graph.max_items)


def _check_pool(pool) -> None:
    if any(r.get("split") == "test" for r in pool):
        raise ValueError("the retrieval pool holds test-split reports; use train (+validate) only")


def run_pool(params: Params) -> list[dict[str, Any]]:
    """The run's train + validate reports (from its data folder): what a new report's neighbours come from."""
    dsd, _info = load_data(params)
    pool = list(dsd["train"]) + list(dsd["validate"])
    _check_pool(pool)
    return pool


def prompt_context_for_run(params: Params, pool: Sequence[Mapping[str, Any]] | None = None):
    """The run's prompt context for new reports (records -> records), or None when it adds nothing.

    Used where the SFT model drafts reports outside the notebooks (``radimpress draft``): it needs
    the same prompt context as in training (:func:`with_prompt_context`), so with
    ``sft.retrieval_k > 0`` the run's data folder must be available (train + validate pool,
    :func:`run_pool`; or ``pool``, that pool loaded already).
    The returned callable has ``description`` (one line for logs).
    """
    k = params.sft.retrieval_k
    graph_text = params.graph.variant == "text"
    if not k and not graph_text:
        return None
    retrieval = None
    if k:
        retrieval = RetrievalContext(run_pool(params) if pool is None else pool, k)

    def context(records):
        rows = retrieval(records) if retrieval is not None else [dict(r) for r in records]
        return _with_graph_text(params, rows, None)

    parts = ([f"{k} similar impressions from {retrieval.n_pool} train+validate reports"] if retrieval else []) + (
        ["linearised findings graph"] if graph_text else [])
    context.description = "; ".join(parts)
    return context
