"""What every notebook does first (load the run's params, seeds, plain-text logging, no progress widgets,
output folders) and last (its entry in the run's manifest)."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from radimpress_lib.core import config, manifest
from radimpress_lib.core.config import Params
from radimpress_lib.core.seeding import quiet_progress_bars, seed_everything


def quiet_library_warnings() -> None:
    """Keep libraries' deprecation notices about their own internals (transformers, torch, peft, TRL) out of the
    rendered notebooks: nothing in them is for a reader to act on, and they carry machine paths."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*pin_memory.*no accelerator.*", category=UserWarning)


def start(params: str, overrides: Mapping[str, Any] | None = None) -> tuple[Params, Path, Path]:
    """Load ``params/<params>.yaml`` with the notebook's ``overrides`` and prepare the run.

    Returns ``(cfg, output folder, figures folder)``. Bad params (unknown key, wrong type, broken
    YAML) raise :class:`radimpress_lib.core.config.ParamsError` naming the file and the key.
    """
    cfg = config.load_params(params, overrides)
    quiet_library_warnings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout, force=True)
    quiet_progress_bars()
    seed_everything(cfg.run.seed)
    out_dir = cfg.output_dir
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    return cfg, out_dir, figures


def write_manifest(cfg: Params, stage: str, load_info: Mapping[str, Any], *, effective_batch: int | None = None,
                   summary: Mapping[str, Any] | None = None, guards_failed: list[str] | None = None,
                   extra: Mapping[str, Any] | None = None) -> Path:
    """This notebook's entry in ``<output>/manifest.json``: the params file, the overrides, every setting,
    the seed and the data files read (sha256), plus ``extra`` facts.

    ``summary`` (label -> value) and ``guards_failed`` (one sentence each) open the rendered page
    (:func:`radimpress_lib.notebook.runner.summary_markdown`).
    """
    return manifest.write_manifest(
        cfg.output_dir, stage=stage, seed=cfg.run.seed, config=cfg.to_dict(), data_files=load_info["data_files"],
        data_dir=load_info["data_dir"], effective_batch=effective_batch,
        extra={"params_file": cfg.provenance.get("params"), "overrides": cfg.provenance.get("overrides") or {},
               "summary": dict(summary or {}), "guards_failed": list(guards_failed or []), **(extra or {})})
