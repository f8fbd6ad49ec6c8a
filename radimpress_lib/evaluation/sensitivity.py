"""Corruption sensitivity of every metric: how much a score drops when a reference is corrupted."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from radimpress_lib.clinical.corruptions import CORRUPTION_TYPES, corrupt_many
from radimpress_lib.clinical.labeler import normalize_whitespace
from radimpress_lib.evaluation import metrics as M

#: Metrics of the sensitivity table (higher is better for all of them).
SENSITIVITY_METRICS = ("rougeL", "bleu", "embed_sim", "label_f1_micro", "label_f1_micro_status", "graph_entity_f1",
                       "graph_f1")


#: Factual error rates vs the findings (higher is worse), reported as increases.
RATE_METRICS = ("negation_flip_rate", "hallucinated_finding_rate", "omitted_finding_rate")


def sensitivity_table(references: Sequence[str], findings: Sequence[str] | None = None,
                      kinds: Sequence[str] = CORRUPTION_TYPES, *, seed: int = 0, embed_model: Any = True,
                      n_boot: int = 1000):
    """How far each metric drops when references are scored against corrupted copies of themselves.

    For each kind, the references it applies to are scored twice with
    :func:`radimpress_lib.evaluation.metrics.compute_per_example`: against themselves (identity) and
    against their corruption. Rows (long format): ``corruption, metric, identity,
    corrupted, drop`` (identity - corrupted; for the error rates of
    :data:`RATE_METRICS` the increase corrupted - identity), ``drop_ci_low/high`` and
    ``p_value`` (paired bootstrap, :func:`radimpress_lib.evaluation.metrics.compare_systems`),
    ``relative_drop_pct`` (100 * drop / identity; not for the rates), ``n_applied``,
    ``n_not_applicable``.
    ``embed_model``: as in ``compute_per_example`` (``True`` loads MiniLM, ``False`` skips).
    """
    import pandas as pd


    refs = [normalize_whitespace(r) for r in references]
    if findings is not None and len(findings) != len(refs):
        raise ValueError(f"{len(findings)} findings but {len(refs)} references")
    model = M.load_embedding_model() if embed_model is True else embed_model
    corrupted, skipped = corrupt_many(refs, kinds, seed)
    rows = []
    for kind in kinds:
        idx = [i for i, c in enumerate(corrupted[kind]) if c is not None]
        base = {"corruption": kind, "n_applied": len(idx), "n_not_applicable": skipped[kind]}
        if not idx:
            rows.append({**base, "metric": None})
            continue
        sub_refs = [refs[i] for i in idx]
        sub_find = None if findings is None else [findings[i] for i in idx]
        kw = {"embed_model": model if model is not None else False}
        ident = M.compute_per_example(sub_refs, sub_refs, sub_find, **kw)
        corr = M.compute_per_example([corrupted[kind][i].corrupted for i in idx], sub_refs, sub_find, **kw)
        names = [m for m in SENSITIVITY_METRICS + RATE_METRICS
                 if (m != "embed_sim" or ident.embed_sim is not None) and (m not in RATE_METRICS or sub_find)]
        cmp = M.compare_systems(ident, corr, n_boot=n_boot, seed=seed, metrics=names)
        for m in names:
            r = cmp[m]
            sign = -1.0 if m in RATE_METRICS else 1.0
            drop = None if r["delta"] is None else sign * r["delta"]
            lo, hi = r["delta_ci"]
            if sign < 0 and lo is not None:
                lo, hi = -hi, -lo
            rel = None if drop is None or not r["a"] or sign < 0 else 100.0 * drop / r["a"]
            rows.append({**base, "metric": m, "identity": r["a"], "corrupted": r["b"], "drop": drop,
                         "drop_ci_low": lo, "drop_ci_high": hi, "p_value": r["p_value"],
                         "relative_drop_pct": rel})
    return pd.DataFrame(rows)


def sensitivity_pivot(table, value: str = "drop"):
    """Corruption x metric table of ``value`` (``drop`` or ``relative_drop_pct``)."""
    t = table.dropna(subset=["metric"])
    order = [m for m in SENSITIVITY_METRICS + RATE_METRICS if m in set(t["metric"])]
    return t.pivot(index="corruption", columns="metric", values=value)[order]


def plot_sensitivity(table):
    """Heatmap of the relative drop (% of the identity score) per corruption and metric."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    t = table.dropna(subset=["metric"])
    t = t[t["metric"].isin(SENSITIVITY_METRICS)]
    pivot = sensitivity_pivot(t, "relative_drop_pct").astype(float)
    fig, ax = plt.subplots(figsize=(1.2 * pivot.shape[1] + 3, 0.6 * pivot.shape[0] + 2))
    sns.heatmap(pivot, annot=True, fmt=".1f", cmap="rocket_r", vmin=0, ax=ax, cbar_kws={"label": "drop, % of identity"})
    ax.set_title("Metric drop when references are scored against corrupted copies")
    ax.set_xlabel("")
    ax.set_ylabel("")
    fig.tight_layout()
    return fig
