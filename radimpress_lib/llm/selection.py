"""Minimum-Bayes-risk selection of an impression among the model's draft and the retrieved impressions.

The SFT prompt already shows the impressions of the ``k`` most similar training reports
(:mod:`radimpress_lib.llm.retrieval`). At decoding time those impressions and the model's draft
form a small candidate set; MBR picks the candidate with the highest expected ROUGE-L against the
others (the consensus), weighting the draft by ``draft_weight``. The oracle best of the draft and
5 retrieved impressions scores far above either alone on validate, so picking among them is a
cheap decode-time lever: no extra decoding, only string comparisons.

Selection must not trade facts for wording: with ``factual=True`` a retrieved impression is a
candidate only when the draft checks (:func:`radimpress_lib.clinical.checks.labeler_checker` and
:func:`~radimpress_lib.clinical.checks.graph_checker`, omissions included) flag no more problems
against this report's findings than they flag for the draft. Only the findings are used, never a
reference impression.

Two options aim the choice at coverage of the findings (the drafts under-call abnormal findings):
``flag_penalty`` subtracts that many units of consensus per problem the findings checks flag in a candidate
(omissions included), and ``coverage`` adds one hypothesis: the draft preceded by the findings sentences that
state each significant finding the draft omits (extractive, :func:`coverage_sentences`). Every hypothesis is
scored against the evidence (the draft and the admitted retrieved impressions); an evidence candidate's own copy
counts with similarity 1, so the coverage hypothesis, which is not evidence, is on the same scale.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from rouge_score import rouge_scorer

from radimpress_lib.clinical import checks, graph
from radimpress_lib.llm.retrieval import RetrievalContext


@dataclass(frozen=True)
class Selection:
    """The chosen impression and where it came from (``draft`` or ``retrieved:<rank>``)."""

    text: str
    source: str
    n_candidates: int


def _flag_count(record: Mapping[str, Any], text: str) -> int:
    return len(checks.labeler_checker(record, text, include_omissions=True)) + len(
        checks.graph_checker(record, text, include_omissions=True))


_NUMBERED = re.compile(r"^\s*1[.)]\s+")
_ITEM = re.compile(r"(?:^|\s)\d+[.)]\s+")


def coverage_sentences(findings: str, draft: str) -> list[str]:
    """The findings sentences (in findings order, each once) that state a significant finding present which
    ``draft`` does not mention with any status (the ``omitted`` groups of
    :func:`radimpress_lib.clinical.graph.compare_to_findings`)."""
    fnd = graph.extract_graph_cached(findings)
    omitted = set(graph.compare_to_findings(graph.extract_graph_cached(draft), fnd)["omitted"])
    if not omitted:
        return []
    idx = sorted({e.sentence for e in fnd.observations()
                  if (e.group or e.name) in omitted and e.status == graph.PRESENT})
    return [fnd.sentences[i].strip() for i in idx if i < len(fnd.sentences) and fnd.sentences[i].strip()]


def with_sentences_first(draft: str, sentences: Sequence[str]) -> str:
    """``sentences`` then ``draft``; a numbered draft ("1. ... 2. ...") stays numbered, renumbered from 1."""
    if not sentences:
        return draft
    if _NUMBERED.match(draft):
        items = [x.strip() for x in _ITEM.split(draft.strip()) if x.strip()]
        return " ".join(f"{i}. {t}" for i, t in enumerate([*sentences, *items], 1))
    return " ".join([*sentences, draft.strip()]).strip()


class MBRSelector:
    """Choose among a draft and retrieved impressions by expected ROUGE-L (stemmed, F1) against the others."""

    def __init__(self, k: int = 5, *, draft_weight: float = 1.0, factual: bool = True, flag_penalty: float = 0.0,
                 coverage: bool = False) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1 retrieved impressions, got {k}")
        if draft_weight <= 0:
            raise ValueError(f"draft_weight must be positive, got {draft_weight}")
        if flag_penalty < 0:
            raise ValueError(f"flag_penalty must be >= 0, got {flag_penalty}")
        self.k, self.draft_weight, self.factual = k, draft_weight, factual
        self.flag_penalty, self.coverage = flag_penalty, coverage
        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    def _similarity(self, a: str, b: str) -> float:
        return self._scorer.score(b, a)["rougeL"].fmeasure

    def select(self, record: Mapping[str, Any], draft: str, retrieved: Sequence[str]) -> Selection:
        """The MBR choice for one report (``record`` holds its findings)."""
        candidates = [draft] + list(retrieved[: self.k])
        weights = [self.draft_weight] + [1.0] * (len(candidates) - 1)
        keep = [0] + [i for i in range(1, len(candidates)) if candidates[i].strip()]
        flags: dict[int, int] = {}
        if (self.factual or self.flag_penalty) and len(keep) > 1:
            flags = {i: _flag_count(record, candidates[i]) for i in keep}
            if self.factual:
                keep = [0] + [i for i in keep[1:] if flags[i] <= flags[0]]
        hypotheses, covered = list(keep), None
        if self.coverage:
            added = coverage_sentences(str(record.get("findings") or ""), draft)
            if added:
                candidates.append(with_sentences_first(draft, added))
                covered = len(candidates) - 1
                hypotheses.append(covered)
                if self.flag_penalty:
                    flags[covered] = _flag_count(record, candidates[covered])
        if len(hypotheses) == 1:
            return Selection(draft, "draft", 1)
        # expected similarity against the evidence, a candidate's own copy included (similarity 1): with equal
        # weights this ranks the evidence as leaving itself out would, and puts a hypothesis outside the evidence
        # (the coverage one) on the same scale
        utility = {i: sum(weights[j] * (1.0 if i == j else self._similarity(candidates[i], candidates[j])) for j in keep)
                   - self.flag_penalty * flags.get(i, 0) for i in hypotheses}
        best = max(hypotheses, key=lambda i: (utility[i], -i))  # ties go to the draft, then the nearer neighbour
        source = "draft" if best == 0 else "coverage" if best == covered else f"retrieved:{best}"
        return Selection(candidates[best], source, len(hypotheses))

    def select_many(self, records: Sequence[Mapping[str, Any]], drafts: Sequence[str],
                    retrieved: Sequence[Sequence[str]]) -> list[Selection]:
        """:meth:`select` for every report; ``retrieved[i]`` are report i's neighbours, most similar first."""
        if not len(records) == len(drafts) == len(retrieved):
            raise ValueError(f"{len(records)} records, {len(drafts)} drafts, {len(retrieved)} neighbour lists")
        return [self.select(r, d, n) for r, d, n in zip(records, drafts, retrieved)]


class NeighbourMBR:
    """MBR over each report's draft and the impressions of its ``k`` nearest ``pool`` reports (TF-IDF on the
    findings, :class:`radimpress_lib.llm.retrieval.RetrievalContext`; index built once).

    What notebook 05's ``sft_mbr`` and ``radimpress draft --select mbr`` do; :meth:`from_config` takes the
    settings from ``eval.mbr_*``. ``same_findings``: a neighbour with the report's own findings is allowed
    (the published protocol's rule).
    """

    def __init__(self, pool: Sequence[Mapping[str, Any]] | Any, k: int = 5, *, factual: bool = True,
                 flag_penalty: float = 0.0, coverage: bool = False, same_findings: bool = False,
                 twins: bool = False) -> None:
        self.selector = MBRSelector(k, factual=factual, flag_penalty=flag_penalty, coverage=coverage)
        self.neighbours = RetrievalContext(pool, k, same_findings=same_findings)
        self.twins = twins and same_findings

    @classmethod
    def from_config(cls, eval_cfg: Any, pool: Sequence[Mapping[str, Any]] | Any, *,
                    same_findings: bool = False) -> NeighbourMBR:
        """The selection of ``eval_cfg`` (``mbr_k``, ``mbr_factual``, ``mbr_flag_penalty``, ``mbr_coverage``,
        ``mbr_twins``)."""
        return cls(pool, eval_cfg.mbr_k, factual=eval_cfg.mbr_factual, flag_penalty=eval_cfg.mbr_flag_penalty,
                   coverage=eval_cfg.mbr_coverage, same_findings=same_findings, twins=eval_cfg.mbr_twins)

    def describe(self) -> str:
        s = self.selector
        twins = "; a report with twins in the pool (same findings): the draft and the twins' impressions" \
            if self.twins else ""
        return (f"MBR over the draft and {s.k} similar impressions from {self.neighbours.n_pool} reports "
                f"(flag penalty {s.flag_penalty:g}{', coverage candidate' if s.coverage else ''}{twins})")

    def __call__(self, records: Sequence[Mapping[str, Any]], drafts: Sequence[str]) -> list[Selection]:
        """The choice per report. With ``twins`` (protocol A only: ``same_findings``) a report whose normalised
        findings occur in the pool takes its twins' impressions as the evidence instead of its k nearest (the
        draft, which saw them in its prompt, stays a candidate); their sources read ``twin:<rank>``."""
        evidence = [r["similar_impressions"] for r in self.neighbours(records)]
        if not self.twins:
            return self.selector.select_many(records, drafts, evidence)
        twins = self.neighbours.index.same_findings_impressions(
            [r["findings"] for r in records], self.selector.k, exclude_ids=[r.get("report_id") for r in records])
        chosen = self.selector.select_many(records, drafts, [t or e for t, e in zip(twins, evidence)])
        return [replace(c, source=c.source.replace("retrieved:", "twin:")) if t else c for c, t in zip(chosen, twins)]
