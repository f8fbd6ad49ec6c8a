"""Training the top layers from a cached frozen trunk: the CPU training path of notebooks 02-04.

Why a hand-written loop: no training library trains from cached hidden states. With only the top
``L`` decoder layers trained, the states entering layer ``N - L`` depend only on the token ids, so
they are computed once (:func:`radimpress_lib.llm.trunk.build_trunk_cache`) and every step runs
only the top layers + norm + head, forward and backward. The rest is the usual recipe, from the
usual libraries: peft LoRA on the top layers (a standard adapter on the full model, so
:func:`radimpress_lib.llm.checkpoints.apply_adapter`, :func:`radimpress_lib.train.reward.load_reward_model`
and :func:`radimpress_lib.train.rlhf.load_policy` load it unchanged), ``torch.optim.AdamW``,
transformers' schedules (``get_scheduler``: warmup + cosine / linear) and its length-grouped
sampler (``get_length_grouped_indices``, what the Trainer's ``group_by_length`` uses), gradient
clipping, the LM head applied only where a token is scored, seeded everything.

What it costs (SmolLM2-135M, 30 layers, 1 torch thread, process CPU seconds per example; the
measurement is ``bench/train_speed.py``): the trunk cache ~0.6 s once (layers ``0..N-L-1``, no grad,
the shared system prompt once), then ~0.35 s per epoch for the top 6 layers (LoRA on all linear
projections), against ~1.9 s per example for the whole model forward and backward. The stages
built on it: :func:`train_sft_cached` (here), ``reward.train_reward_model`` and ``rlhf.train_dpo``
with ``trainer: cached`` (rows with branches: one prompt per preference pair; the DPO reference
log-probs computed once, in the cache pass).

Resuming: with ``save_steps`` the loop writes ``checkpoints/checkpoint-<step>/`` (trainable weights,
optimizer, step, history) and resumes from the newest one: the data order is a function of the seed
and the epoch, so a resumed run ends with the weights of an uninterrupted one (``tests/test_cached.py``).

Timing: every duration (cache build, training, an optional ``time_budget_s``) is measured on one
clock, wall time by default or process CPU time (``clock=time.process_time``), which stays meaningful
when another job shares the CPU (benchmarks).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from radimpress_lib.core.config import DPOStageConfig, RewardStageConfig, SFTStageConfig
from radimpress_lib.core.jsonio import write_json
from radimpress_lib.llm import trunk
from radimpress_lib.llm.callbacks import default_log, fmt_seconds, no_progress_bars
from radimpress_lib.llm.models import configure_cpu_threads
from radimpress_lib.llm.trunk import Batch, Row, TrunkCache

__all__ = [
    "CachedRun",
    "HeadSettings",
    "RunResult",
    "completion_loss_cached",
    "dpo_settings",
    "needed_rows",
    "plan_batches",
    "rm_settings",
    "sft_settings",
    "storage_dtype",
    "train_head",
    "train_rows",
    "train_sft_cached",
]

LogFn = Callable[[str], None]
Clock = Callable[[], float]

#: The linear projections of a LLaMA-type decoder layer ("all-linear" for LoRA on chosen layers).
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def storage_dtype(name: str) -> torch.dtype:
    """``"float32" | "float16" | "bfloat16"`` -> torch dtype (trunk cache storage)."""
    return _DTYPES[name]


@dataclass
class HeadSettings:
    """Settings of one cached top-layer training run (built from a stage config by :func:`sft_settings`,
    :func:`rm_settings`, :func:`dpo_settings`)."""

    stage: str
    top_layers: int | None = 6  # None: every layer (the cache then holds the embeddings)
    method: str = "lora"  # lora | full (the top layers' weights themselves)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: list[str] | str = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    learning_rate: float = 1e-3
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 8
    epochs: float = 1.0
    max_steps: int = -1  # -1: epochs
    logging_steps: int = 10
    save_steps: int = 0  # 0: no checkpoints
    save_total_limit: int = 2
    seed: int = 42
    cache_dtype: str = "float32"
    cache_dir: str | None = None
    max_batch_tokens: int = 4096
    center_rewards: float | None = None  # reward model: TRL's center_rewards_coefficient
    beta: float = 0.1  # DPO

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings."""
        return asdict(self)


def sft_settings(cfg: SFTStageConfig, seed: int) -> HeadSettings:
    """The cached-trainer settings of notebook 02's SFT stage."""
    if cfg.method not in ("lora", "full"):
        raise ValueError(f"the cached trainer trains LoRA or full top layers; sft.method={cfg.method!r} "
                         "(qlora needs the trl trainer on CUDA)")
    return HeadSettings(
        stage="sft", top_layers=cfg.top_layers, method=cfg.method, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
        lora_targets=cfg.lora_targets, learning_rate=cfg.learning_rate, lr_scheduler=cfg.lr_scheduler,
        warmup_ratio=cfg.warmup_ratio, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        batch_size=cfg.per_device_batch * cfg.grad_accum, epochs=cfg.epochs, max_steps=cfg.max_steps,
        logging_steps=cfg.logging_steps, save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit, seed=seed,
        cache_dtype=cfg.cache_dtype, cache_dir=cfg.cache_dir)


def rm_settings(cfg: RewardStageConfig, seed: int) -> HeadSettings:
    """The cached-trainer settings of notebook 03's reward model (LoRA q,k,v,o on the last ``lora_last_layers``)."""
    return HeadSettings(
        stage="rm", top_layers=cfg.lora_last_layers, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
        learning_rate=cfg.learning_rate, lr_scheduler="linear", warmup_ratio=0.1, batch_size=cfg.per_device_batch,
        epochs=cfg.epochs, max_steps=cfg.max_steps, logging_steps=cfg.logging_steps, seed=seed,
        cache_dtype=cfg.cache_dtype, cache_dir=cfg.cache_dir, center_rewards=cfg.center_rewards)


def dpo_settings(cfg: DPOStageConfig, seed: int) -> HeadSettings:
    """The cached-trainer settings of notebook 04's DPO (LoRA q,k,v,o on the last ``lora_last_layers``)."""
    return HeadSettings(
        stage="dpo", top_layers=cfg.lora_last_layers, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
        learning_rate=cfg.learning_rate, lr_scheduler="linear", warmup_ratio=0.1, batch_size=cfg.per_device_batch,
        epochs=cfg.epochs, max_steps=cfg.max_steps, logging_steps=cfg.logging_steps, seed=seed,
        cache_dtype=cfg.cache_dtype, cache_dir=cfg.cache_dir, beta=cfg.beta)


@dataclass
class RunResult:
    """What a cached training run did (also ``cached_result.json`` in its folder)."""

    stage: str
    output_dir: str
    final_dir: str
    global_step: int
    max_steps: int
    epochs_done: float
    examples_seen: int
    n_rows: int
    n_cached_rows: int
    n_reused_rows: int
    train_tokens: int
    completion_tokens: int
    cache_build_s: float
    train_s: float
    wall_time_s: float
    examples_per_s: float
    loss_history: list[dict[str, float]]
    n_trainable_params: int
    n_params: int
    cache_mib: float
    trunk_layer: int
    stopped_by_budget: bool
    resumed_from: str | None
    final_eval_loss: float | None
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return asdict(self)


@dataclass
class CachedRun:
    """A finished cached run: the trained model (peft-wrapped for LoRA), its result and its trunk caches
    (``train_cache``, ``eval_cache``: to share rows with a later run of the same trunk)."""

    model: Any
    result: RunResult
    train_cache: TrunkCache
    eval_cache: TrunkCache | None = None


# --------------------------------------------------------------------------- batches


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch: transformers' length-grouped order (``get_length_grouped_indices``, as the
    Trainer's ``group_by_length`` sampler), seeded by ``seed`` and ``epoch``, cut into ``batch_size`` slices."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    g = torch.Generator()
    g.manual_seed(seed * 1_000_003 + epoch)
    order = get_length_grouped_indices(list(lengths), batch_size, generator=g)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def plan_batches(lengths: Sequence[int], settings: HeadSettings) -> list[tuple[int, list[int]]]:
    """``[(epoch, batch)]`` of the whole run: ``max_steps`` batches, or ``ceil(epochs * batches per epoch)``.

    Fractional epochs see a seeded random part of the rows (only those are cached)."""
    per_epoch = math.ceil(len(lengths) / settings.batch_size)
    total = settings.max_steps if settings.max_steps > 0 else max(1, math.ceil(settings.epochs * per_epoch))
    plan: list[tuple[int, list[int]]] = []
    epoch = 0
    while len(plan) < total:
        plan += [(epoch, b) for b in epoch_batches(lengths, settings.batch_size, settings.seed, epoch)]
        epoch += 1
    return plan[:total]


# --------------------------------------------------------------------------- model preparation


def _linear_names(model: torch.nn.Module) -> list[str]:
    layer = trunk.decoder_of(model).layers[0]
    return sorted({name.rsplit(".", 1)[-1] for name, m in layer.named_modules() if isinstance(m, torch.nn.Linear)})


def top_layers_of(model: torch.nn.Module, settings: HeadSettings, log: LogFn) -> int:
    """``settings.top_layers`` bounded by the model's depth (None: every layer)."""
    N = trunk.n_layers(model)
    if settings.top_layers is None:
        return N
    if settings.top_layers > N:
        log(f"{settings.stage}: top_layers={settings.top_layers} >= the model's {N} layers: training all of them "
            "from the embeddings")
        return N
    return settings.top_layers


def prepare_trainable(model: torch.nn.Module, settings: HeadSettings, L: int, task_type: str,
                      modules_to_save: list[str] | None = None) -> tuple[Any, list[torch.nn.Parameter]]:
    """``(model, trainable parameters)``: LoRA on the top ``L`` layers (peft model) or those layers in full."""
    if settings.method == "lora":
        targets = settings.lora_targets
        if targets == "all-linear":  # peft applies layers_to_transform to a list of names only
            targets = _linear_names(model)
        with no_progress_bars():
            pm = trunk.attach_top_lora(model, L, settings.lora_r, settings.lora_alpha, targets, task_type,
                                       modules_to_save, seed=settings.seed)
        return pm, [p for p in pm.parameters() if p.requires_grad]
    if settings.method == "full":
        return model, trunk.train_top_layers_in_full(model, L, modules_to_save or ())
    raise ValueError(f"method must be lora or full, got {settings.method!r}")


# --------------------------------------------------------------------------- the loop


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])) if folder.is_dir() else []
    return found[-1] if found else None


def _save_checkpoint(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any],
                     keep: int) -> None:
    path = folder / f"checkpoint-{state['step']}"
    path.mkdir(parents=True, exist_ok=True)
    torch.save({"trainable": _trainable_state(model), "optimizer": opt.state_dict(), **state}, path / "state.pt")
    old = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for stale in old[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)


def train_head(model: torch.nn.Module, params: list[torch.nn.Parameter], cache: TrunkCache,
               plan: Sequence[tuple[int, list[int]]], loss_fn: Callable[[Batch, torch.Tensor], tuple[torch.Tensor,
                                                                                                      dict[str, float]]],
               settings: HeadSettings, *, output_dir: Path | None = None, resume: bool = True, pad_id: int = 0,
               clock: Clock = time.perf_counter, time_budget_s: float | None = None, t_start: float | None = None,
               on_step: Callable[[int, float], None] | None = None, log: LogFn | None = None) -> dict[str, Any]:
    """Seeded AdamW over ``plan`` (``[(epoch, cache row indices)]``) from the cached trunk.

    ``loss_fn(batch, top)`` gets the final normed hidden states of the batch's rows and returns
    ``(loss, metrics)``. The learning rate follows transformers' ``get_scheduler(settings.lr_scheduler)``
    with ``warmup_ratio`` of the steps; with ``time_budget_s`` the run stops when its time (counted from
    ``t_start``, cache build included) reaches the budget, and the schedule advances with
    ``max(step / total, training time / time the budget left for training)``, so the learning rate
    decays within the budget.
    ``on_step(step, train_seconds)`` runs after every optimizer step (its time is excluded).
    """
    from transformers import get_scheduler

    log = log or default_log
    total = len(plan)
    t_start = clock() if t_start is None else t_start
    device, dtype = next(model.parameters()).device, next(p for p in model.parameters() if p.is_floating_point()).dtype
    opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    warmup = math.ceil(settings.warmup_ratio * total)
    lr_lambda = get_scheduler(settings.lr_scheduler, opt, num_warmup_steps=warmup,
                              num_training_steps=total).lr_lambdas[0]
    ckpt_dir = output_dir / "checkpoints" if output_dir is not None else None
    step, seen, tokens, completion, history, measuring, resumed_from = 0, 0, 0, 0, [], 0.0, None
    elapsed_before = 0.0
    last = _latest_checkpoint(ckpt_dir) if (ckpt_dir is not None and resume and settings.save_steps) else None
    if last is not None:
        state = torch.load(last / "state.pt", weights_only=False)
        named = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in state["trainable"].items():
                named[n].copy_(t)
        opt.load_state_dict(state["optimizer"])
        step, seen, tokens, completion = state["step"], state["seen"], state["tokens"], state["completion"]
        history, elapsed_before = state["history"], state["elapsed"]
        resumed_from = str(last)
        log(f"{settings.stage}: resuming from {last.name} (step {step}/{total})")
    torch.manual_seed(settings.seed + step)
    model.train()
    t_loop = clock()
    stopped = False
    n_rows = len(cache.rows)

    def elapsed() -> float:
        return clock() - t_start - measuring + elapsed_before

    left_at_start = (time_budget_s - elapsed()) if time_budget_s else None  # what the cache build left for training

    def train_progress() -> float:
        return (clock() - t_loop - measuring + elapsed_before) / max(1e-9, left_at_start)

    while step < total:
        epoch, idx = plan[step]
        factor = lr_lambda(step)
        if left_at_start:
            virtual = max(step, min(total, train_progress() * total))
            factor = lr_lambda(int(virtual)) if virtual >= warmup else factor
        lr = settings.learning_rate * factor
        for g in opt.param_groups:
            g["lr"] = lr
        batch, hidden, prefix = cache.batch(idx, pad_id, device, dtype)
        loss, metrics = loss_fn(batch, trunk.head_forward(model, cache, batch, hidden, prefix))
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm) if settings.max_grad_norm else None
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        seen += len(idx)
        tokens += batch.n_tokens + len(cache.prefix_ids) * len(idx)
        completion += int(batch.label_tgt.numel())
        if step % settings.logging_steps == 0 or step == 1 or step == total:
            el = elapsed()
            rec = {"step": step, "epoch": seen / n_rows, "loss": float(loss.detach()), "learning_rate": lr,
                   "elapsed_s": el, **metrics}
            if gnorm is not None:
                rec["grad_norm"] = float(gnorm)
            history.append(rec)
            eta = f", ~{fmt_seconds(el / step * (total - step))} left" if step < total else ""
            log(f"{settings.stage} step {step}/{total} ({100 * step / total:.0f}%) epoch {seen / n_rows:.2f} | "
                f"loss {rec['loss']:.4g} | lr {lr:.2e} | {seen / max(el, 1e-9):.2f} ex/s | "
                f"{fmt_seconds(el)} elapsed{eta}")
        if ckpt_dir is not None and settings.save_steps and step % settings.save_steps == 0 and step < total:
            _save_checkpoint(ckpt_dir, model, opt, {"step": step, "seen": seen, "tokens": tokens,
                                                    "completion": completion, "history": history,
                                                    "elapsed": elapsed()}, settings.save_total_limit)
        if on_step is not None:
            t = clock()
            was = model.training
            on_step(step, elapsed())
            model.train(was)
            measuring += clock() - t
        if time_budget_s is not None and elapsed() >= time_budget_s and step < total:
            stopped = True
            log(f"{settings.stage}: time budget {time_budget_s:.0f}s reached at step {step}/{total}")
            break
    model.eval()
    return {"step": step, "total": total, "seen": seen, "tokens": tokens, "completion": completion,
            "history": history, "train_s": clock() - t_loop - measuring, "stopped": stopped,
            "measuring_s": measuring, "resumed_from": resumed_from, "elapsed": elapsed()}


def needed_rows(plan: Sequence[tuple[int, list[int]]]) -> tuple[list[int], list[tuple[int, list[int]]]]:
    """Rows the plan uses (sorted) and the plan re-indexed onto them."""
    needed = sorted({i for _, b in plan for i in b})
    where = {i: k for k, i in enumerate(needed)}
    return needed, [(e, [where[i] for i in b]) for e, b in plan]


def finish(stage: str, model: torch.nn.Module, tokenizer: Any, settings: HeadSettings, output_dir: Path,
           cache: TrunkCache, loop: Mapping[str, Any], n_rows: int, wall: float, log: LogFn,
           eval_loss: float | None = None, folder_name: str | None = None) -> RunResult:
    """Save the adapter (LoRA) or model (full) and ``cached_result.json``; remove the checkpoints."""
    folder = output_dir / (folder_name or ("adapter" if settings.method == "lora" else "model"))
    with no_progress_bars():
        model.save_pretrained(str(folder))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    res = RunResult(stage, str(output_dir), str(folder), loop["step"], loop["total"], loop["seen"] / max(1, n_rows),
                    loop["seen"], n_rows, len(cache.rows), cache.n_reused, loop["tokens"], loop["completion"],
                    cache.build_s, loop["train_s"], wall, loop["seen"] / wall if wall > 0 else math.nan,
                    list(loop["history"]), n_train, n_all, cache.nbytes / 2**20, cache.layer, loop["stopped"],
                    loop["resumed_from"], eval_loss, settings.to_dict())
    write_json(output_dir / "cached_result.json", res.to_dict())
    shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    log(f"{stage}: done, {res.global_step} steps, {res.epochs_done:.2f} epochs of {n_rows} rows, trunk cache "
        f"{res.cache_build_s:.0f}s + training {res.train_s:.0f}s = {wall:.0f}s ({res.examples_per_s:.2f} ex/s); "
        f"saved to {folder}")
    return res


# --------------------------------------------------------------------------- SFT


def _check_fp32_on_cpu(model: torch.nn.Module) -> None:
    p = next(model.parameters())
    if p.device.type == "cpu" and p.dtype != torch.float32:
        raise ValueError(f"model has {p.dtype} weights; training on CPU is fp32 only (load it with dtype='float32')")


def _sft_loss(head: torch.nn.Module):
    def loss_fn(batch: Batch, top: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        logits = head(top[batch.label_b, batch.label_src]).float()
        return F.cross_entropy(logits, batch.label_tgt), {}
    return loss_fn


@torch.no_grad()
def completion_loss_cached(model: torch.nn.Module, cache: TrunkCache, batch_size: int = 16) -> float:
    """Mean completion cross-entropy of the cached rows with the current head (teacher forcing; evaluation)."""
    head = trunk.lm_head_of(model)
    device = next(model.parameters()).device
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    was = model.training
    model.eval()
    tot, n = 0.0, 0
    for idx in trunk.token_batches([len(r) for r in cache.rows], 4096):
        for s in range(0, len(idx), batch_size):
            batch, hidden, prefix = cache.batch(idx[s:s + batch_size], device=device, dtype=dtype)
            top = trunk.head_forward(model, cache, batch, hidden, prefix)
            logits = head(top[batch.label_b, batch.label_src]).float()
            tot += float(F.cross_entropy(logits, batch.label_tgt, reduction="sum"))
            n += int(batch.label_tgt.numel())
    model.train(was)
    return tot / max(n, 1)


def train_sft_cached(model: torch.nn.Module, tokenizer: Any, input_ids: Sequence[Sequence[int]],
                     labels: Sequence[Sequence[int]], settings: HeadSettings, output_dir: str | Path, *,
                     eval_input_ids: Sequence[Sequence[int]] | None = None,
                     eval_labels: Sequence[Sequence[int]] | None = None, reuse: Sequence[TrunkCache] = (),
                     resume: bool = True, clock: Clock = time.perf_counter, time_budget_s: float | None = None,
                     on_step: Callable[[int, float], None] | None = None, log: LogFn | None = None) -> CachedRun:
    """Completion-only SFT of the top ``settings.top_layers`` layers from a cached trunk.

    Args:
        model: the base causal LM (fp32 on CPU); with ``method="lora"`` it is wrapped in a peft model
            (LoRA on the top layers only), which is returned; ``"full"`` trains the top layers in place.
        tokenizer: saved next to the adapter; keys the disk cache.
        input_ids / labels: tokenized examples (:func:`radimpress_lib.llm.prompting.build_sft_dataset`).
        settings: :func:`sft_settings` (``epochs`` or ``max_steps``; fractional epochs cache only the
            seeded part of the examples they see).
        output_dir: ``adapter/`` (LoRA) or ``model/`` (full), ``checkpoints/`` while running,
            ``cached_result.json``.
        eval_input_ids / eval_labels: validation examples: their completion loss after training.
        reuse: trunk caches of the same base model whose identical rows are copied (e.g. the other
            protocol's run).
        clock / time_budget_s / on_step: see :func:`train_head` (benchmarks).

    Returns:
        :class:`CachedRun` (model, result, trunk caches).
    """
    log = log or default_log
    trunk.check_supported(model)
    _check_fp32_on_cpu(model)
    configure_cpu_threads()
    t0 = clock()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L = top_layers_of(model, settings, log)
    upto = trunk.n_layers(model) - L
    rows = trunk.sft_rows(input_ids, labels)
    plan = plan_batches([len(r) for r in rows], settings)
    needed, plan = needed_rows(plan)
    if len(needed) < len(rows):
        log(f"sft: {len(plan)} steps of {settings.batch_size} see {len(needed)} of the {len(rows)} examples; only "
            "those are cached")
    pad = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
    cache = trunk.build_trunk_cache(model, [rows[i] for i in needed], upto,
                                    dtype=storage_dtype(settings.cache_dtype), max_batch_tokens=settings.max_batch_tokens,
                                    pad_id=pad, tokenizer=tokenizer, cache_dir=settings.cache_dir, reuse=reuse,
                                    clock=clock, log=log)
    eval_cache = None
    if eval_input_ids is not None and len(eval_input_ids):
        eval_cache = trunk.build_trunk_cache(model, trunk.sft_rows(eval_input_ids, eval_labels), upto,
                                             dtype=storage_dtype(settings.cache_dtype),
                                             max_batch_tokens=settings.max_batch_tokens, pad_id=pad,
                                             tokenizer=tokenizer, cache_dir=settings.cache_dir,
                                             reuse=[cache, *reuse], clock=clock, log=log)
    model, params = prepare_trainable(model, settings, L, "CAUSAL_LM")
    n_train = sum(p.numel() for p in params)
    log(f"sft: cached trainer, {settings.method} on the top {L} of {trunk.n_layers(model)} layers "
        f"({n_train:,} trainable params), {len(rows)} examples, {len(plan)} steps of {settings.batch_size}")
    loop = train_head(model, params, cache, plan, _sft_loss(trunk.lm_head_of(model)), settings,
                      output_dir=output_dir, resume=resume, pad_id=pad, clock=clock, time_budget_s=time_budget_s,
                      t_start=t0, on_step=on_step, log=log)
    eval_loss = completion_loss_cached(model, eval_cache) if eval_cache is not None else None
    if eval_loss is not None:
        log(f"sft: eval_loss {eval_loss:.4f} ({len(eval_cache.rows)} validation examples)")
    wall = loop["elapsed"] if loop["resumed_from"] else clock() - t0 - loop["measuring_s"]
    result = finish("sft", model, tokenizer, settings, output_dir, cache, loop, len(rows), wall, log, eval_loss)
    return CachedRun(model, result, cache, eval_cache)


# --------------------------------------------------------------------------- preference rows (reward model, DPO)


def train_rows(model: torch.nn.Module, rows: Sequence[Row], settings: HeadSettings, output_dir: str | Path,
               make_loss: Callable[[Any, TrunkCache], Callable[[Batch, torch.Tensor],
                                                               tuple[torch.Tensor, dict[str, float]]]], *,
               task_type: str = "CAUSAL_LM", modules_to_save: list[str] | None = None, ref_logps: bool = False,
               tokenizer: Any = None, pad_id: int = 0, clock: Clock = time.perf_counter,
               time_budget_s: float | None = None, on_step: Callable[[int, float], None] | None = None,
               log: LogFn | None = None) -> CachedRun:
    """Train the top layers of ``model`` on prefix-shared ``rows`` (preference pairs) from a trunk cache.

    ``make_loss(trainable_model, cache)`` returns the loss function (it may read ``cache.extras``, e.g.
    the DPO reference log-probs computed in the cache pass with ``ref_logps``). The adapter is saved to
    ``<output_dir>/adapter`` (``tokenizer`` only keys a disk cache here).
    """
    log = log or default_log
    trunk.check_supported(model)
    _check_fp32_on_cpu(model)
    configure_cpu_threads()
    t0 = clock()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L = top_layers_of(model, settings, log)
    upto = trunk.n_layers(model) - L
    needed, plan = needed_rows(plan_batches([len(r) for r in rows], settings))
    cache = trunk.build_trunk_cache(model, [rows[i] for i in needed], upto, dtype=storage_dtype(settings.cache_dtype),
                                    max_batch_tokens=settings.max_batch_tokens, pad_id=pad_id, ref_logps=ref_logps,
                                    tokenizer=tokenizer, cache_dir=settings.cache_dir, clock=clock, log=log)
    model, params = prepare_trainable(model, settings, L, task_type, modules_to_save)
    log(f"{settings.stage}: cached trainer, {settings.method} on the top {L} of {trunk.n_layers(model)} layers "
        f"({sum(p.numel() for p in params):,} trainable params), {len(rows)} pairs, {len(plan)} steps of "
        f"{settings.batch_size}")
    loop = train_head(model, params, cache, plan, make_loss(model, cache), settings, output_dir=output_dir,
                      resume=False, pad_id=pad_id, clock=clock, time_budget_s=time_budget_s, t_start=t0,
                      on_step=on_step, log=log)
    wall = clock() - t0 - loop["measuring_s"]
    result = finish(settings.stage, model, None, settings, output_dir, cache, loop, len(rows), wall, log,
                    folder_name="adapter")
    return CachedRun(model, result, cache)


def rm_loss(center_rewards: float | None):
    """TRL ``RewardTrainer``'s loss on pair rows: ``-logsigmoid(r_c - r_r) + c * mean((r_c + r_r)^2)``, with the
    score head at the last token of each branch."""
    def make(model: Any, cache: TrunkCache):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model

        def loss_fn(batch: Batch, top: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
            b = torch.arange(top.shape[0], device=top.device)
            rc = base.score(top[b, batch.last[:, 0]]).float()[:, 0]
            rr = base.score(top[b, batch.last[:, 1]]).float()[:, 0]
            loss = -F.logsigmoid(rc - rr).mean()
            if center_rewards:
                loss = loss + center_rewards * torch.mean((rc + rr) ** 2)
            return loss, {"accuracy": float((rc > rr).float().mean()), "margin": float((rc - rr).mean().detach())}
        return loss_fn
    return make


def dpo_loss(beta: float):
    """DPO's sigmoid loss on pair rows against the reference log-probs of the cache pass (``cache.extras``).

    Only the tokens after the answers' common prefix are summed: the shared part cancels exactly in
    the log-ratio. Metrics are named as TRL's (``rewards/accuracies``, ``rewards/margins``, ...)."""
    def make(model: Any, cache: TrunkCache):
        head = trunk.lm_head_of(model)
        ref = cache.extras["ref_logps"]

        def loss_fn(batch: Batch, top: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
            sums = trunk.branch_sums(trunk.token_logps(head, top, batch), batch)
            r = ref[batch.index].to(sums.dtype).to(sums.device)
            chosen, rejected = beta * (sums[:, 0] - r[:, 0]), beta * (sums[:, 1] - r[:, 1])
            loss = -F.logsigmoid(chosen - rejected).mean()
            return loss, {"rewards/chosen": float(chosen.mean().detach()),
                          "rewards/rejected": float(rejected.mean().detach()),
                          "rewards/accuracies": float((chosen > rejected).float().mean()),
                          "rewards/margins": float((chosen - rejected).mean().detach())}
        return loss_fn
    return make
