"""Figures shared by the notebooks: saving, loss curves."""

from __future__ import annotations

from pathlib import Path


def save_figure(fig, figures_dir: Path, name: str, fmt: str = "png") -> Path:
    """Save a matplotlib figure under ``figures_dir/name.fmt`` (folder created)."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    path = figures_dir / f"{name}.{fmt}"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


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
