"""Review triage: which drafts a radiologist must look at, ranked by a review-risk score.

A draft is only safe in a reading workflow if the drafts that are wrong get looked at. This module

* labels each draft against its **reference** impression (:func:`error_label`, evaluation only): a
  *significant error* is a finding the reference states positive that the draft leaves out
  (``missed``) or negates (``negated``), or a finding the draft states positive that the reference
  does not (``unsupported``); *missed abnormal* is the subset of drafts missing or negating an
  abnormal finding (not ``No Finding`` / ``Support Devices``). Labels come from our CheXpert-style
  **rule** labeler (:mod:`radimpress_lib.clinical.labeler`), not CheXbert: its errors are in every
  number here;
* builds a **review-risk score** from signals available at drafting time only (never the
  reference), in groups (:data:`SIGNAL_GROUPS`; the ablation drops one group at a time):

  - ``checks``: labeler / entity-graph checks of the draft against its findings, omissions
    included, by kind and by finding (:func:`radimpress_lib.clinical.checks.draft_signals`);
  - ``prior``: how likely the *reference* impression of such findings states each finding, from a
    per-finding logistic regression fitted on the **train** split's findings -> impression labels
    (:class:`ReferencePrior`), against what the draft states (expected missed / unsupported findings);
  - ``neighbours``: disagreement with the impressions of the most similar train reports (the
    retrieval context the prompt already carries);
  - ``uncertainty``: the model's own token log-probabilities and next-token entropies of the
    greedy draft (:class:`radimpress_lib.llm.generation.TokenStatsRecorder`, free at decoding time)
    and whether decoding hit the token limit;
  - ``candidates`` (optional, ``eval.triage_candidates``): disagreement of the draft with sampled
    alternative impressions (an extra decode);
  - ``complexity``: findings length and number of findings present;
  - ``pseudo``: the error risk a :class:`PseudoDraftModel` gives the draft, a logistic regression of the
    ``checks`` / ``prior`` / ``complexity`` signals fitted on thousands of **train** reports whose "draft"
    is the impression of their nearest other train report (the retrieval baseline left one out), labelled
    against their own reference: a prior over which disagreements with the findings are errors, learnt
    from far more drafts than the few hundred validate ones (``eval.triage_pseudo_k``);

* fits a :class:`RiskModel` (scikit-learn logistic regression on standardised signals, regularisation
  chosen by stratified cross-validation) on the model's drafts of the **validate** split, chooses the
  operating threshold there (:func:`choose_operating_point`: the smallest flag rate whose
  cross-validated recall reaches the targets, never above the review budget), and saves it as
  readable JSON (coefficients, feature names, threshold, the validate recall-vs-flag-rate curve; never
  a pickle) for ``radimpress draft``;
* evaluates it on the test split (:func:`triage_metrics`, :func:`recall_curve`): recall (share of
  erroneous drafts flagged), precision, flag rate, recall of missed abnormal findings, ROC AUC, with
  bootstrap CIs, beside the rule flags of the CLI (:func:`rule_flags`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from radimpress_lib.clinical import checks, labeler
from radimpress_lib.clinical.checks import CHECK_SIGNALS, COMPLEXITY_SIGNALS, NEIGHBOUR_SIGNALS, TRIAGE_OBSERVATIONS
from radimpress_lib.core.jsonio import write_json
from radimpress_lib.evaluation.metrics import bootstrap_indices
from radimpress_lib.llm import retrieval

__all__ = [
    "ABNORMAL",
    "DraftTriage",
    "HARD_REASONS",
    "PseudoDraftModel",
    "SIGNAL_GROUPS",
    "ReferencePrior",
    "RiskModel",
    "choose_operating_point",
    "budget_count",
    "error_label",
    "worklist_flags",
    "error_labels",
    "feature_table",
    "fit_risk_model",
    "recalibrated",
    "recall_curve",
    "rule_flags",
    "triage_metrics",
]

#: Format tag of a saved risk model (where notebook 05 saves it: :func:`radimpress_lib.core.artifacts.risk_model_file`).
RISK_MODEL_FORMAT = "radimpress-risk-model/1"

#: Findings whose omission counts as a *missed abnormality* (not No Finding, not Support Devices).
ABNORMAL: tuple[str, ...] = tuple(o for o in TRIAGE_OBSERVATIONS if o != "Support Devices")

PRIOR_SIGNALS: tuple[str, ...] = ("prior_missing", "prior_missing_max", "prior_extra", "prior_any_error", "prior_logit")
UNCERTAINTY_SIGNALS: tuple[str, ...] = ("logprob_mean", "logprob_min", "logprob_sum", "entropy_mean",
                                        "entropy_max", "low_confidence_tokens", "truncated")
CANDIDATE_SIGNALS: tuple[str, ...] = ("candidates_label_disagreement", "candidates_text_distance")
PSEUDO_SIGNALS: tuple[str, ...] = ("pseudo_risk",)

#: Signal groups, in the order of the feature vector.
SIGNAL_GROUPS: dict[str, tuple[str, ...]] = {
    "checks": CHECK_SIGNALS,
    "prior": PRIOR_SIGNALS,
    "neighbours": NEIGHBOUR_SIGNALS,
    "uncertainty": UNCERTAINTY_SIGNALS,
    "candidates": CANDIDATE_SIGNALS,
    "complexity": COMPLEXITY_SIGNALS,
    "pseudo": PSEUDO_SIGNALS,
}

#: Groups a :class:`PseudoDraftModel` reads (neighbour signals left out: its drafts are neighbours' impressions).
PSEUDO_INPUT_GROUPS: tuple[str, ...] = ("checks", "prior", "complexity")

_PRESENT = (labeler.POSITIVE, labeler.UNCERTAIN)

#: Reasons that put a draft up for review whatever its risk: a study the model was not trained on, an
#: empty draft, a draft cut at the token limit (``radimpress draft`` and the evaluation alike).
HARD_REASONS: tuple[str, ...] = ("out_of_scope", "empty_draft", "truncated")


# --------------------------------------------------------------------------- the error label (reference-based)


def error_label(reference: str, draft: str, *, labels: Mapping[str, Mapping[str, str]] | None = None
                ) -> dict[str, Any]:
    """Whether ``draft`` has a significant error against ``reference`` (our rule labeler on both).

    ``missed``: findings the reference states positive that the draft does not mention;
    ``negated``: ... that the draft negates; ``unsupported``: findings the draft states positive that the
    reference does not mention or negates (an uncertain mention on either side is neither).
    ``significant``: any of the three; ``missed_abnormal``: a missed or negated finding other than
    Support Devices. ``No Finding`` is read through the others.
    """
    ref = labels["reference"] if labels else labeler.label_report(reference)
    out = labels["draft"] if labels else labeler.label_report(draft)
    missed = [o for o in TRIAGE_OBSERVATIONS if ref[o] == labeler.POSITIVE and out[o] == labeler.ABSENT]
    negated = [o for o in TRIAGE_OBSERVATIONS if ref[o] == labeler.POSITIVE and out[o] == labeler.NEGATIVE]
    unsupported = [o for o in TRIAGE_OBSERVATIONS
                   if out[o] == labeler.POSITIVE and ref[o] in (labeler.ABSENT, labeler.NEGATIVE)]
    return {"missed": missed, "negated": negated, "unsupported": unsupported,
            "significant": bool(missed or negated or unsupported),
            "missed_abnormal": any(o in ABNORMAL for o in missed + negated)}


def error_labels(references: Sequence[str], drafts: Sequence[str]) -> pd.DataFrame:
    """:func:`error_label` per draft: columns ``significant``, ``missed_abnormal``, ``missed``, ``negated``,
    ``unsupported`` (lists)."""
    if len(references) != len(drafts):
        raise ValueError(f"{len(drafts)} drafts for {len(references)} references")
    return pd.DataFrame([error_label(r, d) for r, d in zip(references, drafts)],
                        columns=["significant", "missed_abnormal", "missed", "negated", "unsupported"])


# --------------------------------------------------------------------------- signals


class ReferencePrior:
    """P(the reference impression states finding *o* positive | findings), one logistic regression per finding.

    Fitted on a training split's findings -> impression labels (our labeler on the impressions): word
    1-2-gram TF-IDF of the findings plus the labeler's status of every finding in them. It knows
    which findings radiologists carry into the impression (an effusion nearly always, a granuloma
    rarely, "pneumonia" inferred from an opacity), which the omission checks alone do not. Never
    fitted on the reports it is applied to (train for validate and test drafts).
    """

    def __init__(self, *, c: float = 4.0, min_df: int = 2, min_positive: int = 3) -> None:
        self.c, self.min_df, self.min_positive = c, min_df, min_positive
        self.models: dict[str, Any] = {}
        self.base_rate: dict[str, float] = {}
        self.vectorizer: Any = None
        self.n_train = 0

    @staticmethod
    def _status_matrix(findings: Sequence[str]) -> np.ndarray:
        rows = []
        for text in findings:
            lab = labeler.label_report(text)
            rows.append([float(lab[o] == s) for o in TRIAGE_OBSERVATIONS for s in labeler.STATUSES[:3]])
        return np.asarray(rows, dtype=np.float64).reshape(len(findings), -1)

    def _design(self, findings: Sequence[str]) -> Any:
        return sparse.hstack([self.vectorizer.transform(list(findings)),
                              sparse.csr_matrix(self._status_matrix(findings))]).tocsr()

    def fit(self, records: Sequence[Mapping[str, Any]]) -> ReferencePrior:
        findings = [r["findings"] for r in records]
        if not findings:
            raise ValueError("ReferencePrior needs training reports")
        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=min(self.min_df, len(findings)),
                                          sublinear_tf=True)
        self.vectorizer.fit(findings)
        x = self._design(findings)
        labels = [labeler.label_report(r["impression"]) for r in records]
        self.n_train = len(records)
        for obs in TRIAGE_OBSERVATIONS:
            y = np.array([lab[obs] == labeler.POSITIVE for lab in labels])
            self.base_rate[obs] = float(y.mean())
            if y.sum() >= self.min_positive and (~y).sum() >= self.min_positive:
                self.models[obs] = LogisticRegression(C=self.c, max_iter=2000).fit(x, y)
        return self

    def predict(self, findings: Sequence[str]) -> pd.DataFrame:
        """``[n, finding]`` probabilities that the reference states each finding positive."""
        if self.vectorizer is None:
            raise RuntimeError("ReferencePrior.fit must be called first")
        if not findings:
            return pd.DataFrame(columns=list(TRIAGE_OBSERVATIONS), dtype=float)
        x = self._design(findings)
        return pd.DataFrame({o: (self.models[o].predict_proba(x)[:, 1] if o in self.models
                                 else np.full(len(findings), self.base_rate[o])) for o in TRIAGE_OBSERVATIONS})


def prior_signals(probs: Mapping[str, float], draft_labels: Mapping[str, str]) -> dict[str, float]:
    """Expected disagreement of the draft with the reference the prior predicts (:data:`PRIOR_SIGNALS`).

    ``prior_missing``: sum over findings the draft does not state of P(reference states it);
    ``prior_missing_max``: the largest such term; ``prior_extra``: sum over findings the draft states
    positive of P(reference does not); ``prior_any_error``: 1 - prod(1 - each term), the probability of a
    significant error if the prior were right and the findings independent; ``prior_logit``: its log-odds
    (what a logistic regression combines linearly).
    """
    missing = [float(probs[o]) for o in TRIAGE_OBSERVATIONS if draft_labels[o] not in _PRESENT]
    extra = [1.0 - float(probs[o]) for o in TRIAGE_OBSERVATIONS if draft_labels[o] == labeler.POSITIVE]
    any_error = 1.0 - float(np.prod([1.0 - p for p in missing + extra]))
    clipped = min(max(any_error, 1e-4), 1.0 - 1e-4)
    return {"prior_missing": sum(missing), "prior_missing_max": max(missing, default=0.0),
            "prior_extra": sum(extra), "prior_any_error": any_error,
            "prior_logit": math.log(clipped / (1.0 - clipped))}


@dataclass
class PseudoDraftModel:
    """Error risk of a draft learnt from retrieval pseudo-drafts of the train split (the ``pseudo`` signal).

    :meth:`fit`: every train report gets as "draft" the impression of its ``k`` nearest other train reports
    (never one with the same findings: the retrieval baseline left one out), its :func:`error_label`
    against its own reference, and its signals (:data:`PSEUDO_INPUT_GROUPS`, the reference prior
    **cross-fitted**: each fold's probabilities come from a prior fitted on the other folds, as the
    validate and test drafts get a prior that never saw them); a logistic regression on standardised
    signals learns which disagreements with the findings are errors from thousands of labelled drafts.
    :meth:`decision` gives its log-odds for any draft's signals. Readable JSON (:meth:`to_json`), stored
    inside the :class:`RiskModel` that weighs it, so drafting time needs no refit.
    """

    features: list[str]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, records: Sequence[Mapping[str, Any]], *, k: int = 1, folds: int = 5, seed: int = 0, c: float = 1.0,
            prior_c: float = 4.0) -> PseudoDraftModel:
        from sklearn.model_selection import KFold

        records = list(records)
        if len(records) < 2 * folds:
            raise ValueError(f"a pseudo-draft model needs at least {2 * folds} train reports, got {len(records)}")
        probs = pd.DataFrame(index=range(len(records)), columns=list(TRIAGE_OBSERVATIONS), dtype=float)
        for fit_idx, pred_idx in KFold(folds, shuffle=True, random_state=seed).split(records):
            prior = ReferencePrior(c=prior_c).fit([records[i] for i in fit_idx])
            probs.iloc[pred_idx] = prior.predict([records[i]["findings"] for i in pred_idx]).to_numpy()
        near = retrieval.with_similar_impressions(records, records, k)
        idx = [i for i, r in enumerate(near) for _ in r["similar_impressions"][:k]]
        drafts = [d for r in near for d in r["similar_impressions"][:k]]
        if not drafts:
            raise ValueError("no train report has a neighbour with other findings: nothing to fit a pseudo-draft "
                             "model on")
        kept = [records[i] for i in idx]
        x = feature_table(kept, drafts, prior_probs=probs.iloc[idx].reset_index(drop=True))
        y = error_labels([r["impression"] for r in kept], drafts)["significant"].to_numpy(dtype=bool)
        if y.all() or not y.any():
            raise ValueError("pseudo-drafts are all right or all wrong: nothing to fit a pseudo-draft model on")
        cols = [f for g in PSEUDO_INPUT_GROUPS for f in SIGNAL_GROUPS[g] if x[f].std() > 0]
        pipe = _logreg(c, seed).fit(x[cols].to_numpy(), y)
        scaler, lr = pipe.steps[0][1], pipe.steps[1][1]
        return cls(features=cols, mean=[float(v) for v in scaler.mean_], scale=[float(v) or 1.0 for v in scaler.scale_],
                   coef=[float(v) for v in lr.coef_[0]], intercept=float(lr.intercept_[0]),
                   meta={"n_reports": len(records), "n_drafts": len(drafts), "n_errors": int(y.sum()), "k": k,
                         "folds": folds, "c": c, "prior_c": prior_c, "fitted_on": "train pseudo-drafts (retrieval, "
                         "left one out)", "train_auc": _roc_auc(y, lr.decision_function(scaler.transform(
                             x[cols].to_numpy())))})

    def decision(self, x: pd.DataFrame) -> np.ndarray:
        """Log-odds that each draft has a significant error (``x``: :func:`feature_table` signals)."""
        missing = [f for f in self.features if f not in x.columns]
        if missing:
            raise ValueError(f"signals {missing[:5]} missing for the pseudo-draft model")
        z = (x[self.features].to_numpy(dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        return z @ np.asarray(self.coef) + self.intercept

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PseudoDraftModel:
        fields = {k: data[k] for k in ("features", "mean", "scale", "coef", "intercept")}
        if len({len(fields[k]) for k in ("features", "mean", "scale", "coef")}) != 1:
            raise ValueError("pseudo-draft model: features, mean, scale and coef differ in length")
        return cls(**fields, meta=dict(data.get("meta") or {}))


def uncertainty_signals(row: Mapping[str, Any] | None) -> dict[str, float]:
    """The model's own uncertainty about a draft (:data:`UNCERTAINTY_SIGNALS`) from its prediction row.

    ``row`` carries ``token_logprobs`` / ``token_entropies`` (``token_stats=True`` decoding or
    :func:`radimpress_lib.llm.generation.score_drafts`) and ``stopped``; without them (a baseline, a
    missing row) the signals are 0. ``low_confidence_tokens``: tokens whose probability was below 0.5.
    """
    lps = list((row or {}).get("token_logprobs") or [])
    hs = list((row or {}).get("token_entropies") or [])
    stopped = (row or {}).get("stopped")
    return {
        "logprob_mean": float(np.mean(lps)) if lps else 0.0,
        "logprob_min": float(min(lps)) if lps else 0.0,
        "logprob_sum": float(sum(lps)),
        "entropy_mean": float(np.mean(hs)) if hs else 0.0,
        "entropy_max": float(max(hs)) if hs else 0.0,
        "low_confidence_tokens": float(sum(lp < math.log(0.5) for lp in lps)),
        "truncated": float(stopped is False),
    }


def candidate_signals(draft_labels: Mapping[str, str], draft: str, candidates: Sequence[str] | None,
                      candidate_labels: Sequence[Mapping[str, str]] | None = None) -> dict[str, float]:
    """Disagreement of the draft with alternative impressions of the same prompt (:data:`CANDIDATE_SIGNALS`).

    ``candidates_label_disagreement``: mean over candidates of the findings whose presence differs from
    the draft's; ``candidates_text_distance``: 1 - mean word-overlap Jaccard. 0 without candidates.
    """
    if not candidates:
        return dict.fromkeys(CANDIDATE_SIGNALS, 0.0)
    labs = candidate_labels or [labeler.label_report(c) for c in candidates]
    present = {o for o in TRIAGE_OBSERVATIONS if draft_labels[o] in _PRESENT}
    disagree = [len(present ^ {o for o in TRIAGE_OBSERVATIONS if lab[o] in _PRESENT}) for lab in labs]
    words = set(draft.lower().split())
    sims = [len(words & set(c.lower().split())) / max(1, len(words | set(c.lower().split()))) for c in candidates]
    return {"candidates_label_disagreement": float(np.mean(disagree)), "candidates_text_distance": 1.0 - float(np.mean(sims))}


def feature_table(records: Sequence[Mapping[str, Any]], drafts: Sequence[str], *,
                  rows: Sequence[Mapping[str, Any] | None] | None = None, prior: ReferencePrior | None = None,
                  candidates: Sequence[Sequence[str] | None] | None = None,
                  prior_probs: pd.DataFrame | None = None, pseudo: PseudoDraftModel | None = None) -> pd.DataFrame:
    """One row of signals per draft, columns in :data:`SIGNAL_GROUPS` order (drafting-time inputs only).

    ``records``: the inputs the drafts were made from (with their prompt context: ``similar_impressions``);
    ``rows``: the drafts' prediction rows (token statistics, ``stopped``); ``prior``: a fitted
    :class:`ReferencePrior`; ``candidates``: alternative impressions per draft; ``pseudo``: a fitted
    :class:`PseudoDraftModel` (the ``pseudo`` group). A group whose input is not given is all zeros (and
    then carries no weight in a model fitted the same way).
    """
    if len(records) != len(drafts):
        raise ValueError(f"{len(drafts)} drafts for {len(records)} records")
    if rows is not None and len(rows) != len(drafts):
        raise ValueError(f"{len(rows)} prediction rows for {len(drafts)} drafts")
    if candidates is not None and len(candidates) != len(drafts):
        raise ValueError(f"{len(candidates)} candidate lists for {len(drafts)} drafts")
    probs = prior_probs if prior_probs is not None else (
        prior.predict([r["findings"] for r in records]) if prior is not None and records else None)
    out = []
    for i, (rec, draft) in enumerate(zip(records, drafts)):
        labs = {"findings": labeler.label_report(rec.get("findings") or ""), "draft": labeler.label_report(draft)}
        sig = checks.draft_signals(rec, draft, labels=labs)
        sig |= prior_signals(probs.iloc[i], labs["draft"]) if probs is not None else dict.fromkeys(PRIOR_SIGNALS, 0.0)
        sig |= uncertainty_signals(rows[i] if rows is not None else None)
        sig |= candidate_signals(labs["draft"], draft, candidates[i] if candidates is not None else None)
        out.append(sig)
    table = pd.DataFrame(out, columns=all_features())
    table["pseudo_risk"] = pseudo.decision(table) if pseudo is not None and len(table) else 0.0
    return table


def all_features() -> list[str]:
    """Every signal name, in :data:`SIGNAL_GROUPS` order."""
    return [f for group in SIGNAL_GROUPS.values() for f in group]


def group_of(feature: str) -> str:
    return next(g for g, names in SIGNAL_GROUPS.items() if feature in names)


# --------------------------------------------------------------------------- the risk model


@dataclass
class RiskModel:
    """Logistic regression on standardised signals: ``risk = sigmoid(intercept + sum coef * (x - mean) / scale)``.

    Portable and readable (:meth:`to_json`): feature names, scaler, coefficients, the operating
    ``threshold`` chosen on validate drafts, and the validate recall-vs-flag-rate curve plus the
    validate risk quantiles, from which :meth:`threshold_for_budget` picks a threshold for a review
    budget (target flag rate).
    """

    features: list[str]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    threshold: float = 0.5
    operating_point: dict[str, Any] = field(default_factory=dict)
    curve: dict[str, list[float]] = field(default_factory=dict)
    quantiles: list[float] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    #: the :class:`PseudoDraftModel` (JSON) whose ``pseudo_risk`` this model weighs, if any
    pseudo: dict[str, Any] | None = None

    def pseudo_model(self) -> PseudoDraftModel | None:
        """The pseudo-draft model behind the ``pseudo_risk`` signal, when it carries weight."""
        weighted = any(c != 0 and f in PSEUDO_SIGNALS for f, c in zip(self.features, self.coef))
        return PseudoDraftModel.from_json(self.pseudo) if self.pseudo and weighted else None

    def decision(self, x: pd.DataFrame | np.ndarray) -> np.ndarray:
        arr = self._matrix(x)
        z = (arr - np.asarray(self.mean)) / np.asarray(self.scale)
        return z @ np.asarray(self.coef) + self.intercept

    def predict(self, x: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Risk (probability that the draft has a significant error) per row."""
        return 1.0 / (1.0 + np.exp(-self.decision(x)))

    def _matrix(self, x: pd.DataFrame | np.ndarray) -> np.ndarray:
        if isinstance(x, pd.DataFrame):
            missing = [f for f in self.features if f not in x.columns]
            if missing:
                raise ValueError(f"signals {missing[:5]} missing for the risk model")
            return x[self.features].to_numpy(dtype=np.float64)
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != len(self.features):
            raise ValueError(f"expected [n, {len(self.features)}] signals, got {arr.shape}")
        return arr

    def contributions(self, x: pd.DataFrame) -> pd.DataFrame:
        """Per row and feature, ``coef * standardised value`` (what pushed the risk up or down)."""
        z = (self._matrix(x) - np.asarray(self.mean)) / np.asarray(self.scale)
        return pd.DataFrame(z * np.asarray(self.coef), columns=self.features, index=getattr(x, "index", None))

    def threshold_for_budget(self, budget: float) -> float:
        """Risk threshold that flags about ``budget`` (0-1) of drafts like the validate ones."""
        _check_share(budget, "review budget")
        if not self.quantiles:
            raise ValueError("this risk model has no validate risk quantiles (refit it)")
        qs = np.asarray(self.quantiles)
        grid = np.linspace(0.0, 1.0, len(qs))
        # flag the drafts at or above the (1 - budget) quantile
        return float(np.interp(1.0 - budget, grid, qs))

    def expected_recall(self, flag_rate: float) -> float | None:
        """Cross-validated validate recall at ``flag_rate`` (from the saved curve), or None."""
        if not self.curve.get("flag_rate"):
            return None
        return float(np.interp(flag_rate, self.curve["flag_rate"], self.curve["recall"]))

    def to_json(self) -> dict[str, Any]:
        return {"format": RISK_MODEL_FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RiskModel:
        if data.get("format") != RISK_MODEL_FORMAT:
            raise ValueError(f"not a radimpress risk model (format {data.get('format')!r}, want {RISK_MODEL_FORMAT!r})")
        fields = {k: data[k] for k in ("features", "mean", "scale", "coef", "intercept")}
        lengths = {len(fields[k]) for k in ("features", "mean", "scale", "coef")}
        if len(lengths) != 1:
            raise ValueError("risk model: features, mean, scale and coef differ in length")
        return cls(**fields, threshold=float(data.get("threshold", 0.5)),
                   operating_point=dict(data.get("operating_point") or {}), curve=dict(data.get("curve") or {}),
                   quantiles=list(data.get("quantiles") or []), meta=dict(data.get("meta") or {}),
                   pseudo=dict(data["pseudo"]) if data.get("pseudo") else None)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> RiskModel:
        path = Path(path)
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable risk model ({exc})") from None


def _logreg(c: float, seed: int) -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed))


def _folds(y: np.ndarray, n_folds: int, seed: int) -> Any:
    k = int(min(n_folds, y.sum(), (~y).sum()))
    if k < 2:
        raise ValueError(f"need at least 2 drafts with and 2 without an error to fit a risk model "
                         f"(have {int(y.sum())} / {int((~y).sum())})")
    return StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)


def cross_validated_scores(x: pd.DataFrame, y: Sequence[bool], *, c: float, n_folds: int = 5, seed: int = 0,
                           repeats: int = 1) -> np.ndarray:
    """Out-of-fold risk of every row (mean over ``repeats`` shuffles of the folds)."""
    y = np.asarray(y, dtype=bool)
    scores = [cross_val_predict(_logreg(c, seed), x.to_numpy(dtype=np.float64), y, cv=_folds(y, n_folds, seed + r),
                                method="predict_proba")[:, 1] for r in range(repeats)]
    return np.mean(scores, axis=0)


def _roc_auc(y: np.ndarray, s: np.ndarray) -> float | None:
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None


def budget_count(share: float, n: int) -> int:
    """How many of ``n`` drafts a budget of ``share`` flags: ``floor(share * n)``, at least one (none of none, none
    for a share of 0: the start of a curve).

    Rounded down everywhere (the operating point chosen on validate, the curves, the worklist), so a
    budget of 30% never flags more than 30% of the drafts it is spent on.
    """
    return max(1, math.floor(share * n + 1e-9)) if n and share > 0 else 0


def _recall_at_rate(scores: np.ndarray, y: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Recall when the top ``rate`` share of drafts by score is flagged (ties broken by order), per rate."""
    order = np.argsort(-scores, kind="stable")
    hits = np.concatenate([[0], np.cumsum(y[order])])
    k = np.array([budget_count(float(r), len(y)) for r in np.atleast_1d(rates)], dtype=int)
    return hits[k] / max(1, y.sum())


def choose_operating_point(scores: np.ndarray, y: Sequence[bool], missed: Sequence[bool], *, recall: float,
                           missed_recall: float, max_flag_rate: float) -> dict[str, float]:
    """The smallest flag rate at which ``scores`` reach both recall targets, capped at ``max_flag_rate``.

    ``scores`` should be out-of-fold (cross-validated) risks of validate drafts, so the recall they
    promise is not the optimism of the fitted model. Returns ``flag_rate`` plus the ``recall`` /
    ``missed_recall`` reached there and whether the targets were met within the budget.
    """
    s, y, m = np.asarray(scores), np.asarray(y, dtype=bool), np.asarray(missed, dtype=bool)
    order = np.argsort(-s, kind="stable")
    rec = np.cumsum(y[order]) / max(1, y.sum())
    mrec = np.cumsum(m[order]) / max(1, m.sum()) if m.any() else np.ones(len(s))
    ok = np.nonzero((rec >= recall - 1e-12) & (mrec >= missed_recall - 1e-12))[0]
    need = (ok[0] + 1) / len(s) if ok.size else 1.0
    k = ok[0] + 1 if need <= max_flag_rate else budget_count(max_flag_rate, len(s))
    return {"flag_rate": float(k / len(s)), "recall": float(rec[k - 1]), "missed_recall": float(mrec[k - 1]),
            "flag_rate_for_targets": float(need), "targets_met": bool(need <= max_flag_rate),
            "target_recall": recall, "target_missed_recall": missed_recall, "max_flag_rate": max_flag_rate}


@dataclass
class FitReport:
    """How a risk model was chosen: cross-validated AUC per regularisation strength, out-of-fold scores."""

    c: float
    cv_auc: dict[str, float | None]
    groups: list[str]
    selection: list[dict[str, Any]]
    oof_scores: np.ndarray
    operating_point: dict[str, float]
    n: int
    n_errors: int
    n_missed_abnormal: int


def _best_c(x: pd.DataFrame, y: np.ndarray, c_grid: Sequence[float], *, n_folds: int, seed: int, repeats: int
            ) -> tuple[float, dict[str, float | None], dict[float, np.ndarray]]:
    cv_auc: dict[str, float | None] = {}
    oof: dict[float, np.ndarray] = {}
    for c in c_grid:
        oof[c] = cross_validated_scores(x, y, c=c, n_folds=n_folds, seed=seed, repeats=repeats)
        cv_auc[str(c)] = _roc_auc(y, oof[c])
    best = max(c_grid, key=lambda c: (cv_auc[str(c)] or 0.0, -c))
    return best, cv_auc, oof


def select_groups(x: pd.DataFrame, y: Sequence[bool], *, c_grid: Sequence[float], n_folds: int = 5, seed: int = 0,
                  repeats: int = 2, min_gain: float = 0.002) -> tuple[list[str], list[dict[str, Any]]]:
    """Forward selection of signal groups by cross-validated ROC AUC (best ``C`` of ``c_grid`` per step).

    Starts from the best single group and adds the group that raises the AUC most, while it gains at
    least ``min_gain``: with a few hundred validate drafts, groups that add nothing only add noise.
    Returns the chosen groups and one row per step (``added``, ``auc``).
    """
    y = np.asarray(y, dtype=bool)
    left = [g for g in SIGNAL_GROUPS if any(f in x.columns and x[f].std() > 0 for f in SIGNAL_GROUPS[g])]
    chosen: list[str] = []
    steps: list[dict[str, Any]] = []
    best_auc = -1.0
    while left:
        trial = {}
        for g in left:
            cols = [f for grp in chosen + [g] for f in SIGNAL_GROUPS[grp] if f in x.columns and x[f].std() > 0]
            c, aucs, _ = _best_c(x[cols], y, c_grid, n_folds=n_folds, seed=seed, repeats=repeats)
            trial[g] = aucs[str(c)] or 0.0
        g = max(left, key=lambda k: trial[k])
        if chosen and trial[g] < best_auc + min_gain:
            break
        chosen.append(g)
        left.remove(g)
        best_auc = trial[g]
        steps.append({"added": g, "auc": trial[g]})
    return chosen, steps


def fit_risk_model(x: pd.DataFrame, y: Sequence[bool], missed: Sequence[bool], *, recall: float = 0.9,
                   missed_recall: float = 0.95, max_flag_rate: float = 0.3,
                   c_grid: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1.0), n_folds: int = 5, repeats: int = 3,
                   seed: int = 0, groups: Sequence[str] | str = "auto", meta: Mapping[str, Any] | None = None,
                   pseudo: PseudoDraftModel | None = None) -> tuple[RiskModel, FitReport]:
    """Fit the review-risk model on validate drafts' signals ``x`` and error labels ``y``.

    ``groups="auto"`` chooses the signal groups by forward selection on cross-validated AUC
    (:func:`select_groups`); a list uses those groups. The L2 strength ``C`` is the one with the best
    cross-validated ROC AUC (stratified folds, ``repeats`` shuffles); the operating point comes from
    the out-of-fold risks (:func:`choose_operating_point`) and is turned into a threshold of the final
    model (fitted on every row) through its validate risk quantiles, so the threshold flags the chosen
    share of drafts. Every signal stays in the saved model; unused or constant ones get weight 0.
    ``pseudo``: the :class:`PseudoDraftModel` that made ``x``'s ``pseudo_risk`` column, saved inside the model.
    """
    y = np.asarray(y, dtype=bool)
    m = np.asarray(missed, dtype=bool)
    names = [f for f in all_features() if f in x.columns] + [f for f in x.columns if f not in all_features()]
    x = x[names].astype(np.float64)
    if groups == "auto":
        chosen, steps = select_groups(x, y, c_grid=c_grid, n_folds=n_folds, seed=seed)
    else:
        chosen, steps = list(groups), []
    in_groups = {f for g in chosen for f in SIGNAL_GROUPS[g]} if chosen else set(names)
    varying = [f for f in names if f in in_groups and x[f].std() > 0]
    if not varying:
        raise ValueError("every signal is constant: nothing to fit a risk model on")
    xv = x[varying]
    best, cv_auc, oof = _best_c(xv, y, c_grid, n_folds=n_folds, seed=seed, repeats=repeats)
    pipe = _logreg(best, seed).fit(xv.to_numpy(), y)
    scaler, lr = pipe.steps[0][1], pipe.steps[1][1]
    coef = dict(zip(varying, lr.coef_[0]))
    mean = dict(zip(varying, scaler.mean_))
    scale = dict(zip(varying, scaler.scale_))
    model = RiskModel(features=names, mean=[float(mean.get(f, 0.0)) for f in names],
                      scale=[float(scale.get(f, 1.0)) or 1.0 for f in names],
                      coef=[float(coef.get(f, 0.0)) for f in names], intercept=float(lr.intercept_[0]),
                      meta=dict(meta or {}), pseudo=pseudo.to_json() if pseudo is not None else None)
    model.quantiles = _risk_quantiles(model.predict(x))
    op = choose_operating_point(oof[best], y, m, recall=recall, missed_recall=missed_recall,
                                max_flag_rate=max_flag_rate)
    model.threshold = model.threshold_for_budget(op["flag_rate"])
    model.operating_point = op | {"threshold": model.threshold}
    model.curve = _validate_curve(model, oof[best], y, m)
    model.meta |= {"c": best, "cv_auc": cv_auc[str(best)], "groups": chosen, "group_selection": steps,
                   "n_validate": int(len(y)), "n_errors": int(y.sum()),
                   "n_missed_abnormal": int(m.sum()), "fitted_on": "validate drafts",
                   "labeler": "radimpress rule labeler (not CheXbert)"}
    return model, FitReport(c=best, cv_auc=cv_auc, groups=chosen, selection=steps, oof_scores=oof[best], operating_point=model.operating_point,
                            n=int(len(y)), n_errors=int(y.sum()), n_missed_abnormal=int(m.sum()))


def _risk_quantiles(risk: np.ndarray) -> list[float]:
    """The validate risk quantiles a :class:`RiskModel` turns review budgets into thresholds with."""
    return [float(q) for q in np.quantile(risk, np.linspace(0.0, 1.0, 201))]


def _validate_curve(model: RiskModel, scores: np.ndarray, y: np.ndarray, m: np.ndarray) -> dict[str, list[float]]:
    """Recall (and missed-abnormal recall) of ``scores`` per flag rate, with ``model``'s threshold for each rate."""
    rates = np.linspace(0.0, 1.0, 101)
    return {"flag_rate": [float(r) for r in rates],
            "recall": [float(v) for v in _recall_at_rate(scores, y, rates)],
            "missed_recall": [float(v) for v in (_recall_at_rate(scores, m, rates) if m.any() else np.ones_like(rates))],
            "threshold": [float(model.threshold_for_budget(r)) if r > 0 else float(model.quantiles[-1]) for r in rates]}


def recalibrated(model: RiskModel, x: pd.DataFrame, y: Sequence[bool], missed: Sequence[bool], *,
                 system: str) -> RiskModel:
    """``model``'s weights with the threshold for another system's drafts (``x``: its validate drafts' signals).

    A system whose drafts carry fewer flagged problems (a selection over candidates, say) gets lower
    risks from the same weights, so the fitted threshold would flag fewer of its drafts than the
    budget. The copy keeps the coefficients and takes its validate risk quantiles, and so its
    threshold (the same share of drafts, ``model.operating_point["flag_rate"]``) and its budgets,
    from these drafts; its curve is their recall (``y``: error labels) per flag rate. Validate only:
    the labels come from validate references, never test.
    """
    y, m = np.asarray(y, dtype=bool), np.asarray(missed, dtype=bool)
    risk = model.predict(x)
    out = RiskModel(features=list(model.features), mean=list(model.mean), scale=list(model.scale),
                    coef=list(model.coef), intercept=model.intercept, quantiles=_risk_quantiles(risk),
                    pseudo=model.pseudo,
                    meta=dict(model.meta) | {"recalibrated_on": f"validate drafts of {system}", "n_validate": len(y),
                                             "n_errors": int(y.sum()), "n_missed_abnormal": int(m.sum())})
    if model.operating_point.get("flag_rate") is None:
        raise ValueError("risk model has no operating flag rate to carry over (fit it with fit_risk_model)")
    rate = float(model.operating_point["flag_rate"])
    out.threshold = out.threshold_for_budget(rate)
    flagged = risk >= out.threshold
    out.operating_point = dict(model.operating_point) | {
        "threshold": out.threshold, "flag_rate": float(flagged.mean()),
        "recall": float(flagged[y].mean()) if y.any() else None,
        "missed_recall": float(flagged[m].mean()) if m.any() else None, "cross_validated": False}
    out.curve = _validate_curve(out, risk, y, m)
    return out


# --------------------------------------------------------------------------- evaluation


def _point(flagged: np.ndarray, y: np.ndarray, m: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """recall, precision, flag rate and missed-abnormal recall for weights ``w`` ``[b, n]`` (bootstrap counts)."""
    f = flagged.astype(np.float64)
    tp = w @ (f * y)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"recall": tp / (w @ y.astype(np.float64)),
                "precision": tp / (w @ f),
                "flag_rate": (w @ f) / w.sum(axis=1),
                "missed_abnormal_recall": (w @ (f * m)) / (w @ m.astype(np.float64))}


def _check_share(budget: float, what: str) -> None:
    """A review or worklist budget is a share of drafts in (0, 1] (ValueError naming ``what`` otherwise)."""
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"{what} must be a share of drafts in (0, 1], got {budget}")


def worklist_flags(risk: Sequence[float], budget: float) -> np.ndarray:
    """The riskiest ``floor(budget * n)`` of a worklist's ``n`` drafts, at least one (``--worklist-budget``).

    A reading session's budget spent on its own drafts: whatever their risks are, the share flagged is
    spent in full and never exceeds ``budget`` (rounded down; a worklist shorter than ``1 / budget``
    still gets its riskiest draft flagged), where a fixed threshold flags fewer drafts of a worklist that
    is less risky than the validate drafts it was chosen on. Equal risks keep input order.
    """
    _check_share(budget, "worklist budget")
    r = np.asarray(risk, dtype=np.float64)
    k = budget_count(budget, len(r))
    flagged = np.zeros(len(r), dtype=bool)
    flagged[np.argsort(-r, kind="stable")[:k]] = True
    return flagged


def triage_metrics(scores: Sequence[float], y: Sequence[bool], missed: Sequence[bool], threshold: float | None, *,
                   flagged: Sequence[bool] | None = None, n_boot: int = 1000, seed: int = 0,
                   ci: float = 0.95, auc: bool = True) -> dict[str, Any]:
    """Recall, precision, flag rate, missed-abnormal recall at ``threshold`` and ROC AUC, with bootstrap CIs.

    ``flagged``: the drafts flagged, when not ``scores >= threshold`` (a worklist budget,
    :func:`worklist_flags`; ``threshold`` is then None). Percentages (0-100) except ``auc`` and
    ``threshold``; ``<metric>_ci`` are percentile intervals of ``n_boot`` resamples of the drafts
    (``numpy.random.default_rng(seed)``), the flags held fixed. ``auc=False`` leaves out ``auc`` /
    ``auc_ci`` (a property of the scores, not of the flags: the same at every operating point).
    """
    s = np.asarray(scores, dtype=np.float64)
    y, m = np.asarray(y, dtype=bool), np.asarray(missed, dtype=bool)
    if (flagged is None) == (threshold is None):
        raise ValueError("give either a threshold or the flagged drafts")
    flagged = s >= threshold if flagged is None else np.asarray(flagged, dtype=bool)
    point = _point(flagged, y, m, np.ones((1, len(s))))
    idx = bootstrap_indices(len(s), n_boot, seed)
    w = np.zeros((n_boot, len(s)))
    np.add.at(w, (np.repeat(np.arange(n_boot), len(s)), idx.ravel()), 1.0)
    boot = _point(flagged, y, m, w)
    alpha = (1.0 - ci) / 2.0
    out: dict[str, Any] = {"threshold": None if threshold is None else float(threshold), "n": int(len(s)),
                           "n_errors": int(y.sum()), "n_missed_abnormal": int(m.sum()),
                           "n_flagged": int(flagged.sum())}
    for k in ("recall", "precision", "flag_rate", "missed_abnormal_recall"):
        v = float(point[k][0])
        b = boot[k][~np.isnan(boot[k])]
        out[k] = None if math.isnan(v) else 100.0 * v
        out[f"{k}_ci"] = [100.0 * float(q) for q in np.quantile(b, [alpha, 1 - alpha])] if b.size else [None, None]
    if not auc:
        return out
    out["auc"] = _roc_auc(y, s)
    aucs = [a for a in (_roc_auc(y[i], s[i]) for i in idx[: min(n_boot, 300)]) if a is not None]
    out["auc_ci"] = [float(q) for q in np.quantile(aucs, [alpha, 1 - alpha])] if aucs else [None, None]
    return out


def hard_flags(drafts: Sequence[str], rows: Sequence[Mapping[str, Any] | None] | None = None) -> np.ndarray:
    """Drafts that need review whatever their risk (:data:`HARD_REASONS`: empty, or cut at the token limit)."""
    return np.array([not d.strip() or (rows is not None and (rows[i] or {}).get("stopped") is False)
                     for i, d in enumerate(drafts)], dtype=bool)


def recall_curve(scores: Sequence[float], y: Sequence[bool], *, n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
                 rates: Sequence[float] | None = None) -> pd.DataFrame:
    """Recall when the top share of drafts by risk is flagged, per flag rate, with bootstrap bands."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(y, dtype=bool)
    grid = np.asarray(rates if rates is not None else np.linspace(0.0, 1.0, 101))
    point = _recall_at_rate(s, y, grid)
    boot = np.array([_recall_at_rate(s[i], y[i], grid) for i in bootstrap_indices(len(s), n_boot, seed)
                     if y[i].any()])
    alpha = (1.0 - ci) / 2.0
    lo, hi = (np.quantile(boot, [alpha, 1 - alpha], axis=0) if len(boot) else (point, point))
    return pd.DataFrame({"flag_rate": 100.0 * grid, "recall": 100.0 * point, "recall_low": 100.0 * lo,
                         "recall_high": 100.0 * hi})


def rule_flags(records: Sequence[Mapping[str, Any]], drafts: Sequence[str], rows: Sequence[Mapping[str, Any] | None]
               | None = None) -> pd.DataFrame:
    """The CLI's rule flags per draft: ``default`` (labeler + graph: unsupported findings, negation flips,
    empty / truncated drafts) and ``omissions`` (``--flag-omissions``: omitted findings too)."""
    out = []
    for i, (rec, draft) in enumerate(zip(records, drafts)):
        flags = checks.triage_flags(rec, draft)
        hard = not draft.strip() or (rows is not None and (rows[i] or {}).get("stopped") is False)
        default = hard or any(f["kind"] != "omitted" for f in flags)
        out.append({"default": default, "omissions": default or bool(flags)})
    return pd.DataFrame(out, columns=["default", "omissions"])


# --------------------------------------------------------------------------- ablation


def ablation(x: pd.DataFrame, y: Sequence[bool], missed: Sequence[bool], *, flag_rate: float,
             c_grid: Sequence[float] = (0.01, 0.1, 1.0), groups: Sequence[str] | None = None, n_folds: int = 5,
             repeats: int = 2, seed: int = 0) -> pd.DataFrame:
    """Cross-validated AUC and recall at ``flag_rate`` with every signal group, without each one, and with each alone.

    On validate drafts (never test): which signals carry the score. Each row uses its best ``C`` of
    ``c_grid`` (by AUC), so a row is not penalised for a regularisation chosen for another.
    """
    y, m = np.asarray(y, dtype=bool), np.asarray(missed, dtype=bool)
    names = [g for g in (groups or SIGNAL_GROUPS) if any(x[f].std() > 0 for f in SIGNAL_GROUPS[g])]

    def score(cols: list[str]) -> dict[str, Any]:
        cols = [f for f in cols if x[f].std() > 0]
        if not cols:
            return {"auc": None, "recall_at_budget": None, "missed_recall_at_budget": None}
        c, _aucs, oof = _best_c(x[cols], y, c_grid, n_folds=n_folds, seed=seed, repeats=repeats)
        s = oof[c]
        return {"auc": _roc_auc(y, s), "recall_at_budget": 100.0 * float(_recall_at_rate(s, y, np.array([flag_rate]))[0]),
                "missed_recall_at_budget": (100.0 * float(_recall_at_rate(s, m, np.array([flag_rate]))[0])
                                            if m.any() else None)}

    every = [f for g in names for f in SIGNAL_GROUPS[g]]
    rows = [{"signals": "all", **score(every)}]
    rows += [{"signals": f"without {g}", **score([f for f in every if f not in SIGNAL_GROUPS[g]])} for g in names]
    rows += [{"signals": f"only {g}", **score(list(SIGNAL_GROUPS[g]))} for g in names]
    out = pd.DataFrame(rows)
    out.attrs["flag_rate"] = flag_rate
    return out


# --------------------------------------------------------------------------- figure


def plot_triage(curves: Mapping[str, pd.DataFrame], points: Mapping[str, Mapping[str, Any]], *,
                rules: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None, target_recall: float | None = None,
                max_flag_rate: float | None = None, validate_curve: Mapping[str, Sequence[float]] | None = None,
                title: str = "Review triage: recall of drafts with a significant error vs share of drafts flagged"):
    """Recall-vs-flag-rate curves per system (bootstrap band for the first), the operating points, the rule flags."""
    import matplotlib.pyplot as plt  # plotting backend: only when a figure is drawn

    fig, ax = plt.subplots(figsize=(7.5, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (name, curve) in enumerate(curves.items()):
        c = colors[k % len(colors)]
        ax.plot(curve["flag_rate"], curve["recall"], color=c, label=f"{name} (risk score)")
        if k == 0:
            ax.fill_between(curve["flag_rate"], curve["recall_low"], curve["recall_high"], color=c, alpha=0.15,
                            label=f"{name}: 95% bootstrap band")
        p = points.get(name)
        if p and p.get("recall") is not None:
            ax.plot([p["flag_rate"]], [p["recall"]], "o", color=c, ms=7)
        for kind, marker in (("default", "s"), ("omissions", "^")):
            r = (rules or {}).get(name, {}).get(kind)
            if r and r.get("recall") is not None:
                ax.plot([r["flag_rate"]], [r["recall"]], marker, color=c, mfc="none", ms=8,
                        label=f"CLI rule flags ({'default' if kind == 'default' else '--flag-omissions'})"
                        if k == 0 else None)
    if validate_curve:
        ax.plot(100 * np.asarray(validate_curve["flag_rate"]), 100 * np.asarray(validate_curve["recall"]), ":",
                color="grey", label="validate (cross-validated), where the threshold was chosen")
    if target_recall is not None:
        ax.axhline(100 * target_recall, color="grey", lw=0.8, ls="--")
    if max_flag_rate is not None:
        ax.axvline(100 * max_flag_rate, color="grey", lw=0.8, ls="--")
    ax.plot([0, 100], [0, 100], color="lightgrey", lw=0.8)
    ax.set_xlabel("drafts flagged for review (%)")
    ax.set_ylabel("drafts with a significant error that are flagged (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 101)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- drafting time (radimpress draft)


class DraftTriage:
    """The review-risk model at drafting time: risk, whether a draft needs review, and why.

    ``model``: a :class:`RiskModel` saved by notebook 05; ``prior``: the :class:`ReferencePrior` refitted on
    the run's train split (as the notebook fitted it; only when the model weights prior signals, or a
    pseudo-draft model that reads them);
    ``threshold``: the model's operating threshold, or the one for a review budget
    (:meth:`RiskModel.threshold_for_budget`);
    ``worklist_budget``: flag the riskiest share of the whole worklist instead (:func:`worklist_flags`): then
    :meth:`assess` gives every draft its risk reasons (``flag`` True) and the caller keeps them only for the
    drafts :func:`worklist_flags` picks once all risks are known (``radimpress draft --worklist-budget``).
    """

    def __init__(self, model: RiskModel, prior: ReferencePrior | None, *, threshold: float | None = None,
                 source: str = "", worklist_budget: float | None = None) -> None:
        if worklist_budget is not None:  # checked now, not after the whole worklist is drafted
            _check_share(worklist_budget, "worklist budget")
        self.model, self.prior = model, prior
        self.threshold = model.threshold if threshold is None else float(threshold)
        self.source = source
        self.worklist_budget = worklist_budget

    @classmethod
    def for_run(cls, params: Any, path: str | Path, *, budget: float | None = None,
                worklist_budget: float | None = None) -> DraftTriage:
        """Load ``path`` (FileNotFoundError naming it when absent) and refit the prior on the run's train split."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no review-risk model (notebook 05 writes it, with eval.triage on)")
        model = RiskModel.load(path)
        pseudo = model.pseudo_model()
        uses_prior = any(c != 0 and f in PRIOR_SIGNALS for f, c in zip(model.features, model.coef)) or (
            pseudo is not None and any(f in PRIOR_SIGNALS for f in pseudo.features))
        prior = None
        if uses_prior:
            from radimpress_lib.data.loading import load_data  # datasets: only when the model weights the prior

            dsd, _info = load_data(params)
            prior = ReferencePrior().fit(list(dsd["train"]))
        threshold = model.threshold_for_budget(budget) if budget is not None else None
        return cls(model, prior, threshold=threshold, source=str(path), worklist_budget=worklist_budget)

    def describe(self) -> str:
        if self.worklist_budget is not None:
            expected = self.model.expected_recall(self.worklist_budget)
            return (f"review triage: risk model {self.source} (fitted on {self.model.meta.get('n_validate', '?')} "
                    f"validate drafts), flags the riskiest {100 * self.worklist_budget:g}% of this worklist's drafts "
                    "(rows are written when all are drafted)"
                    + (f", validate recall ~{100 * expected:.0f}% of drafts with a significant error at that share"
                       if expected is not None else ""))
        op = self.model.operating_point
        share = np.mean(np.asarray(self.model.quantiles) >= self.threshold) if self.model.quantiles else None
        expected = self.model.expected_recall(float(share)) if share is not None else None
        return (f"review triage: risk model {self.source} (fitted on {self.model.meta.get('n_validate', '?')} validate "
                f"drafts), threshold {self.threshold:.3f}"
                + (f", flags ~{100 * share:.0f}% of drafts" if share is not None else "")
                + (f", validate recall ~{100 * expected:.0f}% of drafts with a significant error" if expected is not None
                   else "")
                + (f" (operating point: {100 * op['flag_rate']:.0f}% flagged)" if op else ""))

    def assess(self, records: Sequence[Mapping[str, Any]], drafts: Sequence[str],
               rows: Sequence[Mapping[str, Any] | None] | None = None) -> list[dict[str, Any]]:
        """Per draft: ``risk``, ``flag`` (risk >= threshold; always, with a worklist budget) and the ``reasons``."""
        probs = self.prior.predict([r.get("findings") or "" for r in records]) if self.prior is not None else None
        x = feature_table(records, drafts, rows=rows, prior_probs=probs, pseudo=self.model.pseudo_model())
        risk = self.model.predict(x)
        out = []
        for i, (rec, draft) in enumerate(zip(records, drafts)):
            flag = self.worklist_budget is not None or bool(risk[i] >= self.threshold)
            reasons: list[dict[str, Any]] = []
            if flag:
                reasons.append({"kind": "review_risk", "message": self._message(float(risk[i]), draft,
                                                                                 None if probs is None else probs.iloc[i])})
                reasons.extend(_distinct_flags(checks.triage_flags(rec, draft)))
            out.append({"risk": round(float(risk[i]), 4), "flag": flag, "reasons": reasons})
        return out

    def _message(self, risk: float, draft: str, probs: Mapping[str, float] | None) -> str:
        text = (f"review risk {risk:.2f}, among the riskiest {100 * self.worklist_budget:g}% of this worklist"
                if self.worklist_budget is not None else f"review risk {risk:.2f} >= threshold {self.threshold:.2f}")
        if probs is None:
            return text
        lab = labeler.label_report(draft)
        missing = sorted(((float(probs[o]), o) for o in TRIAGE_OBSERVATIONS if lab[o] not in _PRESENT
                          and probs[o] >= 0.2), reverse=True)
        extra = sorted((float(probs[o]), o) for o in TRIAGE_OBSERVATIONS if lab[o] == labeler.POSITIVE
                       and probs[o] < 0.2)
        if missing:
            text += ("; impressions of such findings usually state " +
                     ", ".join(f"{o} ({100 * p:.0f}%)" for p, o in missing[:3]) + ", which the draft does not")
        if extra:
            text += ("; the draft states " + ", ".join(f"{o} ({100 * p:.0f}%)" for p, o in extra[:3]) +
                     ", rarely in impressions of such findings")
        return text


def _distinct_flags(flags: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Flags as reasons, an entity-graph flag dropped when the labeler flagged the same kind and finding."""
    seen = {(f["kind"], str(f["finding"]).lower()) for f in flags if f.get("check") == "labeler"}
    return [{"kind": str(f["kind"]), "message": str(f["message"])} for f in flags
            if f.get("check") == "labeler" or (f["kind"], str(f["finding"]).lower()) not in seen]
