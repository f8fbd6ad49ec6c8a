"""Disease-focused adaptation: select a disease-area slice, evaluate on it, train a disease adapter.

A disease area (``disease_*`` parameters; first: oncology-relevant findings) is a set of
whole-word regular expressions searched in the report text (``disease.fields``, default
findings + impression) plus MeSH / Problems main headings (the part before ``/`` of Open-i's
``mesh`` and ``problems`` terms). A report is in the slice when either matches.

* :func:`select_slice` / :func:`slice_table`: the slice of each split, with counts by source
  (keyword, MeSH, both) and the most frequent matched keywords;
* :func:`train_disease_adapter`: a LoRA adapter trained with :func:`radimpress_lib.train.sft.train_sft`
  on the *train* slice only (the validate slice gives the validation loss), either on top of the
  general SFT model (its adapter merged first; ``disease.init: general``) or on the base model;
* :func:`load_disease_model`: base (+ general) + disease adapter, merged, for generation;
* scoring reuses :func:`radimpress_lib.evaluation.evaluate_systems` and ``comparisons`` on the
  test slice (paired bootstrap CIs).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from radimpress_lib.core import schema
from radimpress_lib.core.artifacts import disease_dir
from radimpress_lib.core.config import DiseaseStageConfig, Params
from radimpress_lib.llm import checkpoints
from radimpress_lib.train import sft

__all__ = ["DiseaseMatcher", "SliceStats", "disease_dir", "load_disease_model", "select_slice", "slice_table",
           "train_disease_adapter"]


class DiseaseMatcher:
    """Whether a canonical record belongs to a disease area."""

    def __init__(self, cfg: DiseaseStageConfig) -> None:
        self.cfg = cfg
        self._pattern = (re.compile(r"\b(?:" + "|".join(f"(?:{k})" for k in cfg.keywords) + r")\b", re.IGNORECASE)
                         if cfg.keywords else None)
        self._mesh = {t.strip().lower() for t in cfg.mesh_terms}

    def keyword_hits(self, record: Mapping[str, Any]) -> list[str]:
        """Matched keywords (lower case) in the configured fields."""
        if self._pattern is None:
            return []
        text = " \n ".join(str(record.get(f) or "") for f in self.cfg.fields)
        return [m.group(0).lower() for m in self._pattern.finditer(text)]

    def mesh_hits(self, record: Mapping[str, Any]) -> list[str]:
        """Matched MeSH / Problems main headings."""
        terms = list(record.get("mesh") or []) + list(record.get("problems") or [])
        return sorted({t.split("/")[0].strip() for t in terms if t.split("/")[0].strip().lower() in self._mesh})

    def __call__(self, record: Mapping[str, Any]) -> bool:
        return bool(self.keyword_hits(record) or self.mesh_hits(record))


@dataclass
class SliceStats:
    """Size of a slice and why its reports were selected."""

    n: int = 0
    n_slice: int = 0
    by_keyword_only: int = 0
    by_mesh_only: int = 0
    by_both: int = 0
    keywords: Counter = field(default_factory=Counter)
    mesh_terms: Counter = field(default_factory=Counter)

    def as_dict(self, top: int = 10) -> dict[str, Any]:
        """JSON-able summary (top matched keywords / headings)."""
        return {"n": self.n, "n_slice": self.n_slice, "share": self.n_slice / self.n if self.n else None,
                "by_keyword_only": self.by_keyword_only, "by_mesh_only": self.by_mesh_only, "by_both": self.by_both,
                "top_keywords": dict(self.keywords.most_common(top)), "top_mesh": dict(self.mesh_terms.most_common(top))}


def select_slice(records: Iterable[Mapping[str, Any]], cfg: DiseaseStageConfig) -> tuple[list[Mapping[str, Any]], SliceStats]:
    """The records of the disease area (input order kept) and how they were selected."""
    matcher = DiseaseMatcher(cfg)
    chosen, stats = [], SliceStats()
    for rec in records:
        stats.n += 1
        kw, mesh = matcher.keyword_hits(rec), matcher.mesh_hits(rec)
        if not (kw or mesh):
            continue
        chosen.append(rec)
        stats.n_slice += 1
        stats.by_both += bool(kw and mesh)
        stats.by_keyword_only += bool(kw and not mesh)
        stats.by_mesh_only += bool(mesh and not kw)
        stats.keywords.update(set(kw))
        stats.mesh_terms.update(mesh)
    return chosen, stats


def slice_table(splits: Mapping[str, Iterable[Mapping[str, Any]]], cfg: DiseaseStageConfig):
    """``(slices, table)``: the slice of every split and a DataFrame of their sizes."""
    import pandas as pd

    slices, rows = {}, []
    for name, records in splits.items():
        chosen, stats = select_slice(records, cfg)
        slices[name] = chosen
        d = stats.as_dict()
        rows.append({"split": name, **{k: d[k] for k in ("n", "n_slice", "share", "by_keyword_only", "by_mesh_only",
                                                         "by_both")}, "top_keywords": d["top_keywords"]})
    return slices, pd.DataFrame(rows).set_index("split")


def _base_for_disease(params: Params, padding_side: str):

    if params.disease.init == "general":
        return checkpoints.load_finetuned(params, padding_side=padding_side)  # the general LoRA adapter merged in
    return checkpoints.load_base_model(params, padding_side=padding_side)


def train_disease_adapter(params: Params, train_slice: list[Mapping[str, Any]], val_slice: list[Mapping[str, Any]] | None,
                          *, log: Callable[[str], None] | None = None):
    """Train the disease adapter on the train slice (``sft_*`` settings, ``disease.max_steps`` steps).

    Returns :class:`radimpress_lib.train.sft.SFTResult`; the adapter lands in ``disease_dir(params)/adapter``.
    """
    import datasets


    if not train_slice:
        raise ValueError(f"the train slice of disease area {params.disease.area!r} is empty; "
                         "widen disease.keywords / disease.mesh_terms or raise data.limit_train")
    if params.sft.method != "lora":
        raise ValueError(f"disease adapters are LoRA adapters; sft.method is {params.sft.method!r}")
    steps = params.disease.max_steps
    cfg = params.sft.model_copy(update={"max_steps": steps, "save_steps": min(params.sft.save_steps, steps)})
    model, tokenizer, _ = _base_for_disease(params, padding_side="right")

    def to_ds(rows: list[Mapping[str, Any]]) -> datasets.Dataset:
        return schema.records_to_dataset([dict(r) for r in rows])

    eval_ds = to_ds(val_slice) if val_slice else None
    return sft.train_sft(model, tokenizer, to_ds(train_slice), eval_ds, cfg, disease_dir(params), params.run.seed,
                         log=log)


def load_disease_model(params: Params, *, padding_side: str = "left"):
    """Base (+ general SFT, merged) + the disease adapter (merged), for generation."""

    folder = disease_dir(params) / "adapter"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no disease adapter; run notebook 08 (make reproduce MODEL="
                                f"{params.run.name} NOTEBOOKS=08)")
    model, tokenizer, info = _base_for_disease(params, padding_side)
    model = checkpoints.apply_adapter(model, folder, merge=True)
    return model, tokenizer, info | {"disease_adapter": str(folder.relative_to(params.output_dir))}
