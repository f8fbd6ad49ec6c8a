"""Supervised fine-tuning (findings -> impression): the cached top-layer trainer (CPU) or TRL's ``SFTTrainer``.

Trainers (``sft.trainer``):

* ``"cached"`` (the default model's, CPU): only the top ``sft.top_layers`` layers train, from hidden
  states of the layers below computed once per example (:mod:`radimpress_lib.train.cached`); the
  adapter is a standard peft adapter on the full model. Notebook 02 trains one model per protocol
  (:func:`train_protocols`), sharing the trunk rows the two training sets have in common.
* ``"trl"``: TRL's ``SFTTrainer`` on every layer (GPU params files, QLoRA, unsloth, ``accelerate``
  multi-process runs), described below.

Methods (``sft.method``):

* ``"lora"``  — peft LoRA adapters on a frozen fp32 (CPU) or bf16 (CUDA) base model;
* ``"qlora"`` — LoRA on a 4-bit bitsandbytes base model; CUDA only (a clear error on CPU);
  load the model with :func:`qlora_quantization_config`;
* ``"full"``  — every weight is trained.

With ``sft.use_unsloth`` (CUDA only, optional ``unsloth`` package) the model comes from
:func:`load_unsloth_model`, which already attaches the LoRA adapters.

CPU settings of the ``trl`` trainer (what :func:`train_sft` does with it when there is no GPU):

* fp32 only (low-precision weights are refused), no mixed precision;
* ``torch`` threads = physical cores (``sft.num_threads``), dataloader workers 0;
* no gradient checkpointing (``sft.gradient_checkpointing=None`` means "only on CUDA");
* little padding: length-grouped padded batches (``sft.group_by_length``, the default:
  batches of similar lengths, random batch order). Padding-free batches
  (``sft.padding_free``: the sequences of a batch flattened into one row with restarting
  ``position_ids``; transformers then builds a block-diagonal causal mask for sdpa/eager,
  so examples never attend to each other) are exact too, but on CPU the attention over
  the flattened row costs O(total_tokens^2): at 8 sequences of ~130 tokens it made the
  step ~25% slower than length-grouped batches (measured on SmolLM2-135M); it pays off
  with varlen flash attention on GPU;
* the LM head is applied only at positions that carry a label (the impression tokens): the
  prompt is ~90% of a sequence and the 49k-vocabulary head is ~20% of the FLOPs of a small
  model. TRL's fused LM head does this only on Triton devices; on CPU it scores every
  position and recomputes the head in the backward pass;
* LoRA dropout defaults to 0: on CPU, drawing its random masks took ~18% of a step.

Training resumes automatically from the newest checkpoint under ``<output_dir>/checkpoints``
(saved every ``sft.save_steps`` optimizer steps); the trainer restores optimizer, scheduler,
RNG states and the position in the seeded data order, so a killed run that is resumed ends
with the same weights as an uninterrupted one (``tests/test_sft.py`` checks this).

Progress is logged as text lines (no tqdm widgets), e.g.::

    sft step 40/200 (20%) epoch 0.29 | loss 1.2345 | lr 1.95e-04 | 142 tok/s | 0:04:41 elapsed, ~0:18:45 left
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import get_last_checkpoint

from radimpress_lib.core.artifacts import sft_dir
from radimpress_lib.core.config import Params, SFTStageConfig
from radimpress_lib.core.jsonio import write_json
from radimpress_lib.data import protocols as data_protocols
from radimpress_lib.llm import checkpoints, retrieval
from radimpress_lib.llm.callbacks import TextProgressCallback, TokenMeter, default_log, fmt_seconds, no_progress_bars
from radimpress_lib.llm.models import configure_cpu_threads
from radimpress_lib.llm.prompting import IGNORE_INDEX, SFTDatasetStats, build_sft_dataset
from radimpress_lib.train import cached

__all__ = [
    "SFTStageConfig",
    "SFTResult",
    "SFTRunMismatchError",
    "ProtocolRuns",
    "train_protocols",
    "train_sft",
    "make_lora_config",
    "qlora_quantization_config",
    "load_unsloth_model",
    "completion_loss",
]

logger = logging.getLogger("radimpress.sft")

LogFn = Callable[[str], None]


class SFTRunMismatchError(RuntimeError):
    """``output_dir`` holds checkpoints of a run with other settings or data."""


@dataclass
class SFTResult:
    """What :func:`train_sft` returns (also written to ``<output_dir>/sft_result.json``)."""

    output_dir: str
    final_dir: str
    method: str
    global_step: int
    max_steps: int
    loss_history: list[dict[str, float]]
    eval_history: list[dict[str, float]]
    final_train_loss: float | None
    final_eval_loss: float | None
    train_tokens: int
    completion_tokens: int
    wall_time_s: float
    tokens_per_s: float
    resumed_from: str | None
    n_trainable_params: int
    n_params: int
    torch_threads: int
    device: str
    dataset_stats: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    trainer: str = "trl"
    cache: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return asdict(self)


# --------------------------------------------------------------------------- helpers


def _require_cuda(what: str) -> None:
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"{what} needs a CUDA GPU (bitsandbytes / unsloth kernels); this machine has none. "
            "Use sft.method='lora' (or 'full') with sft.use_unsloth=False on CPU."
        )


def make_lora_config(cfg: SFTStageConfig) -> Any:
    """The peft ``LoraConfig`` for ``cfg`` (causal LM, no bias training)."""
    from peft import LoraConfig

    return LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_targets,
        bias="none",
    )


def qlora_quantization_config() -> Any:
    """4-bit NF4 ``BitsAndBytesConfig`` (double quantisation, bf16 compute) for QLoRA; CUDA only.

    Pass it as ``quantization_config=`` when loading the base model.
    """
    _require_cuda("sft.method='qlora'")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def load_unsloth_model(model_name_or_path: str, cfg: SFTStageConfig, seed: int) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` with unsloth's ``FastLanguageModel`` and attach LoRA adapters.

    CUDA only; ``unsloth`` is an optional dependency (``pip install radimpress[gpu]``).
    ``sft.method='qlora'`` loads the base model in 4 bit. Pass the result to
    :func:`train_sft` with ``sft.use_unsloth=True``.
    """
    _require_cuda("sft.use_unsloth=True")
    if cfg.method == "full":
        raise ValueError("unsloth is used here for (Q)LoRA only; set sft.use_unsloth=False for full fine-tuning")
    try:
        from unsloth import FastLanguageModel
    except ImportError as exc:  # pragma: no cover - depends on optional GPU extras
        raise ImportError("sft.use_unsloth=True needs the 'unsloth' package (pip install unsloth)") from exc
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_name_or_path,
        max_seq_length=cfg.max_seq_len,
        dtype=None,
        load_in_4bit=cfg.method == "qlora",
    )
    targets = cfg.lora_targets
    if targets == "all-linear":
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = FastLanguageModel.get_peft_model(
        model,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        bias="none",
        use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing is not False else False,
        random_state=seed,
    )
    return model, tokenizer


def _check_precision(model: torch.nn.Module, on_cuda: bool) -> None:
    if on_cuda:
        return
    low = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point() and p.dtype != torch.float32})
    if low:
        raise ValueError(
            f"model has {', '.join(low)} weights; training on CPU is fp32 only (load it with dtype='float32')"
        )


def _sparse_head_supported(model: torch.nn.Module) -> bool:
    """Whether the LM head is a plain linear projection (no logit scaling / soft-capping)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"):
        value = getattr(config, name, None)
        if value not in (None, 1.0):
            return False
    return True


# --------------------------------------------------------------------------- trainer pieces


def completion_loss(
    model: torch.nn.Module,
    inputs: dict[str, Any],
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal-LM loss that applies the LM head only where a label is set.

    Equals the usual shifted cross-entropy (``model(**inputs, labels=labels).loss`` when
    ``num_items_in_batch`` is None) but projects to the vocabulary only the hidden states
    whose next-token label is not ``-100``.

    Args:
        model: a causal LM or a peft model wrapping one (plain linear LM head).
        inputs: model inputs without ``labels`` (``input_ids`` plus ``attention_mask`` or
            padding-free ``position_ids``).
        labels: ``[batch, seq]`` labels, ``-100`` where no loss is taken.
        num_items_in_batch: divisor of the summed loss (tokens of the whole accumulated
            batch); default: the labelled tokens of this batch.

    Returns:
        ``(loss, logits, targets)``: the scalar loss and the ``[n_labelled, vocab]`` fp32
        logits with their target ids.
    """
    from accelerate.utils import is_peft_model

    causal_lm = model.get_base_model() if is_peft_model(model) else model
    hidden = causal_lm.base_model(**inputs, use_cache=False).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logits = causal_lm.get_output_embeddings()(hidden[mask]).float()
    tgt = targets[mask]
    loss_sum = F.cross_entropy(logits, tgt, reduction="sum")
    n = mask.sum() if num_items_in_batch is None else num_items_in_batch
    return loss_sum / torch.as_tensor(n, device=loss_sum.device).clamp(min=1), logits, tgt


def _make_trainer_class() -> type:
    """``SFTTrainer`` subclass with the sparse LM-head loss and token counting (built lazily: TRL import is slow)."""
    from trl import SFTTrainer

    class _RadSFTTrainer(SFTTrainer):
        def __init__(self, *args: Any, sparse_lm_head: bool, meter: TokenMeter, **kwargs: Any) -> None:
            self._sparse_lm_head = sparse_lm_head
            self._meter = meter
            super().__init__(*args, **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            # Useful tokens: non-pad tokens (padded batches) or the whole flattened row (padding-free).
            n_tokens = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else int(inputs["input_ids"].numel())
            if mode == "train":
                self._meter.tokens += n_tokens
                self._meter.completion_tokens += int((inputs["labels"][..., 1:] != IGNORE_INDEX).sum())
            if not self._sparse_lm_head or return_outputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

            inputs = dict(inputs)
            labels = inputs.pop("labels")
            loss, logits, tgt = completion_loss(
                self.accelerator.unwrap_model(model), inputs, labels, num_items_in_batch
            )
            mask_sum = tgt.numel()
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            with torch.no_grad():
                if mask_sum:
                    logp = torch.log_softmax(logits.detach(), dim=-1)
                    entropy = -(logp.exp() * logp).sum(-1).mean().item()
                    accuracy = (logits.detach().argmax(-1) == tgt).float().mean().item()
                else:
                    entropy = accuracy = 0.0
                self._metrics[mode]["entropy"].append(entropy)
                self._metrics[mode]["mean_token_accuracy"].append(accuracy)
                if mode == "train":
                    self._total_train_tokens += n_tokens
                self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return loss

    return _RadSFTTrainer


def _dataset_fingerprint(ds: datasets.Dataset) -> str:
    h = hashlib.sha256()
    for ids, labels in zip(ds["input_ids"], ds["labels"]):
        h.update(json.dumps([ids, labels]).encode("ascii"))
    return h.hexdigest()[:16]


def _prepare(
    tokenizer: PreTrainedTokenizerBase, ds: datasets.Dataset | None, max_len: int, name: str
) -> tuple[datasets.Dataset | None, SFTDatasetStats | None]:
    """Tokenized dataset (input_ids + labels) from canonical records, or checked as given."""
    if ds is None:
        return None, None
    cols = set(ds.column_names)
    if {"input_ids", "labels"} <= cols:
        too_long = [i for i, ids in enumerate(ds["input_ids"]) if len(ids) > max_len]
        if too_long:
            raise ValueError(
                f"{name} dataset: {len(too_long)} examples are longer than sft.max_seq_len={max_len} "
                f"(first row {too_long[0]}); build them with prompting.build_sft_dataset(..., max_len)"
            )
        return ds.select_columns(["input_ids", "labels"]), None
    if {"findings", "impression"} <= cols:
        built, stats = build_sft_dataset(tokenizer, ds, max_len)
        return built.select_columns(["input_ids", "labels"]), stats
    raise ValueError(
        f"{name} dataset has columns {sorted(cols)}: expected canonical records (findings, impression) "
        "or tokenized examples (input_ids, labels)"
    )


# --------------------------------------------------------------------------- entry point


def train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_ds: datasets.Dataset,
    eval_ds: datasets.Dataset | None,
    cfg: SFTStageConfig,
    output_dir: str | Path,
    seed: int,
    *,
    callbacks: list[TrainerCallback] | None = None,
    resume: bool = True,
    log: LogFn | None = None,
) -> SFTResult:
    """Fine-tune ``model`` on ``train_ds`` with ``cfg.trainer``; resumes from the newest checkpoint in ``output_dir``.

    Args:
        model: a causal LM (fp32 on CPU); a peft/unsloth model already holding LoRA adapters
            is trained as is (``sft.use_unsloth``, trl trainer), otherwise adapters are added per ``cfg``
            (the cached trainer: on the top ``cfg.top_layers`` layers only).
        tokenizer: its tokenizer (with chat template).
        train_ds / eval_ds: canonical records (tokenized here with
            :func:`radimpress_lib.llm.prompting.build_sft_dataset`) or already tokenized
            examples (``input_ids``, ``labels``); ``eval_ds`` may be None.
        cfg: the SFT stage settings.
        output_dir: run folder: ``checkpoints/``, ``adapter/`` (LoRA) or ``model/`` (full),
            ``sft_run.json`` (settings, checked on resume), ``sft_result.json``.
        seed: seed of LoRA init, data order and dropout.
        callbacks: extra ``TrainerCallback`` objects (trl trainer).
        resume: resume from the newest checkpoint when there is one; with ``False`` an
            ``output_dir`` holding checkpoints is an error (runs are never mixed).
        log: where progress lines go (default: the ``radimpress.sft`` logger, or stdout when
            logging is not configured).

    Returns:
        :class:`SFTResult` (loss history, useful tokens, wall time, tokens/s, final dir, ...).

    Raises:
        RuntimeError: ``qlora`` / unsloth without CUDA.
        ValueError: low-precision weights on CPU, bad datasets.
        SFTRunMismatchError: ``output_dir`` holds checkpoints of a different run.
    """
    return _train_sft(model, tokenizer, train_ds, eval_ds, cfg, output_dir, seed, callbacks=callbacks,
                      resume=resume, log=log)[0]


def _train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_ds: datasets.Dataset,
    eval_ds: datasets.Dataset | None,
    cfg: SFTStageConfig,
    output_dir: str | Path,
    seed: int,
    *,
    callbacks: list[TrainerCallback] | None = None,
    resume: bool = True,
    log: LogFn | None = None,
    reuse: tuple[Any, ...] = (),
) -> tuple[SFTResult, cached.CachedRun | None]:
    """:func:`train_sft`, also returning the cached trainer's run (its trunk caches can serve the next run)."""
    from accelerate.utils import is_peft_model
    from trl import SFTConfig

    log = log or default_log
    on_cuda = torch.cuda.is_available()
    if cfg.method == "qlora":
        _require_cuda("sft.method='qlora'")
    if cfg.use_unsloth:
        _require_cuda("sft.use_unsloth=True")
    _check_precision(model, on_cuda)
    threads = configure_cpu_threads(cfg.num_threads)

    output_dir = Path(output_dir)
    ckpt_dir = output_dir / "checkpoints"
    output_dir.mkdir(parents=True, exist_ok=True)

    with no_progress_bars():
        train_tok, train_stats = _prepare(tokenizer, train_ds, cfg.max_seq_len, "train")
        eval_tok, _ = _prepare(tokenizer, eval_ds, cfg.max_seq_len, "eval")
    assert train_tok is not None
    if len(train_tok) == 0:
        raise ValueError("train dataset is empty")
    if train_stats is not None and train_stats.n_truncated:
        log(
            f"sft: {train_stats.n_truncated}/{train_stats.n_examples} train examples had their findings truncated "
            f"to fit {cfg.max_seq_len} tokens ({train_stats.findings_tokens_dropped} tokens dropped)"
        )

    # The run identity, checked when resuming (a resumed run must be the same run).
    run_info = {"sft_fingerprint": cfg.fingerprint(), "seed": seed, "n_train": len(train_tok),
                "train_fingerprint": _dataset_fingerprint(train_tok), "settings": cfg.model_dump()}
    run_file = output_dir / "sft_run.json"
    last_ckpt = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    if last_ckpt is not None and not resume:
        raise SFTRunMismatchError(
            f"{ckpt_dir}: holds checkpoints ({Path(last_ckpt).name}) but resume=False; "
            "use a new output_dir or delete the old checkpoints"
        )
    if last_ckpt is not None and run_file.is_file():
        previous = json.loads(run_file.read_text(encoding="utf-8"))
        diff = [k for k in ("sft_fingerprint", "seed", "n_train", "train_fingerprint") if previous.get(k) != run_info[k]]
        if diff:
            raise SFTRunMismatchError(
                f"{output_dir}: holds checkpoints of another run (differs in {diff}); "
                "use a new output_dir or delete the old checkpoints"
            )
    write_json(run_file, run_info, sort_keys=True)
    if cfg.trainer == "cached":
        return _train_cached(model, tokenizer, train_tok, eval_tok, train_stats, cfg, output_dir, seed, resume=resume,
                             log=log, reuse=reuse, threads=threads)

    # Method-specific model preparation.
    peft_config = None
    already_peft = is_peft_model(model)
    if cfg.method in ("lora", "qlora") and not already_peft:
        if cfg.method == "qlora":
            if not (getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)):
                raise ValueError(
                    "sft.method='qlora' needs a quantized base model: load it with "
                    "quantization_config=sft.qlora_quantization_config()"
                )
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=cfg.gradient_checkpointing is not False
            )
        peft_config = make_lora_config(cfg)
    elif cfg.method == "full" and already_peft:
        raise ValueError("sft.method='full' was given a model that already holds peft adapters")

    gradient_checkpointing = on_cuda if cfg.gradient_checkpointing is None else cfg.gradient_checkpointing
    bf16 = bool(on_cuda and torch.cuda.is_bf16_supported())
    sampling = "group_by_length" if cfg.group_by_length else "random"
    eval_strategy = "steps" if (eval_tok is not None and cfg.eval_steps > 0) else "no"
    args = SFTConfig(
        output_dir=str(ckpt_dir),
        seed=seed,
        data_seed=seed,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_batch,
        per_device_eval_batch_size=cfg.per_device_batch,
        gradient_accumulation_steps=cfg.grad_accum,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy=eval_strategy,
        eval_steps=cfg.eval_steps or None,
        bf16=bf16,
        fp16=False,
        activation_checkpointing=gradient_checkpointing,
        dataloader_num_workers=0,
        dataloader_pin_memory=on_cuda,
        report_to="none",
        disable_tqdm=True,
        padding_free=cfg.padding_free,
        max_length=None,  # examples are pre-fitted by truncating findings, never the impression
        train_sampling_strategy=sampling,
        completion_only_loss=True,
        dataset_num_proc=None,
        save_only_model=False,
    )

    meter = TokenMeter()
    trainer_cls = _make_trainer_class()
    # The sparse LM-head loss runs the unwrapped model, which bypasses DDP's gradient all-reduce: single process only
    # (tests/test_distributed.py: with it, 2 gloo processes drift from the 1-process run after the first update).
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    sparse = not on_cuda and not cfg.use_unsloth and not distributed and _sparse_head_supported(model)
    with no_progress_bars():
        trainer = trainer_cls(
            model=model,
            args=args,
            train_dataset=train_tok,
            eval_dataset=eval_tok,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[TextProgressCallback(meter, log), *(callbacks or [])],
            sparse_lm_head=sparse,
            meter=meter,
        )
    trainer.remove_callback(PrinterCallback)

    n_params = sum(p.numel() for p in trainer.model.parameters())
    n_trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    log(
        f"sft: method={cfg.method} trainable {n_trainable:,}/{n_params:,} params, {len(train_tok)} examples, "
        f"device={'cuda' if on_cuda else 'cpu'} threads={threads} padding_free={cfg.padding_free} "
        f"group_by_length={cfg.group_by_length} gradient_checkpointing={gradient_checkpointing} "
        f"sparse_lm_head={sparse}" + (f", resuming from {last_ckpt}" if last_ckpt else "")
    )

    t0 = time.perf_counter()
    with no_progress_bars():
        train_out = trainer.train(resume_from_checkpoint=last_ckpt)
    wall = time.perf_counter() - t0

    final_eval = None
    if eval_tok is not None:
        final_eval = float(trainer.evaluate()["eval_loss"])
        log(f"sft: eval_loss {final_eval:.4f}")

    final_dir = output_dir / ("model" if cfg.method == "full" else "adapter")
    with no_progress_bars():
        trainer.save_model(str(final_dir))
        tokenizer.save_pretrained(str(final_dir))

    history = trainer.state.log_history
    loss_history = [
        {k: float(h[k]) for k in ("step", "epoch", "loss", "learning_rate", "grad_norm") if k in h and h[k] is not None}
        for h in history if "loss" in h
    ]
    eval_history = [
        {k: float(h[k]) for k in ("step", "epoch", "eval_loss") if k in h} for h in history if "eval_loss" in h
    ]
    result = SFTResult(
        output_dir=str(output_dir),
        final_dir=str(final_dir),
        method=cfg.method,
        global_step=int(trainer.state.global_step),
        max_steps=int(trainer.state.max_steps),
        loss_history=loss_history,
        eval_history=eval_history,
        final_train_loss=loss_history[-1]["loss"] if loss_history else None,
        final_eval_loss=final_eval,
        train_tokens=meter.tokens,
        completion_tokens=meter.completion_tokens,
        wall_time_s=wall,
        tokens_per_s=meter.tokens / wall if wall > 0 else math.nan,
        resumed_from=last_ckpt,
        n_trainable_params=n_trainable,
        n_params=n_params,
        torch_threads=threads,
        device="cuda" if on_cuda else "cpu",
        dataset_stats=train_stats.as_dict() if train_stats is not None else None,
        settings={**cfg.model_dump(), "seed": seed, "train_runtime_s": float(train_out.metrics.get("train_runtime", 0))},
    )
    write_json(output_dir / "sft_result.json", result.to_dict())
    log(
        f"sft: done, step {result.global_step}/{result.max_steps}, {result.train_tokens:,} tokens in "
        f"{fmt_seconds(wall)} ({result.tokens_per_s:.0f} tok/s); saved to {final_dir}"
    )
    return result, None


def _train_cached(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, train_tok: datasets.Dataset,
                  eval_tok: datasets.Dataset | None, train_stats: SFTDatasetStats | None, cfg: SFTStageConfig,
                  output_dir: Path, seed: int, *, resume: bool, log: LogFn, reuse: tuple[Any, ...], threads: int) -> tuple[SFTResult, cached.CachedRun]:
    """The cached trainer's run as an :class:`SFTResult` (see :func:`radimpress_lib.train.cached.train_sft_cached`)."""
    from accelerate.utils import is_peft_model

    if is_peft_model(model):
        raise ValueError("the cached trainer adds its own LoRA adapter on the top layers; give it the base model")
    torch.manual_seed(seed)
    run = cached.train_sft_cached(
        model, tokenizer, train_tok["input_ids"], train_tok["labels"], cached.sft_settings(cfg, seed), output_dir,
        eval_input_ids=eval_tok["input_ids"] if eval_tok is not None else None,
        eval_labels=eval_tok["labels"] if eval_tok is not None else None, reuse=reuse, resume=resume, log=log)
    r = run.result
    loss_history = [{k: float(h[k]) for k in ("step", "epoch", "loss", "learning_rate", "grad_norm") if k in h}
                    for h in r.loss_history]
    eval_history = ([{"step": float(r.global_step), "epoch": r.epochs_done, "eval_loss": r.final_eval_loss}]
                    if r.final_eval_loss is not None else [])
    result = SFTResult(
        output_dir=str(output_dir), final_dir=r.final_dir, method=cfg.method, global_step=r.global_step,
        max_steps=r.max_steps, loss_history=loss_history, eval_history=eval_history,
        final_train_loss=loss_history[-1]["loss"] if loss_history else None, final_eval_loss=r.final_eval_loss,
        train_tokens=r.train_tokens, completion_tokens=r.completion_tokens, wall_time_s=r.wall_time_s,
        tokens_per_s=r.train_tokens / r.wall_time_s if r.wall_time_s > 0 else math.nan, resumed_from=r.resumed_from,
        n_trainable_params=r.n_trainable_params, n_params=r.n_params, torch_threads=threads,
        device=str(next(run.model.parameters()).device.type),
        dataset_stats=train_stats.as_dict() if train_stats is not None else None,
        settings={**cfg.model_dump(), "seed": seed}, trainer="cached",
        cache={"trunk_layer": r.trunk_layer, "rows": r.n_rows, "cached_rows": r.n_cached_rows,
               "reused_rows": r.n_reused_rows, "build_s": r.cache_build_s, "train_s": r.train_s, "mib": r.cache_mib,
               "epochs_done": r.epochs_done, "examples_seen": r.examples_seen, "examples_per_s": r.examples_per_s,
               "eval_rows": len(run.eval_cache.rows) if run.eval_cache is not None else 0,
               "eval_reused_rows": run.eval_cache.n_reused if run.eval_cache is not None else 0},
    )
    write_json(output_dir / "sft_result.json", result.to_dict())
    return result, run


# --------------------------------------------------------------------------- notebook 02: one model per protocol


@dataclass
class ProtocolRuns:
    """Notebook 02's models, one per protocol of ``sft.protocols`` (see :func:`train_protocols`).

    ``results`` maps a trained protocol to its :class:`SFTResult`; ``skipped`` a protocol that could
    not be trained to the reason; ``data`` each protocol's training data summary; ``model_info`` the
    base model's description.
    """

    results: dict[str, SFTResult] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    data: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_info: dict[str, Any] = field(default_factory=dict)

    def table(self):
        """One row per protocol: examples, steps, epochs, losses, trunk rows shared, time."""
        import pandas as pd

        rows = {}
        for name, r in self.results.items():
            c = r.cache or {}
            rows[name] = {"train examples": self.data[name]["n_train"], "steps": r.global_step,
                          "epochs": c.get("epochs_done", round(r.global_step * r.settings.get("per_device_batch", 1)
                                                               / max(1, self.data[name]["n_train"]), 3)),
                          "final train loss": r.final_train_loss, "validation loss": r.final_eval_loss,
                          "trunk rows reused": c.get("reused_rows"), "trunk cache s": c.get("build_s"),
                          "wall s": r.wall_time_s}
        for name, why in self.skipped.items():
            rows[name] = {"train examples": None, "note": why}
        return pd.DataFrame(rows).T


def _protocol_data(params: Params, protocol: str, dsd: Any) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """``(train, validate, info)`` records of one protocol with the run's prompt context (retrieval rule of the protocol)."""
    if protocol == "deduplicated":
        train, validate, info = list(dsd["train"]), list(dsd["validate"]), {"leakage_guard": True}
    else:
        split, info = data_protocols.published_training_data(params)
        train, validate = list(split["train"]), list(split["validate"])
    train_ctx = retrieval.with_prompt_context(params, train, train, protocol=protocol)
    val_ctx = retrieval.with_prompt_context(params, validate, train, protocol=protocol)
    return train_ctx, val_ctx, info | {"n_train": len(train), "n_validate": len(validate)}


def train_protocols(params: Params, dsd: Any, *, log: LogFn | None = None) -> ProtocolRuns:
    """Notebook 02: train one SFT model per protocol of ``params.sft.protocols``, with the same recipe.

    * ``deduplicated``: the train split after the leakage guard (``dsd``), retrieval context never a
      report with the query's findings; folder ``outputs/<model>/sft/``;
    * ``published`` (protocol A of notebook 05): train and validate as given
      (:func:`radimpress_lib.data.protocols.published_training_data`), retrieval neighbours may have
      identical findings (never the report itself), as the paper's in-context examples; folder
      ``outputs/<model>/sft_published/``. Skipped, with the reason, when the data has no benchmark
      split (e.g. the synthetic sample).

    Each model starts from a fresh base model. With the cached trainer the second run copies the trunk
    rows (and validation rows) whose tokens the first already cached (most of them), so it mostly costs
    the training of its top layers.
    """
    log = log or default_log
    out = ProtocolRuns()
    shared: tuple[Any, ...] = ()
    for protocol in params.sft.protocols:
        try:
            train, validate, info = _protocol_data(params, protocol, dsd)
        except data_protocols.ProtocolUnavailable as exc:
            out.skipped[protocol] = str(exc)
            log(f"sft [{protocol}]: not trained: {exc}")
            continue
        model, tokenizer, model_info = checkpoints.load_base_model(params, padding_side="right")
        out.model_info = model_info
        out.data[protocol] = info
        log(f"sft [{protocol}]: {info['n_train']} train, {info['n_validate']} validation reports")
        result, run = _train_sft(model, tokenizer, datasets.Dataset.from_list(train),
                                 datasets.Dataset.from_list(validate), params.sft, sft_dir(params, protocol),
                                 params.run.seed, log=log, reuse=shared)
        out.results[protocol] = result
        if run is not None:
            shared = shared + tuple(c for c in (run.train_cache, run.eval_cache) if c is not None)
            run.model = None
        del model
    return out
