"""GRPO on CPU with each prompt computed once per group: the ``rl.trainer: cached`` path of notebook 04.

Why a hand-written loop: TRL's ``GRPOTrainer`` treats the ``G`` completions of one prompt as ``G``
independent sequences, so every pass (sampling prefill, reference log-probs, policy log-probs and
backward, reward model) computes the prompt ``G`` times. Here the prompt is ~95% of a sequence
(SmolLM2-135M: 227 prompt tokens on average against ~10 completion tokens), so on 2 CPU cores
that duplication is most of a step (``bench/rl_steps.py`` measures both trainers). This loop
keeps TRL's GRPO recipe and changes only where the arithmetic happens:

* **sampling**: each prompt is prefilled once (left-padded batch), its key/value cache repeated
  ``G`` times (``DynamicCache.batch_repeat_interleave``), then ancestral sampling at
  ``rl.temperature`` (no top-k / top-p, as TRL's defaults); a completion ends at and includes its
  first end-of-turn token, and leaves the batch then (``batch_select_indices``), so the long tail
  of a few rambling samples decodes at batch 1-2 instead of ``prompts x G``;
* **log-probs**: one row per prompt (:func:`radimpress_lib.llm.trunk.group_rows`: the prompt once,
  then the ``G`` completions as branches that attend to it and not to each other), the frozen
  layers below the adapter run once without gradients, then the adapted top layers twice: with
  the adapter disabled (the reference, the SFT model, no gradients) and with it (the policy);
* **loss**: TRL 1.16's defaults: group-normalised advantages ``(r - mean) / (std + 1e-4)``
  (``scale_rewards="group"``), per-token ``-A`` times the importance ratio (1, one optimisation
  pass per generation) plus ``beta`` times the k3 estimator of KL(policy || reference),
  summed over completion tokens and divided by their number (``loss_type="dapo"``); AdamW
  (no weight decay), constant learning rate, gradients clipped at norm 1.0;
* **rewards**: the same callables TRL calls (:class:`radimpress_lib.train.rlhf.RewardFunctions`,
  conversational completions, the dataset's columns as keyword arguments, ``log_metric``), so
  the logged history has TRL's keys (``reward``, ``reward_std``, ``kl``, ``rewards/<name>/mean``,
  ``completions/mean_length``, ``guard/*``) and notebook 04's curves read either trainer.

The adapter trained is the peft model's active one (the DPO adapter on the last
``dpo.lora_last_layers`` layers); layers below the lowest adapted layer are the trunk.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from radimpress_lib.core.config import RLStageConfig
from radimpress_lib.llm import trunk
from radimpress_lib.llm.callbacks import default_log, fmt_seconds
from radimpress_lib.llm.prompting import end_of_turn_token_ids
from radimpress_lib.train.reward import chat_token_ids

__all__ = ["adapted_from", "group_advantages", "sample_groups", "train_grpo_cached"]

LogFn = Callable[[str], None]
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def adapted_from(model: torch.nn.Module) -> int:
    """Index of the lowest decoder layer holding a trainable parameter (the first layer the policy trains)."""
    layers = [int(m.group(1)) for n, p in model.named_parameters() if p.requires_grad and (m := _LAYER.search(n))]
    if not layers:
        raise ValueError("the policy has no trainable decoder-layer parameters (expected a LoRA adapter)")
    outside = [n for n, p in model.named_parameters() if p.requires_grad and not _LAYER.search(n)]
    if outside:
        raise ValueError(f"the cached RL trainer trains decoder layers only; also trainable: {outside[:3]}")
    return min(layers)


def group_advantages(rewards: torch.Tensor, group: int, eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO advantages of ``rewards`` (``[n_prompts * group]``, groups contiguous): ``(r - mean) / (std + eps)``
    within each group (unbiased std, as TRL), and the per-group std."""
    r = rewards.view(-1, group)
    std = r.std(dim=1) if group > 1 else torch.zeros(r.shape[0], dtype=r.dtype)
    adv = (r - r.mean(dim=1, keepdim=True)) / (std[:, None] + eps)
    return adv.reshape(-1), std


@torch.no_grad()
def sample_groups(model: Any, prompt_ids: Sequence[Sequence[int]], group: int, cfg: RLStageConfig, *, pad_id: int,
                  end_ids: Sequence[int]) -> list[list[list[int]]]:
    """``group`` sampled completions (token ids, ending at the first end-of-turn token when one is sampled) of
    each prompt: every prompt is prefilled once and its key/value cache shared by its completions; a completion
    that has ended leaves the batch (its cache rows are dropped), so the few long samples decode alone.

    Plain ancestral sampling at ``rl.temperature`` (no top-k / top-p: TRL's defaults), ``rl.max_new_tokens``
    at most.
    """
    from transformers import DynamicCache

    B, T = len(prompt_ids), max(len(p) for p in prompt_ids)
    device = next(model.parameters()).device
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for b, p in enumerate(prompt_ids):  # left padding: every prompt ends at the last column
        ids[b, T - len(p):] = torch.tensor(list(p))
        mask[b, T - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    was = model.training
    model.eval()
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, cache=cache, use_cache=True,
                   logits_to_keep=1).logits[:, -1].repeat_interleave(group, 0)
    cache.batch_repeat_interleave(group)
    mask = mask.repeat_interleave(group, 0)
    pos = position_ids[:, -1].repeat_interleave(group, 0) + 1
    alive = torch.arange(B * group, device=device)
    ends = torch.tensor(list(end_ids), device=device)
    comps: list[list[int]] = [[] for _ in range(B * group)]
    for t in range(cfg.max_new_tokens):
        tok = torch.multinomial(torch.softmax(logits.float() / cfg.temperature, dim=-1), 1)[:, 0]
        for i, x in zip(alive.tolist(), tok.tolist()):
            comps[i].append(x)
        keep = (~torch.isin(tok, ends)).nonzero()[:, 0]
        if t == cfg.max_new_tokens - 1 or len(keep) == 0:
            break
        if len(keep) < len(alive):  # finished completions leave the batch
            cache.batch_select_indices(keep)
            alive, tok, mask, pos = alive[keep], tok[keep], mask[keep], pos[keep]
        mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
        logits = model(input_ids=tok[:, None], attention_mask=mask, position_ids=pos[:, None], cache=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1]
        pos = pos + 1
    model.train(was)
    return [comps[b * group:(b + 1) * group] for b in range(B)]


def _token_logps(model: Any, h: torch.Tensor, prefix: torch.Tensor | None, batch: trunk.Batch, upto: int,
                 temperature: float) -> torch.Tensor:
    top, _ = trunk.run_layers(model, h, upto, trunk.n_layers(model), batch.mask, batch.position_ids, prefix)
    return trunk.token_logps(trunk.lm_head_of(model), trunk.final_norm(model, top), batch, temperature)


def _prompt_order(n: int, needed: int, seed: int) -> list[int]:
    order: list[int] = []
    epoch = 0
    while len(order) < needed:  # reshuffled every pass over the prompts
        idx = list(range(n))
        random.Random(f"{seed}|{epoch}").shuffle(idx)
        order += idx
        epoch += 1
    return order[:needed]


def train_grpo_cached(model: Any, tokenizer: Any, prompts: Any, rewards: Any, cfg: RLStageConfig, seed: int,
                      log: LogFn | None = None) -> tuple[list[dict[str, float]], float]:
    """GRPO of ``model`` (a peft model; its trainable adapter is trained in place) for ``cfg.max_steps`` steps of
    ``cfg.prompts_per_step`` prompts x ``cfg.num_generations`` completions.

    ``prompts``: a dataset / sequence of mappings with ``prompt`` (chat messages) and the columns the reward
    functions read; ``rewards``: ``.functions`` and ``.weights`` (TRL's reward-function signature).
    Returns ``(log history, training seconds)``.
    """
    log = log or default_log
    trunk.check_supported(model)
    if cfg.algorithm != "grpo":
        raise ValueError(f"the cached RL trainer implements GRPO, not {cfg.algorithm} (use rl.trainer: trl)")
    G = cfg.num_generations
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    end_ids = end_of_turn_token_ids(tokenizer)
    rows_in = [dict(prompts[i]) for i in range(len(prompts))]
    prompt_ids = [chat_token_ids(tokenizer, r["prompt"], True) for r in rows_in]
    upto = adapted_from(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    order = _prompt_order(len(rows_in), cfg.max_steps * cfg.prompts_per_step, seed)
    funcs, weights = rewards.functions, torch.tensor(rewards.weights, dtype=torch.float64)
    history: list[dict[str, float]] = []
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    log(f"grpo (cached): start, {cfg.max_steps} steps, trunk = layers 0-{upto - 1}, adapter on layers "
        f"{upto}-{trunk.n_layers(model) - 1}")
    for step in range(1, cfg.max_steps + 1):
        picked = order[(step - 1) * cfg.prompts_per_step: step * cfg.prompts_per_step]
        comps = sample_groups(model, [prompt_ids[i] for i in picked], G, cfg, pad_id=pad, end_ids=end_ids)
        # rewards: TRL's call convention, one entry per completion, groups contiguous
        texts = [tokenizer.decode(c, skip_special_tokens=True) for group in comps for c in group]
        records = [rows_in[i] for i in picked for _ in range(G)]
        columns = {k: [r[k] for r in records] for k in records[0] if k != "prompt"}
        metrics: dict[str, float] = {}
        per_func = []
        for f in funcs:
            vals = f(prompts=[r["prompt"] for r in records],
                     completions=[[{"role": "assistant", "content": t}] for t in texts],
                     log_metric=lambda k, v: metrics.__setitem__(k, float(v)), **columns)
            per_func.append([math.nan if v is None else float(v) for v in vals])
        r_mat = torch.tensor(per_func, dtype=torch.float64).T  # [n, funcs]
        total = torch.nansum(r_mat * weights[None], dim=1)
        adv, std = group_advantages(total, G)
        # log-probs: one row per prompt with its G completions as branches
        rows = trunk.group_rows([prompt_ids[i] for i in picked], comps)
        model.train()
        with torch.no_grad():  # the frozen layers once, every row in one batch
            (batch, h, prefix), = trunk.layer_passes(model, rows, upto, len(rows) * max(len(r) for r in rows), pad)
            with model.disable_adapter():
                ref = _token_logps(model, h, prefix, batch, upto, cfg.temperature)
        lp = _token_logps(model, h, prefix, batch, upto, cfg.temperature)
        seq = torch.as_tensor(batch.index, device=lp.device)[batch.label_b] * G + batch.label_branch - 1
        a = adv.to(lp.dtype)[seq]  # each scored token's completion's advantage
        d = ref - lp
        kl = torch.exp(d) - d - 1
        per_token = -torch.exp(lp - lp.detach()) * a + cfg.beta * kl
        loss = per_token.sum() / max(1, per_token.numel())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lengths = [len(c) for group in comps for c in group]
        entry = {"step": float(step), "loss": float(loss.detach()), "learning_rate": cfg.learning_rate,
                 "epoch": step * cfg.prompts_per_step / len(rows_in),
                 "reward": float(total.mean()), "reward_std": float(std.mean()), "kl": float(kl.detach().mean()),
                 "frac_reward_zero_std": float((std < 1e-6).double().mean()),
                 "completions/mean_length": float(np.mean(lengths)),
                 "completions/clipped_ratio": float(np.mean([c[-1] not in end_ids for group in comps
                                                             for c in group])),
                 **{f"rewards/{f.__name__}/mean": float(np.nanmean(col)) for f, col in zip(funcs, per_func)},
                 **{f"rewards/{f.__name__}/std": float(np.nanstd(col, ddof=1)) if len(col) > 1 else 0.0
                    for f, col in zip(funcs, per_func)},
                 **metrics}
        history.append(entry)
        if step % cfg.logging_steps == 0 or step == cfg.max_steps:
            el = time.perf_counter() - t0
            log(f"grpo step {step}/{cfg.max_steps} ({100 * step / cfg.max_steps:.0f}%) | reward {entry['reward']:.3f}"
                f" | kl {entry['kl']:.4f} | loss {entry['loss']:.4g} | {fmt_seconds(el)} elapsed, "
                f"~{fmt_seconds(el / step * (cfg.max_steps - step))} left")
    model.eval()
    return history, time.perf_counter() - t0

