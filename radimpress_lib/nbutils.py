"""What every notebook does first: seeds, plain-text logging, no progress widgets, output folders."""

from __future__ import annotations

import json
import logging
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np

from radimpress_lib.config import Params


def quiet_progress_bars() -> None:
    """tqdm widgets break notebooks saved by papermill: progress is logged as text instead."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - datasets is a hard dependency
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


def start(params: Params) -> tuple[Path, Path]:
    """Prepare a notebook run; returns (output folder, figures folder)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout, force=True)
    quiet_progress_bars()
    seed_everything(params.run.run_seed)
    out_dir = params.output_dir
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    return out_dir, figures


def write_json(path: Path, payload: Any) -> Path:
    """Write JSON (indent 2, NaN-free) atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, allow_nan=False, default=_jsonable) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def frame_records(frame) -> list[dict[str, Any]]:
    """A DataFrame as JSON-ready records: missing values (NaN / NA) become None."""
    import pandas as pd

    return [{k: (None if not isinstance(v, (list, dict)) and pd.isna(v) else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def load_data(params: Params):
    """Load the run's reports as configured; returns (DatasetDict, info).

    ``info`` is :func:`radimpress_lib.data.load_from_config`'s report plus
    ``files`` (one row per file read: rows read, kept, skipped by reason),
    ``totals`` (the same summed over files), ``data_files`` (paths, for the
    manifest) and ``summary`` (readable text).
    """
    from collections import Counter

    from radimpress_lib import data

    d = params.data
    dsd, info = data.load_from_config(
        d.data_dir, d.data_source, strict=d.data_strict, max_chars=d.data_max_chars,
        user_data_path=d.data_user_path, user_column_map=d.data_user_columns,
        limit_train=d.data_limit_train, limit_eval=d.data_limit_eval, seed=params.run.run_seed,
    )
    root = Path(info["data_dir"]) if info.get("data_dir") else None
    reasons = sorted({reason for load in info["loads"].values() for reason in load["skipped"]})
    rows, skipped = [], Counter()
    for role, load in info["loads"].items():
        src = Path(load["source"])
        shown = str(src.relative_to(root)) if root is not None and src.is_relative_to(root) else src.name
        rows.append({"file": shown, "role": role, "rows_read": load["rows_read"], "kept": load["kept"],
                     **{f"skipped:{r}": load["skipped"].get(r, 0) for r in reasons}})
        skipped.update(load["skipped"])
    totals = {"rows_read": sum(r["rows_read"] for r in rows), "kept": sum(r["kept"] for r in rows),
              "skipped": dict(sorted(skipped.items()))}
    lines = [f"data folder: {info.get('data_dir')}  source: {d.data_source}  strict: {d.data_strict}"]
    for role, load in info["loads"].items():
        lines.append(f"  {Path(load['source']).name} ({role}): read {load['rows_read']}, kept {load['kept']}, "
                     f"skipped {dict(load['skipped']) or 0}")
    lines.append(f"leakage guard removed {info['leakage_removed']} reports whose findings occur in the test split")
    lines.append(f"final split sizes: {info['split_sizes']}")
    info = info | {"files": rows, "totals": totals, "data_files": data.data_files_read(info), "summary": "\n".join(lines)}
    return dsd, info


def with_prompt_context(params: Params, records, pool, *, graph_variant: str | None = None):
    """``records`` as dicts with the prompt context the run's SFT model is trained with.

    * ``sft_retrieval_k > 0``: the impressions of the k nearest ``pool`` reports
      (:func:`radimpress_lib.baselines.with_similar_impressions`);
    * graph variant ``text``: the linearised entity graph of the findings
      (:func:`radimpress_lib.graph.with_findings_graph`).

    ``graph_variant`` overrides ``params.graph.graph_variant`` (notebook 09 builds each variant);
    ``none`` and ``gnn`` add no text (the GNN reads the graph itself). ``pool`` is the training
    split when building training/validation examples and train+validate for the test split; it
    never holds test reports.
    """
    from radimpress_lib.baselines import with_similar_impressions

    pool = list(pool)
    _check_pool(pool)
    rows = with_similar_impressions(records, pool, params.sft.sft_retrieval_k)
    return _with_graph_text(params, rows, graph_variant)


def _with_graph_text(params: Params, rows, graph_variant: str | None):
    variant = graph_variant or params.graph.graph_variant
    if variant not in ("none", "text", "gnn"):
        raise ValueError(f"graph variant must be none, text or gnn, got {variant!r}")
    if variant != "text":
        return [dict(r) for r in rows]
    from radimpress_lib.graph import with_findings_graph

    return with_findings_graph(rows, include_normal=params.graph.graph_include_normal,
                               max_items=params.graph.graph_max_items)


def _check_pool(pool) -> None:
    if any(r.get("split") == "test" for r in pool):
        raise ValueError("the retrieval pool holds test-split reports; use train (+validate) only")


def prompt_context_for_run(params: Params):
    """The run's prompt context for new reports (records -> records), or None when it adds nothing.

    Used where the SFT model drafts reports outside the notebooks (``radimpress draft``): it needs
    the same prompt context as in training (:func:`with_prompt_context`), so with
    ``sft_retrieval_k > 0`` the run's data folder must be available (train + validate pool).
    The returned callable has ``description`` (one line for logs).
    """
    k = params.sft.sft_retrieval_k
    graph_text = params.graph.graph_variant == "text"
    if not k and not graph_text:
        return None
    retrieval = None
    if k:
        from radimpress_lib.baselines import RetrievalContext

        dsd, _info = load_data(params)
        pool = list(dsd["train"]) + list(dsd["validate"])
        _check_pool(pool)
        retrieval = RetrievalContext(pool, k)

    def context(records):
        rows = retrieval(records) if retrieval is not None else [dict(r) for r in records]
        return _with_graph_text(params, rows, None)

    parts = ([f"{k} similar impressions from {retrieval.n_pool} train+validate reports"] if retrieval else []) + (
        ["linearised findings graph"] if graph_text else [])
    context.description = "; ".join(parts)
    return context


def load_base_model(params: Params, *, padding_side: str = "left"):
    """The run's base model and tokenizer (see :func:`radimpress_lib.models.load_model_and_tokenizer`)."""
    from radimpress_lib import models

    m = params.model
    return models.load_model_and_tokenizer(m.model_name, model_path=m.model_path, dtype=m.model_dtype,
                                           cache_dir=m.model_cache_dir, padding_side=padding_side,
                                           seed=params.run.run_seed)


def sft_dir(params: Params) -> Path:
    """Where notebook 02 writes its checkpoints, adapter and result (not committed)."""
    return params.output_dir / "sft"


def load_finetuned(params: Params, *, padding_side: str = "left"):
    """The SFT model of notebook 02 (LoRA merged into the base, or the full fine-tuned model)."""
    from radimpress_lib import sft

    folder = sft_dir(params) / ("model" if params.sft.sft_method == "full" else "adapter")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no fine-tuned model for run {params.run.run_name!r}; run notebook 02 first "
                                f"(make reproduce MODEL={params.run.run_name} NOTEBOOKS=02)")
    if params.sft.sft_method == "full":
        from radimpress_lib import models

        m = params.model
        return models.load_model_and_tokenizer(m.model_name, model_path=str(folder), dtype=m.model_dtype,
                                               cache_dir=m.model_cache_dir, padding_side=padding_side,
                                               seed=params.run.run_seed)
    model, tokenizer, info = load_base_model(params, padding_side=padding_side)
    model = sft.apply_adapter(model, folder, merge=True)
    return model, tokenizer, info | {"adapter": str(folder.relative_to(params.output_dir))}


def plot_loss_curve(loss_history: list[dict], eval_history: list[dict] | None = None):
    """Training loss (and eval loss points) against optimizer step."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.plot([h["step"] for h in loss_history], [h["loss"] for h in loss_history], marker=".", label="train loss")
    if eval_history:
        ax.plot([h["step"] for h in eval_history], [h["eval_loss"] for h in eval_history], "o", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("completion-only cross-entropy")
    ax.set_title("SFT loss")
    ax.legend()
    fig.tight_layout()
    return fig
