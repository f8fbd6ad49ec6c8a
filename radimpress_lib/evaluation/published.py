"""Protocol A, "as published": our systems scored the way Van Veen et al. (Nature Medicine 2024) scored theirs.

What makes the paper's Open-i numbers (GPT-4 ROUGE-L 68.2, ...) comparable to ours only under
this protocol (see :mod:`radimpress_lib.data.protocols` for the data side):

* test: the 250-report subset the paper scored (fewer when the run's test split is limited:
  the scored ``n`` is always reported);
* training / retrieval: the benchmark's train split **as given** (no leakage guard), so a
  test report whose findings also occur in train finds that twin;
* metrics: ``rougeL_published`` (rouge-score ``rougeL`` F1, no stemming, per sample x 100, mean)
  and ``bleu_published`` (per-sample BLEU, 4-grams, no smoothing, 13a; empty output 0; mean),
  from :mod:`radimpress_lib.evaluation.metrics` with the same paired bootstrap as every other
  metric; plus the clinical view (label F1, per-finding recall / F1, missed-abnormality rate).

Systems: ``majority`` and ``retrieval`` refitted on train as given; ``sft_published`` (the SFT
model trained on train as given, ``outputs/<model>/sft_published/adapter``) when it exists; and
every system of the deduplicated protocol (``sft``, the fine stage, ...) scored on the same
reports with the same metric, under the key ``<system>_dedup`` and labelled as trained
deduplicated. ``outputs/<model>/metrics_published.json`` has the ``metrics.json`` shape with
``"protocol": "published"`` and the subset's description.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from radimpress_lib.evaluation import metrics as M
from radimpress_lib.evaluation import scoring

__all__ = [
    "BASELINES",
    "DEDUP_SUFFIX",
    "METRICS_FILE",
    "NOT_TRAINED",
    "PUBLISHED_SFT",
    "PUBLISHED_SFT_MBR",
    "SUMMARY_METRICS",
    "TABLE_METRICS",
    "TRAINED_AS_GIVEN",
    "TRAINED_DEDUPLICATED",
    "comparisons",
    "dedup_systems_on_subset",
    "evaluate",
    "leaky_clean_table",
    "table",
    "update_metrics_json",
]

#: The result file of the published protocol, beside ``metrics.json``.
METRICS_FILE = "metrics_published.json"
#: System name of the SFT model trained on train as given.
PUBLISHED_SFT = "sft_published"
#: Its minimum-Bayes-risk selection among the draft and the nearest train-as-given impressions.
PUBLISHED_SFT_MBR = f"{PUBLISHED_SFT}_mbr"
#: Systems refitted on train as given for this protocol.
BASELINES = ("majority", "retrieval")
#: Key suffix of the deduplicated protocol's systems scored here.
DEDUP_SUFFIX = "_dedup"

#: ``trained_on`` labels of the systems.
TRAINED_AS_GIVEN = "train as given (published protocol)"
TRAINED_DEDUPLICATED = "train deduplicated (leakage guard; headline protocol)"
NOT_TRAINED = "not fine-tuned"

#: Metrics summarised (with CIs and the leaky / clean split) under this protocol.
SUMMARY_METRICS: tuple[str, ...] = (*M.PUBLISHED_METRICS, "label_f1_micro", "label_f1_macro",
                                    "missed_abnormality_rate")
#: Columns of the protocol's table (the anchors fill the first two).
TABLE_METRICS: tuple[str, ...] = SUMMARY_METRICS


def dedup_systems_on_subset(systems: Mapping[str, Sequence[str]], positions: Sequence[int], *,
                            skip: Sequence[str] = BASELINES) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The deduplicated protocol's drafts of the subset's reports, renamed ``<system>_dedup``.

    ``systems`` hold one draft per test report of the run; ``positions`` are the subset's
    positions in it (:class:`~radimpress_lib.data.protocols.PublishedTestSubset`). Systems in
    ``skip`` (the baselines, refitted for this protocol) are left out; ``zero_shot`` keeps its
    name (no training, the same model under both protocols). Returns ``(systems, trained_on)``.
    """
    out: dict[str, list[str]] = {}
    trained: dict[str, str] = {}
    for name, drafts in systems.items():
        if name in skip:
            continue
        key = name if name == "zero_shot" else f"{name}{DEDUP_SUFFIX}"
        out[key] = [drafts[p] for p in positions]
        trained[key] = NOT_TRAINED if name == "zero_shot" else TRAINED_DEDUPLICATED
    return out, trained


def evaluate(systems: Mapping[str, Sequence[str]], test_records: Sequence[Mapping[str, Any]], leaky: Sequence[bool],
             trained_on: Mapping[str, str], *, n_boot: int = 1000, seed: int = 0
             ) -> tuple[dict[str, dict[str, Any]], dict[str, M.PerExample]]:
    """Score systems under the published protocol: :data:`SUMMARY_METRICS` with CIs, leaky / clean split.

    Each system's entry also says what it was ``trained_on`` (:data:`TRAINED_AS_GIVEN`, ...).
    """
    missing = [name for name in systems if name not in trained_on]
    if missing:
        raise ValueError(f"say what {missing} were trained on (trained_on)")
    scores, per = scoring.evaluate_systems(systems, test_records, n_boot=n_boot, seed=seed, leaky=leaky,
                                           published=True, metrics=SUMMARY_METRICS, embed=False)
    for name in scores:
        scores[name]["trained_on"] = trained_on[name]
    return scores, per


def table(scores: Mapping[str, Mapping[str, Any]], metrics: Sequence[str] = TABLE_METRICS) -> pd.DataFrame:
    """The published-protocol table: our systems (with what they were trained on), then the paper's anchors."""
    frame = scoring.metrics_table(scores, metrics=metrics, anchors=True)
    trained = {name: s.get("trained_on", "") for name, s in scores.items()}
    frame.insert(0, "trained on", [trained.get(name, "published result") for name in frame.index])
    return frame


def leaky_clean_table(scores: Mapping[str, Mapping[str, Any]],
                      metrics: Sequence[str] = (*M.PUBLISHED_METRICS, "missed_abnormality_rate")) -> pd.DataFrame:
    """Each published-protocol metric on all, leaky and clean subset reports."""
    return scoring.leaky_clean_table(scores, metrics=metrics)


def comparisons(per: Mapping[str, M.PerExample], against: str, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Paired bootstrap of ``against`` vs every other system on the subset, published-protocol metrics."""
    return scoring.comparisons(per, against, n_boot=n_boot, seed=seed, metrics=SUMMARY_METRICS)


def update_metrics_json(path: Path, scores: Mapping[str, Mapping[str, Any]], n: int,
                        subset: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge systems into ``metrics_published.json`` (``"protocol": "published"``, ``n`` checked)."""
    extra = {"subset": dict(subset)} if subset is not None else None
    return scoring.update_metrics_json(path, scores, n, protocol="published", extra=extra)
