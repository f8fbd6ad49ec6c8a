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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rouge_score import rouge_scorer

from radimpress_lib.clinical import checks


@dataclass(frozen=True)
class Selection:
    """The chosen impression and where it came from (``draft`` or ``retrieved:<rank>``)."""

    text: str
    source: str
    n_candidates: int


def _flag_count(record: Mapping[str, Any], text: str) -> int:
    return len(checks.labeler_checker(record, text, include_omissions=True)) + len(
        checks.graph_checker(record, text, include_omissions=True))


class MBRSelector:
    """Choose among a draft and retrieved impressions by expected ROUGE-L (stemmed, F1) against the others."""

    def __init__(self, k: int = 5, *, draft_weight: float = 1.0, factual: bool = True) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1 retrieved impressions, got {k}")
        if draft_weight <= 0:
            raise ValueError(f"draft_weight must be positive, got {draft_weight}")
        self.k, self.draft_weight, self.factual = k, draft_weight, factual
        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    def _similarity(self, a: str, b: str) -> float:
        return self._scorer.score(b, a)["rougeL"].fmeasure

    def select(self, record: Mapping[str, Any], draft: str, retrieved: Sequence[str]) -> Selection:
        """The MBR choice for one report (``record`` holds its findings)."""
        candidates = [draft] + list(retrieved[: self.k])
        weights = [self.draft_weight] + [1.0] * (len(candidates) - 1)
        keep = list(range(len(candidates)))
        if self.factual and len(candidates) > 1:
            limit = _flag_count(record, draft)
            keep = [0] + [i for i in keep[1:] if candidates[i].strip() and _flag_count(record, candidates[i]) <= limit]
        if len(keep) == 1:
            return Selection(draft, "draft", len(keep))
        utility = {i: sum(weights[j] * self._similarity(candidates[i], candidates[j]) for j in keep if j != i)
                   for i in keep}
        best = max(keep, key=lambda i: (utility[i], -i))  # ties go to the draft, then the nearer neighbour
        return Selection(candidates[best], "draft" if best == 0 else f"retrieved:{best}", len(keep))

    def select_many(self, records: Sequence[Mapping[str, Any]], drafts: Sequence[str],
                    retrieved: Sequence[Sequence[str]]) -> list[Selection]:
        """:meth:`select` for every report; ``retrieved[i]`` are report i's neighbours, most similar first."""
        if not len(records) == len(drafts) == len(retrieved):
            raise ValueError(f"{len(records)} records, {len(drafts)} drafts, {len(retrieved)} neighbour lists")
        return [self.select(r, d, n) for r, d, n in zip(records, drafts, retrieved)]
