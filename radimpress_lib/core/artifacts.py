"""Every artifact folder of a run, in one place (``outputs/<model>/...``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from radimpress_lib.core.config import Params


#: The evaluation protocols of the Open-i benchmark (see :mod:`radimpress_lib.data.protocols`):
#: ``deduplicated`` (ours, the headline: leakage guard on) and ``published`` (as Van Veen et al.).
PROTOCOLS: tuple[str, ...] = ("deduplicated", "published")

#: SFT folder of each protocol's model, under ``outputs/<model>/``.
_SFT_FOLDERS = {"deduplicated": "sft", "published": "sft_published"}


def sft_dir(params: Params, protocol: str = "deduplicated") -> Path:
    """Where an SFT model's checkpoints, adapter and result go (not committed).

    ``deduplicated`` (default): notebook 02's model, trained after the leakage guard
    (``outputs/<model>/sft/``); ``published``: the model trained on the benchmark's train split
    as given, for the "as published" protocol (``outputs/<model>/sft_published/``, adapter in
    ``adapter/``).
    """
    if protocol not in _SFT_FOLDERS:
        raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    return params.output_dir / _SFT_FOLDERS[protocol]


#: Notebook 05's review-risk model (fitted and thresholded on sft's validate drafts), relative to the run folder.
RISK_MODEL_FILE = Path("triage") / "risk_model.json"


def risk_model_file(system: str = "sft") -> Path:
    """Where notebook 05 saves the risk model thresholded for ``system`` (relative to the run folder)."""
    return RISK_MODEL_FILE if system == "sft" else RISK_MODEL_FILE.with_name(f"risk_model_{system}.json")


def rm_dir(params: Params) -> Path:
    """Notebook 03's reward model folder."""
    return params.output_dir / "reward_model"


def dpo_dir(params: Params) -> Path:
    """Notebook 04's DPO folder (``adapter/`` on top of the merged SFT model)."""
    return params.output_dir / "dpo"


def rl_dir(params: Params) -> Path:
    """Notebook 04's online-RL folder (``adapter/``: the DPO adapter trained further)."""
    return params.output_dir / "rl"


def disease_dir(params: Params) -> Path:
    """``outputs/<model>/disease_<area>/`` (adapter, checkpoints, results; not committed)."""
    return params.output_dir / f"disease_{params.disease.area}"


def review_db_path(params: Any) -> Path:
    """The review database of a run: ``review.db`` relative to the run's output folder."""
    db = Path(params.review.db)
    return db if db.is_absolute() else params.output_dir / db


def review_session_dir(params: Params) -> Path:
    """``outputs/<model>/review_sessions/<review.session>/``: where an interactive review session writes."""
    return params.output_dir / "review_sessions" / params.review.session


def review_output_params(params: Params) -> Params:
    """The params whose output folder receives notebook 06's results (review.json, figures, manifest, store).

    Headless (``make reproduce``): the run's own, so the reference results are written there.
    Interactive (a physician at the widget): the same params with ``run.output_dir`` set to
    :func:`review_session_dir` (recorded as an override in the session's manifest), so a review
    session never rewrites the reference run's files; a relative ``review.db`` lives there too.
    Predictions and adapters are still read from the run's own folder (``params.output_dir``).
    """
    if params.review.mode != "interactive":
        return params
    session = Path(params.run.output_dir) / "review_sessions" / params.review.session
    return params.override({"run": {"output_dir": session.as_posix()}}, source="interactive review session")
