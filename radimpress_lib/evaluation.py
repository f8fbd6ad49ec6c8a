"""Notebook 05: score every system on the same test reports, tabulate, compare, plot.

A *system* is a name and one prediction per test report (baselines, the zero-shot
model, the SFT model; later stages add theirs). Scores come from
:mod:`radimpress_lib.metrics` (paired-bootstrap CIs); ``outputs/<model>/metrics.json``
is the stable result file: ``{"<system>": {"<metric>": value, "<metric>_ci": [lo, hi]},
"n": <number of test reports>}``. Systems written by other notebooks are kept.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from radimpress_lib import metrics as M
from radimpress_lib.baselines import RetrievalBaseline, majority_baseline

#: Published results on the same Open-i test split (Van Veen et al., Nature Medicine 2024).
PUBLISHED_ANCHORS: list[dict[str, Any]] = [
    {"system": "GPT-4, in-context examples (Van Veen et al. 2024)", "rougeL": 68.2, "bleu": 46.0},
    {"system": "FLAN-T5-XL fine-tuned (Van Veen et al. 2024)", "rougeL": 67.5, "bleu": None},
]

#: Metrics shown in the summary table, in order.
TABLE_METRICS = ("rouge1", "rouge2", "rougeL", "bleu", "embed_sim", "label_f1_micro", "label_f1_macro",
                 "label_f1_micro_status", "len_ratio_words")


def baseline_predictions(train_records: Sequence[Mapping[str, Any]],
                         test_records: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Majority impression and TF-IDF nearest-neighbour retrieval, fitted on ``train_records`` only."""
    impressions = [r["impression"] for r in train_records]
    majority = majority_baseline(impressions)
    retrieval = RetrievalBaseline().fit([r["findings"] for r in train_records], impressions)
    return {
        "majority": [majority] * len(test_records),
        "retrieval": retrieval.predict([r["findings"] for r in test_records]),
    }


def evaluate_systems(systems: Mapping[str, Sequence[str]], test_records: Sequence[Mapping[str, Any]], *,
                     n_boot: int = 1000, seed: int = 0, tokenizer: Any = None
                     ) -> tuple[dict[str, dict[str, Any]], dict[str, M.PerExample]]:
    """Score each system against the test references; returns (metrics, per-example statistics)."""
    references = [r["impression"] for r in test_records]
    findings = [r["findings"] for r in test_records]
    embedder = M.load_embedding_model()
    scores, per = {}, {}
    for name, predictions in systems.items():
        if len(predictions) != len(references):
            raise ValueError(f"system {name!r} has {len(predictions)} predictions for {len(references)} test reports")
        per[name] = M.compute_per_example(predictions, references, findings, tokenizer=tokenizer, embed_model=embedder)
        scores[name] = M.summarize(per[name], n_boot=n_boot, seed=seed)
    return scores, per


def comparisons(per: Mapping[str, M.PerExample], against: str, *, n_boot: int = 1000, seed: int = 0,
                metrics: Sequence[str] = ("rougeL", "bleu", "label_f1_micro", "label_f1_macro")) -> pd.DataFrame:
    """Paired bootstrap of ``against`` vs every other system: delta, 95% CI, p-value."""
    rows = []
    for other in per:
        if other == against:
            continue
        result = M.compare_systems(per[against], per[other], n_boot=n_boot, seed=seed, metrics=list(metrics))
        for metric, r in result.items():
            rows.append({"system": against, "vs": other, "metric": metric, "delta": r["delta"],
                         "ci_low": r["delta_ci"][0], "ci_high": r["delta_ci"][1], "p_value": r["p_value"]})
    return pd.DataFrame(rows)


def _fmt(value: Any, ci: Any) -> str:
    if value is None:
        return "–"
    if ci and ci[0] is not None:
        return f"{value:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]" if abs(value) > 1.5 else f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"{value:.1f}" if abs(value) > 1.5 else f"{value:.3f}"


def metrics_table(scores: Mapping[str, Mapping[str, Any]], metrics: Sequence[str] = TABLE_METRICS,
                  anchors: bool = True) -> pd.DataFrame:
    """One row per system, 'value [low, high]' cells; published anchors appended as text rows."""
    rows = [{"system": name, **{m: _fmt(s.get(m), s.get(f"{m}_ci")) for m in metrics}} for name, s in scores.items()]
    if anchors:
        for a in PUBLISHED_ANCHORS:
            rows.append({"system": a["system"], **{m: (f"{a[m]:.1f} (published)" if a.get(m) is not None else "")
                                                    for m in metrics}})
    return pd.DataFrame(rows).set_index("system")


def update_metrics_json(path: Path, scores: Mapping[str, Mapping[str, Any]], n: int) -> dict[str, Any]:
    """Merge systems into ``metrics.json`` (other notebooks' systems kept); ``n`` must agree."""
    current: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if "n" in current and current["n"] != n:
        raise ValueError(f"{path}: existing systems were scored on n={current['n']} reports, these on n={n}; "
                         "re-run every scoring notebook with the same data limits")
    current.update({name: dict(s) for name, s in scores.items()})
    current["n"] = n
    path.write_text(json.dumps(current, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return current


def worst_examples(test_records: Sequence[Mapping[str, Any]], predictions: Sequence[str], per: M.PerExample,
                   k: int = 10) -> pd.DataFrame:
    """The k test reports where the system's ROUGE-L is lowest (ties: longer reference first)."""
    frame = pd.DataFrame({
        "report_id": [r["report_id"] for r in test_records],
        "findings": [r["findings"] for r in test_records],
        "reference": [r["impression"] for r in test_records],
        "prediction": list(predictions),
        "rougeL": per.rougeL,  # 0-100
        "ref_words": per.ref_words,
    })
    return frame.sort_values(["rougeL", "ref_words"], ascending=[True, False]).head(k).reset_index(drop=True)


def per_finding_table(per: Mapping[str, M.PerExample], kind: str = "positive") -> pd.DataFrame:
    """Long table of per-observation F1 for every system (for the bar plot)."""
    rows = []
    for name, p in per.items():
        for row in M.per_finding_f1(p, kind=kind):
            rows.append({"system": name, **row})
    return pd.DataFrame(rows)


def plot_per_finding_f1(table: pd.DataFrame):
    """Grouped horizontal bars: F1 per observation and system (observations with reference positives)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    shown = table[table["n_ref"] > 0].copy()
    shown["f1"] = shown["f1"].fillna(0.0)
    order = (shown.groupby("observation")["n_ref"].max().sort_values(ascending=False).index.tolist())
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(order) * max(1, shown["system"].nunique()) / 2 + 2))
    sns.barplot(data=shown, y="observation", x="f1", hue="system", order=order, ax=ax)
    ax.set_xlabel("F1 (0-100), positive class")
    ax.set_ylabel("")
    ax.set_title("Per-finding F1 vs reference (CheXpert-style labeler)")
    ax.set_xlim(0, 100)
    fig.tight_layout()
    return fig


def plot_lengths(per: Mapping[str, M.PerExample]):
    """Predicted vs reference length (words) per system, with the y = x line."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    frame = pd.concat([pd.DataFrame({"system": name, "reference words": p.ref_words, "predicted words": p.pred_words})
                       for name, p in per.items()], ignore_index=True)
    fig, ax = plt.subplots(figsize=(6.5, 5))
    sns.scatterplot(data=frame, x="reference words", y="predicted words", hue="system", alpha=0.5, s=18, ax=ax)
    top = float(max(frame["reference words"].max(), frame["predicted words"].max(), 1))
    ax.plot([0, top], [0, top], color="grey", lw=1, ls="--")
    ax.set_title("Prediction vs reference length")
    fig.tight_layout()
    return fig
