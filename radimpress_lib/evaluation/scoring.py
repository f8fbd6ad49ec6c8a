"""Notebook 05: score every system on the same test reports, tabulate, compare, plot.

A *system* is a name and one prediction per test report (baselines, the zero-shot
model, the SFT model; later stages add theirs). Scores come from
:mod:`radimpress_lib.evaluation.metrics` (paired-bootstrap CIs); ``outputs/<model>/metrics.json``
is the stable result file of the headline protocol (``deduplicated``, see
:mod:`radimpress_lib.data.protocols`): ``{"<system>": {"<metric>": value, "<metric>_ci": [lo, hi],
"<metric>_leaky": .., "<metric>_clean": .., "n_leaky": .., "n_clean": ..}, "n": <number of test
reports>, "protocol": "deduplicated"}``. Systems written by other notebooks are kept.
``metrics_published.json`` has the same shape for the ``published`` protocol
(:mod:`radimpress_lib.evaluation.published`).

Published numbers of other papers (:data:`PUBLISHED_ANCHORS`) were measured under the
published protocol with its own metric implementation: :func:`metrics_table` shows them
only beside the published-protocol metrics, never beside ours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radimpress_lib.core.artifacts import PROTOCOLS
from radimpress_lib.core.jsonio import merge_json
from radimpress_lib.evaluation import metrics as M
from radimpress_lib.evaluation.baselines import majority_baseline
from radimpress_lib.llm.retrieval import RetrievalBaseline

#: Published Open-i results (Van Veen et al., Nature Medicine 2024): the 250-report test subset, train split
#: as given, per-sample unstemmed ROUGE-L and per-sample BLEU (``metrics.PUBLISHED_METRICS``); ``None``: not
#: reported. They are comparable only to ``rougeL_published`` / ``bleu_published`` under the published protocol.
PUBLISHED_ANCHORS: list[dict[str, Any]] = [
    {"system": "GPT-4, 256 nearest in-context examples (Van Veen et al. 2024)", "rougeL_published": 68.2,
     "bleu_published": 46.0},
    {"system": "GPT-4, best row: 64 in-context examples (Van Veen et al. 2024)", "rougeL_published": 68.8,
     "bleu_published": None},
    {"system": "GPT-3.5 (Van Veen et al. 2024)", "rougeL_published": 67.2, "bleu_published": None},
    {"system": "FLAN-T5-XL, 4 in-context examples (Van Veen et al. 2024)", "rougeL_published": 67.5,
     "bleu_published": 46.0},
]

#: Metrics shown in the summary table, in order.
TABLE_METRICS = ("rouge1", "rouge2", "rougeL", "bleu", "embed_sim", "label_f1_micro", "label_f1_macro",
                 "label_f1_micro_status", "len_ratio_words")

#: Column headers that say how a metric was computed (metrics not listed keep their name).
METRIC_LABELS: dict[str, str] = {
    "rougeL": "rougeL (stemmed)",
    "bleu": "bleu (sacreBLEU corpus)",
    "rougeL_published": "rougeL (as published: unstemmed, per sample)",
    "bleu_published": "bleu (as published: per sample, no smoothing)",
    "missed_abnormality_rate": "missed abnormality %",
}

#: Metrics of the leaky / clean table and of the clinical view (protocol B).
LEAKY_CLEAN_METRICS = ("rougeL", "bleu", "label_f1_micro", "missed_abnormality_rate")
CLINICAL_METRICS = ("missed_abnormality_rate", "label_f1_micro", "label_f1_macro")


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
                     n_boot: int = 1000, seed: int = 0, tokenizer: Any = None, leaky: Sequence[bool] | None = None,
                     published: bool = False, metrics: Sequence[str] | None = None, embed: bool = True
                     ) -> tuple[dict[str, dict[str, Any]], dict[str, M.PerExample]]:
    """Score each system against the test references; returns (metrics, per-example statistics).

    ``leaky`` (one flag per test report: findings also in train+validate, see
    :func:`radimpress_lib.data.protocols.leaky_flags`) adds every metric on the leaky and the
    clean reports (``<metric>_leaky``, ``<metric>_clean``, their ``_ci``, ``n_leaky``,
    ``n_clean``). ``published`` adds the published protocol's ``rougeL_published`` /
    ``bleu_published``; ``metrics`` restricts the metrics summarised; ``embed=False`` skips
    the embedding similarity.
    """
    references = [r["impression"] for r in test_records]
    findings = [r["findings"] for r in test_records]
    if leaky is not None and len(leaky) != len(references):
        raise ValueError(f"{len(leaky)} leaky flags for {len(references)} test reports")
    embedder = M.load_embedding_model() if embed else False
    scores, per = {}, {}
    for name, predictions in systems.items():
        if len(predictions) != len(references):
            raise ValueError(f"system {name!r} has {len(predictions)} predictions for {len(references)} test reports")
        per[name] = M.compute_per_example(predictions, references, findings, tokenizer=tokenizer, embed_model=embedder,
                                          published=published)
        scores[name] = M.summarize(per[name], n_boot=n_boot, seed=seed, only=metrics)
        if leaky is not None:
            scores[name].update(leaky_clean_scores(per[name], leaky, n_boot=n_boot, seed=seed, metrics=metrics))
    return scores, per


def leaky_clean_scores(per: M.PerExample, leaky: Sequence[bool], *, n_boot: int = 1000, seed: int = 0,
                       metrics: Sequence[str] | None = None) -> dict[str, Any]:
    """Every metric on the leaky and on the clean test reports (``<metric>_leaky`` / ``_clean``, CIs, ``n_*``)."""
    mask = np.asarray(leaky, dtype=bool)
    return M.summarize_by_group(per, {"leaky": mask, "clean": ~mask}, n_boot=n_boot, seed=seed, only=metrics)


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


def _fmt(value: Any, ci: Any, digits: int | None = None) -> str:
    """'value [low, high]'; ``digits`` None: 1 decimal, or 3 for values within +-1.5 (cosines, ratios)."""
    if value is None:
        return "–"
    d = digits if digits is not None else (1 if abs(value) > 1.5 else 3)
    if ci and ci[0] is not None:
        return f"{value:.{d}f} [{ci[0]:.{d}f}, {ci[1]:.{d}f}]"
    return f"{value:.{d}f}"


def _digits(metric: str) -> int | None:
    """1 decimal for the metrics on a 0-100 scale (so 0 reads "0.0"), else :func:`_fmt`'s choice."""
    percent = metric.startswith(("rouge", "bleu", "sent_bleu", "label_f1", "graph_")) or metric.endswith("_rate")
    return 1 if percent else None


def metrics_table(scores: Mapping[str, Mapping[str, Any]], metrics: Sequence[str] = TABLE_METRICS,
                  anchors: bool = False) -> pd.DataFrame:
    """One row per system, 'value [low, high]' cells, headers from :data:`METRIC_LABELS`.

    ``anchors`` appends :data:`PUBLISHED_ANCHORS` as text rows; they were measured under the
    published protocol, so it is refused unless ``metrics`` holds a published-protocol metric
    (``rougeL_published`` / ``bleu_published``), and anchors fill only those columns.
    """
    rows = [{"system": name, **{m: _fmt(s.get(m), s.get(f"{m}_ci"), _digits(m)) for m in metrics}}
            for name, s in scores.items()]
    if anchors:
        comparable = [m for m in metrics if m in M.PUBLISHED_METRICS]
        if not comparable:
            raise ValueError(f"published anchors are {list(M.PUBLISHED_METRICS)} under the published protocol; "
                             f"they cannot sit beside {list(metrics)}")
        for a in PUBLISHED_ANCHORS:
            rows.append({"system": a["system"], **{m: (f"{a[m]:.1f} (published)" if a.get(m) is not None else "")
                                                    for m in metrics}})
    return pd.DataFrame(rows).set_index("system").rename(columns=METRIC_LABELS)


def leaky_clean_table(scores: Mapping[str, Mapping[str, Any]],
                      metrics: Sequence[str] = LEAKY_CLEAN_METRICS) -> pd.DataFrame:
    """Per system: each metric on all test reports, the leaky and the clean ones ('value [low, high]').

    Columns ``(<metric label>, all | leaky (n=..) | clean (n=..))``; systems scored without the
    split are left out.
    """
    split = {name: s for name, s in scores.items() if isinstance(s, Mapping) and "n_leaky" in s}
    if not split:
        return pd.DataFrame()
    first = next(iter(split.values()))
    parts = {"all": "", f"leaky (n={first['n_leaky']})": "_leaky", f"clean (n={first['n_clean']})": "_clean"}
    columns = pd.MultiIndex.from_tuples([(METRIC_LABELS.get(m, m), p) for m in metrics for p in parts])
    rows = [[_fmt(s.get(f"{m}{suf}"), s.get(f"{m}{suf}_ci"), _digits(m)) for m in metrics for suf in parts.values()]
            for s in split.values()]
    return pd.DataFrame(rows, index=pd.Index(list(split), name="system"), columns=columns)


def clinical_table(scores: Mapping[str, Mapping[str, Any]], metrics: Sequence[str] = CLINICAL_METRICS) -> pd.DataFrame:
    """The clinical view per system: missed-abnormality rate (with its denominator) and label F1, with CIs."""
    rows = {name: {"reports with an abnormal reference": s.get("n_reference_abnormal"),
                   **{METRIC_LABELS.get(m, m): _fmt(s.get(m), s.get(f"{m}_ci"), _digits(m)) for m in metrics}}
            for name, s in scores.items() if isinstance(s, Mapping) and "missed_abnormality_rate" in s}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("system")


def per_finding_clinical_table(scores: Mapping[str, Mapping[str, Any]], what: str = "recall") -> pd.DataFrame:
    """Per-finding ``recall`` (or ``f1``) of every system, 'value [low, high]' (0-100).

    Rows: systems; columns: the CheXpert observations with reference positives, headed with their
    support (``n`` = test references labelled positive). Read from each system's ``per_finding_f1``
    rows (:func:`metrics.summarize`: positive class, our CheXpert-style labeler), so it works on a
    loaded ``metrics.json`` too.
    """
    if what not in ("recall", "f1", "precision"):
        raise ValueError(f"what must be recall, f1 or precision, got {what!r}")
    rows: dict[str, dict[str, str]] = {}
    support: dict[str, int] = {}
    for name, s in scores.items():
        if not isinstance(s, Mapping) or "per_finding_f1" not in s:
            continue
        rows[name] = {}
        for row in s["per_finding_f1"]:
            support[row["observation"]] = max(support.get(row["observation"], 0), row["n_ref"])
            rows[name][row["observation"]] = _fmt(row.get(what), row.get(f"{what}_ci"), 1)
    shown = [obs for obs, n in sorted(support.items(), key=lambda kv: -kv[1]) if n > 0]
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=shown)
    return frame.rename(columns={obs: f"{obs} (n={support[obs]})" for obs in shown}).rename_axis(f"{what} by system")


def update_metrics_json(path: Path, scores: Mapping[str, Mapping[str, Any]], n: int, *,
                        protocol: str = "deduplicated", extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge systems into a metrics file (other notebooks' systems kept); ``n`` and ``protocol`` must agree.

    ``protocol`` (``deduplicated`` for ``metrics.json``, ``published`` for
    ``metrics_published.json``) is written at the top level beside ``n``; ``extra`` adds other
    top-level entries (e.g. the published subset's description).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")

    def same_n(current: dict[str, Any]) -> None:
        if "n" in current and current["n"] != n:
            raise ValueError(f"{path}: existing systems were scored on n={current['n']} reports, these on n={n}; "
                             "re-run every scoring notebook with the same data limits")
        if current.get("protocol", protocol) != protocol:
            raise ValueError(f"{path}: holds {current['protocol']!r}-protocol scores, these are {protocol!r}")

    entries = {name: dict(s) for name, s in scores.items()} | dict(extra or {}) | {"n": n, "protocol": protocol}
    return merge_json(path, entries, check=same_n)


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
    support = shown.groupby("observation")["n_ref"].max()  # the same references for every system
    shown["finding"] = [f"{obs} (n={support[obs]})" for obs in shown["observation"]]
    order = [f"{obs} (n={n})" for obs, n in support.sort_values(ascending=False).items()]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(order) * max(1, shown["system"].nunique()) / 2 + 2))
    sns.barplot(data=shown, y="finding", x="f1", hue="system", order=order, ax=ax)
    ax.set_xlabel("F1 (0-100), positive class; n = test references with the finding")
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
