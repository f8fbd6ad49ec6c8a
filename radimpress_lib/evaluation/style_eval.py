"""Style evaluation of drafts: target radiologists, style accuracy, template insertion, per radiologist."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from radimpress_lib.clinical import style
from radimpress_lib.evaluation import metrics as M


def test_style_slots(model: style.StyleModel, records: Sequence[Mapping[str, Any]],
                     pool: Sequence[Mapping[str, Any]], k: int, seed: int) -> tuple[list[str], list[str | None], list[bool]]:
    """Target group, style slot and 'unseen' flag for each evaluation record.

    The target radiologist of a report is the group of its reference impression. Seen groups
    get their style prefix; the unseen group gets the few-shot slot with ``k`` examples from
    ``pool`` (train/validate records only).
    """
    targets = model.assign(records)
    fewshot = style.fewshot_style(model, model.unseen, pool, k=k, seed=seed) if model.unseen else None
    slots = [fewshot if g == model.unseen else style.style_prefix(model, g) if g in model.profiles else None
             for g in targets]
    return targets, slots, [g == model.unseen for g in targets]


def template_insertion(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """How often the drafts carry a normal-study statement, overall and where the reference has none.

    ``normal_statement_added_rate`` is the share of the reports whose reference impression has no
    normal-study statement (:func:`radimpress_lib.clinical.style.normal_statement`; mostly abnormal
    studies) for which the draft adds one. A fine stage rewarded for a reader's style can learn
    to append that reader's normal phrase to every impression: template exploitation that the
    length and distinct-impression ratios do not see. Both rates in percent.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    has_pred = [style.normal_statement(p) is not None for p in predictions]
    bare = [i for i, r in enumerate(references) if style.normal_statement(r) is None]
    return {"normal_statement_rate": 100.0 * float(np.mean(has_pred)) if predictions else None,
            "normal_statement_added_rate": 100.0 * float(np.mean([has_pred[i] for i in bare])) if bare else None,
            "n_references_without_normal_statement": len(bare)}


def style_evaluation(classifier: style.StyleClassifier, systems: Mapping[str, Sequence[str]], targets: Sequence[str],
                     references: Sequence[str], *, n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """``style_accuracy`` (classifier says the target radiologist) and ``length_ratio`` (words) with bootstrap CIs.

    Each system also gets :func:`template_insertion`'s rates, and ``style_accuracy_template`` /
    ``style_accuracy_no_template``: the accuracy on the reports whose reference has a
    normal-study statement (the reader's template is visible) and on those without one.
    """
    rng = np.random.default_rng(seed)
    n = len(targets)
    idx = rng.integers(0, n, size=(n_boot, n)) if n else np.zeros((0, 0), dtype=int)
    ref_words = np.array([style.word_count(r) for r in references], dtype=float)
    ref_template = np.array([style.normal_statement(r) is not None for r in references], dtype=bool)
    out = {}
    for name, preds in systems.items():
        if len(preds) != n:
            raise ValueError(f"system {name!r}: {len(preds)} predictions for {n} targets")
        hit = np.array([p == t for p, t in zip(classifier.predict(list(preds)), targets)], dtype=float)
        words = np.array([style.word_count(p) for p in preds], dtype=float)
        acc = hit[idx].mean(1) if n else np.array([np.nan])
        ratio = words[idx].sum(1) / np.maximum(ref_words[idx].sum(1), 1e-9) if n else np.array([np.nan])
        out[name] = {"style_accuracy": float(hit.mean()) if n else None,
                     "style_accuracy_ci": [float(np.percentile(acc, 2.5)), float(np.percentile(acc, 97.5))] if n else None,
                     "length_ratio": float(words.sum() / max(ref_words.sum(), 1e-9)) if n else None,
                     "length_ratio_ci": [float(np.percentile(ratio, 2.5)), float(np.percentile(ratio, 97.5))] if n else None,
                     "n_style": n,
                     "style_accuracy_template": float(hit[ref_template].mean()) if ref_template.any() else None,
                     "style_accuracy_no_template": float(hit[~ref_template].mean()) if (~ref_template).any() else None,
                     **template_insertion(list(preds), list(references))}
    return out


def per_radiologist_table(classifier: style.StyleClassifier, systems: Mapping[str, Sequence[str]],
                          targets: Sequence[str], references: Sequence[str], unseen: Sequence[bool]) -> pd.DataFrame:
    """Style accuracy and length ratio per (target radiologist, system); ``unseen`` marks the few-shot group."""
    rows = []
    preds = {name: classifier.predict(list(p)) for name, p in systems.items()}
    for group in sorted(set(targets)):
        idx = [i for i, t in enumerate(targets) if t == group]
        for name, texts in systems.items():
            words = sum(style.word_count(texts[i]) for i in idx)
            ref = sum(style.word_count(references[i]) for i in idx)
            rows.append({"radiologist": group, "unseen": bool(unseen[idx[0]]), "system": name, "n": len(idx),
                         "style_accuracy": float(np.mean([preds[name][i] == group for i in idx])),
                         "length_ratio": words / ref if ref else None})
    return pd.DataFrame(rows)


def subset_per_example(per: Any, idx: Sequence[int]) -> Any:
    """The :class:`radimpress_lib.evaluation.metrics.PerExample` statistics of the examples ``idx`` only."""
    import dataclasses

    idx = list(idx)
    values = {}
    for f in dataclasses.fields(per):
        v = getattr(per, f.name)
        if isinstance(v, np.ndarray):
            values[f.name] = v[idx]
        elif isinstance(v, list) and len(v) == per.n:
            values[f.name] = [v[i] for i in idx]
        else:
            values[f.name] = v
    values["n"] = len(idx)
    values["references_sha256"] = f"{per.references_sha256}[subset {len(idx)}]"
    values["n_empty_predictions"] = int(sum(1 for i in idx if per.pred_words[i] == 0))
    return type(per)(**values)


def content_by_radiologist(per: Mapping[str, Any], systems: Sequence[str], targets: Sequence[str],
                           unseen: Sequence[bool], *, n_boot: int = 1000, seed: int = 0,
                           metrics: Sequence[str] = ("rougeL", "label_f1_micro", "len_ratio_words")) -> pd.DataFrame:
    """Content metrics with bootstrap 95% CIs per target radiologist and system (coarse vs fine)."""

    rows = []
    for group in sorted(set(targets)):
        idx = [i for i, t in enumerate(targets) if t == group]
        for name in systems:
            s = M.summarize(subset_per_example(per[name], idx), n_boot=n_boot, seed=seed)
            row = {"radiologist": group, "unseen": bool(unseen[idx[0]]), "system": name, "n": len(idx)}
            for m in metrics:
                row[m] = s.get(m)
                ci = s.get(f"{m}_ci")
                row[f"{m}_ci"] = None if not ci else [None if c is None else round(c, 2) for c in ci]
            rows.append(row)
    return pd.DataFrame(rows)
