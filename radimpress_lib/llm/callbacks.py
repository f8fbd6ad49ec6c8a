"""Progress and logging for training and decoding: text lines instead of progress widgets."""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import datasets
from transformers import TrainerCallback
from transformers.trainer_callback import TrainerControl, TrainerState

logger = logging.getLogger("radimpress")

#: A progress sink: one text line per call (default :func:`default_log`).
LogFn = Callable[[str], None]


def default_log(line: str) -> None:
    """Log ``line`` on the ``radimpress`` logger, or print it when logging is not configured."""
    if logger.isEnabledFor(logging.INFO) and logger.hasHandlers():
        logger.info(line)
    else:  # e.g. a notebook without logging configured: still show progress as plain text
        print(line, flush=True)


@dataclass
class TokenMeter:
    """Useful (non-pad) tokens seen by the trainer in this process."""

    tokens: int = 0
    completion_tokens: int = 0
    started: float | None = None


def fmt_seconds(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class TextProgressCallback(TrainerCallback):
    """Logs one text line per logging step (loss, lr, tokens/s, ETA) instead of tqdm widgets."""

    def __init__(self, meter: TokenMeter | None = None, log: LogFn | None = None, prefix: str = "sft") -> None:
        self.meter = meter
        self.log = log or default_log
        self.prefix = prefix
        self._t0: float | None = None
        self._step0 = 0

    def on_train_begin(self, args, state: TrainerState, control: TrainerControl, **kwargs):
        self._t0 = time.perf_counter()
        self._step0 = state.global_step
        if self.meter is not None:
            self.meter.started = self._t0
        self.log(f"{self.prefix} start at step {state.global_step}/{state.max_steps}")

    def on_log(self, args, state: TrainerState, control: TrainerControl, logs=None, **kwargs):
        if not logs or self._t0 is None:
            return
        elapsed = time.perf_counter() - self._t0
        parts = [f"{self.prefix} step {state.global_step}/{state.max_steps}"]
        if state.max_steps:
            parts[0] += f" ({100 * state.global_step / state.max_steps:.0f}%)"
        if state.epoch is not None:
            parts[0] += f" epoch {state.epoch:.2f}"
        for key in ("loss", "eval_loss", "train_loss"):
            if key in logs:
                parts.append(f"{key} {logs[key]:.4g}")
        if "learning_rate" in logs:
            parts.append(f"lr {logs['learning_rate']:.2e}")
        if self.meter is not None and elapsed > 0:
            parts.append(f"{self.meter.tokens / elapsed:.0f} tok/s")
        done = state.global_step - self._step0
        left = state.max_steps - state.global_step
        eta = f", ~{fmt_seconds(elapsed / done * left)} left" if done > 0 and left > 0 else ""
        parts.append(f"{fmt_seconds(elapsed)} elapsed{eta}")
        self.log(" | ".join(parts))


@contextlib.contextmanager
def quiet_library_warnings() -> Iterator[None]:
    """Hide warnings that libraries raise about their own internals (nothing for a user to act on)."""
    with warnings.catch_warnings():
        # peft/TRL call transformers' deprecated ``is_gradient_checkpointing``.
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*pin_memory.*no accelerator.*", category=UserWarning)
        yield


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """Silence the tqdm bars of datasets (map/filter) and transformers (saving shards)."""
    from transformers.utils import logging as hf_logging

    ds_enabled = datasets.is_progress_bar_enabled()
    hf_enabled = hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        with quiet_library_warnings():
            yield
    finally:
        if ds_enabled:
            datasets.enable_progress_bars()
        if hf_enabled:
            hf_logging.enable_progress_bar()
