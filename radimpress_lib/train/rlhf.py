"""Notebook 04: DPO then online RL (TRL GRPO or RLOO) towards a radiologist's style, kept factual.

Models (all LoRA on the merged SFT model of notebook 02, which is the *reference* of both stages):

* **DPO** (:func:`train_dpo`): style + factual preference pairs from the train split (and
  physician-feedback pairs from :mod:`radimpress_lib.data.feedback` when that stage is configured
  and enabled), with a fresh LoRA adapter on the last ``dpo.lora_last_layers`` layers; the reference
  is the SFT model. Trainers (``dpo.trainer``): ``cached`` (CPU default: one no-grad pass over the
  prefix-shared pair rows stores the trunk states and the reference log-probs, then only the LoRA
  layers train; :func:`radimpress_lib.train.cached.train_rows` on :func:`dpo_rows`) or TRL's
  ``DPOTrainer`` (``trl``: reference = the adapter disabled, recomputed every step). Saved to
  ``dpo/adapter``.
* **online RL** (:func:`train_rl`): TRL ``GRPOTrainer`` (or ``RLOOTrainer``; ``rl.trainer: trl``) or
  the same GRPO recipe with each prompt computed once per group of completions (``rl.trainer:
  cached``, :mod:`radimpress_lib.train.rl_cached`) continues training the DPO adapter on
  train-split prompts of the seen radiologists (their style prefix in the prompt) with three
  weighted rewards:

  - the reward-model score (notebook 03; :class:`radimpress_lib.train.reward.RewardScorer`);
  - a rule factual reward: F1 between the observations the labeler finds positive/uncertain
    in the completion and in the findings (No Finding included; 1 when both are empty),
    averaged with the entity-graph consistency (:func:`graph_consistency`: hallucinations,
    negation flips and omissions of :func:`radimpress_lib.clinical.graph.compare_to_findings`) when the
    entity-graph module is installed;
  - a length penalty ``-|log((words + 1) / (reference words + 1))|``;

  and a KL penalty (``rl.beta``) to the **SFT model**: TRL copies the trained adapter into a
  "ref" adapter for the reference; its LoRA ``B`` matrices are zeroed here, so the reference
  is the SFT model itself and not the DPO starting point (the cached trainer disables the
  adapter for the reference). Saved to ``rl/adapter``.

Guards against length and template exploitation (:func:`guards`): generated/reference length
ratio and the share of distinct impressions, logged at every RL step and checked on greedy
decodes of validation reports after training.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import torch

from radimpress_lib.clinical import graph, labeler, style
from radimpress_lib.core.artifacts import dpo_dir, rl_dir
from radimpress_lib.core.config import DPOStageConfig, Params, RLStageConfig
from radimpress_lib.core.jsonio import write_json
from radimpress_lib.data import feedback
from radimpress_lib.llm import checkpoints, trunk
from radimpress_lib.llm.callbacks import TextProgressCallback, default_log, no_progress_bars
from radimpress_lib.llm.checkpoints import apply_adapter
from radimpress_lib.llm.models import configure_cpu_threads
from radimpress_lib.llm.prompting import build_messages
from radimpress_lib.train import cached, rl_cached
from radimpress_lib.train.reward import LENGTH_GROUPED, check_pair_lengths, length_grouped_dataset, lora_layers, pair_token_ids

__all__ = [
    "RewardFunctions",
    "StageResult",
    "dpo_implicit_accuracy",
    "dpo_rows",
    "factual_consistency",
    "guards",
    "load_policy",
    "plot_rl_curves",
    "review_pairs",
    "rl_prompt_dataset",
    "train_dpo",
    "train_rl",
]

logger = logging.getLogger("radimpress.rlhf")

# --------------------------------------------------------------------------- folders


@dataclass
class StageResult:
    """A training stage's summary (written to ``<folder>/result.json``)."""

    stage: str
    adapter_dir: str
    global_step: int
    wall_time_s: float
    n_examples: int
    log_history: list[dict[str, float]]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return asdict(self)


def _numeric_history(history: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    return [{k: float(v) for k, v in h.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
            for h in history]


# --------------------------------------------------------------------------- DPO


def review_pairs(params: Params) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Physician-feedback pairs for DPO (:func:`radimpress_lib.data.feedback.feedback_pairs_for_dpo`), when configured.

    Returns ``([], info)`` with the reason when the review stage's switch (``review.pairs_to_dpo``) is off
    or there is no review database.
    """
    pairs, info = feedback.feedback_pairs_for_dpo(params, with_info=True)
    return list(pairs), dict(info)


def _lora(cfg_r: int, alpha: int, layers: list[int] | None) -> Any:
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=cfg_r, lora_alpha=alpha, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], layers_to_transform=layers, bias="none")


def _common_args(seed: int, on_cuda: bool) -> dict[str, Any]:
    return {"seed": seed, "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "logging_first_step": True,
            "bf16": bool(on_cuda and torch.cuda.is_bf16_supported()), "dataloader_num_workers": 0,
            "dataloader_pin_memory": on_cuda, "activation_checkpointing": False}


@contextlib.contextmanager
def compact_lm_head_on_cpu() -> Iterator[None]:
    """Let TRL's fused LM head score only the completion positions on CPU too.

    TRL 1.16 (``trl.trainer.utils._fused_forward``) projects only the labelled positions to
    the vocabulary on Triton devices; elsewhere it scores every position (the prompt is ~90% of
    a sequence here) and masks the result, which is exact but ~5x slower on CPU with a 49k
    vocabulary. Both paths give the same log-probs; this switches the CPU onto the compact one
    (the tile computation itself stays the torch implementation).
    """
    from trl.trainer import utils as trl_utils

    original = trl_utils._use_triton
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


def _check_fp32(model: Any) -> None:
    if not torch.cuda.is_available() and next(model.parameters()).dtype != torch.float32:
        raise ValueError("training on CPU is fp32 only (load the model with dtype='float32')")


def dpo_rows(tokenizer: Any, pairs: Sequence[Mapping[str, Any]]) -> list[trunk.Row]:
    """Prefix-shared DPO rows: the prompt with its generation prompt, then each answer up to and including its
    end-of-turn token (what SFT taught the policy to generate)."""
    P, C, R = pair_token_ids(tokenizer, pairs, show_similar=True, cut_at_end=True)
    return trunk.pair_rows(P, C, R, [{"report_id": p.get("report_id"), "pair_type": p.get("pair_type")}
                                     for p in pairs])


def dpo_implicit_accuracy(policy: Any, ref_logps: Any, rows: Sequence[trunk.Row], beta: float) -> dict[str, float]:
    """Held-out DPO check: share of pairs whose implicit reward ranks chosen first,
    ``[log pi(c) - log ref(c)] - [log pi(r) - log ref(r)] > 0`` (``ref_logps``: :func:`radimpress_lib.llm.trunk.sequence_logps`
    of the SFT model on ``rows``), overall and per pair family, and the mean margin (times ``beta``)."""
    lp = trunk.sequence_logps(policy, rows)
    logits = (lp[:, 0] - ref_logps[:, 0]) - (lp[:, 1] - ref_logps[:, 1])
    out = {"implicit_acc": float((logits > 0).double().mean()), "mean_margin": float(beta * logits.mean()),
           "n": len(rows)}
    fams = [str(r.meta.get("pair_type", "")).split(":")[0] for r in rows]
    for fam in sorted(set(fams)):
        sel = torch.tensor([f == fam for f in fams])
        out[f"{fam}_acc"] = float((logits[sel] > 0).double().mean())
    return out


def train_dpo(model: Any, tokenizer: Any, pairs: Sequence[Mapping[str, Any]], cfg: DPOStageConfig,
              output_dir: str | Path, seed: int, log: Callable[[str], None] | None = None) -> tuple[Any, StageResult]:
    """DPO with a fresh LoRA adapter on ``model`` (the merged SFT model, also the reference), with ``cfg.trainer``.

    ``pairs`` must fit ``dpo.max_length`` (:func:`radimpress_lib.train.reward.fit_pairs_to_length`);
    TRL would drop longer ones silently, so that is checked. Returns (peft model, result);
    the adapter is saved to ``<output_dir>/adapter``.
    """
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig, DPOTrainer


    log = log or default_log
    if not pairs:
        raise ValueError("no preference pairs for DPO")
    _check_fp32(model)
    if cfg.trainer == "cached":
        return _train_dpo_cached(model, tokenizer, pairs, cfg, output_dir, seed, log)
    configure_cpu_threads()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    on_cuda = torch.cuda.is_available()
    args = DPOConfig(
        output_dir=str(output_dir / "checkpoints"), learning_rate=cfg.learning_rate, beta=cfg.beta,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, per_device_train_batch_size=cfg.per_device_batch,
        lr_scheduler_type="linear", warmup_steps=0.1, logging_steps=cfg.logging_steps,
        max_length=cfg.max_length, truncation_mode="keep_start", **_common_args(seed, on_cuda), **LENGTH_GROUPED,
    )
    dataset = length_grouped_dataset(pairs, tokenizer)
    tokenizer.padding_side = "right"
    with no_progress_bars():
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=_lora(cfg.lora_r, cfg.lora_alpha,
                                               lora_layers(model, cfg.lora_last_layers)),
                             callbacks=[TextProgressCallback(None, log, prefix="dpo")])
    trainer.remove_callback(PrinterCallback)
    n_train = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    log(f"dpo: {len(dataset)} pairs, beta={cfg.beta}, trainable {n_train:,} params, reference = SFT model "
        "(adapter disabled)")
    t0 = time.perf_counter()
    with no_progress_bars(), compact_lm_head_on_cpu():
        trainer.train()
    wall = time.perf_counter() - t0
    adapter = output_dir / "adapter"
    with no_progress_bars():
        trainer.model.save_pretrained(str(adapter))
    result = StageResult("dpo", str(adapter), int(trainer.state.global_step), wall, len(dataset),
                         _numeric_history(trainer.state.log_history), settings={**cfg.model_dump(), "seed": seed})
    write_json(output_dir / "result.json", result.to_dict())
    log(f"dpo: done, {result.global_step} steps in {wall:.0f}s; adapter saved to {adapter}")
    trainer.model.eval()
    return trainer.model, result


def _train_dpo_cached(model: Any, tokenizer: Any, pairs: Sequence[Mapping[str, Any]], cfg: DPOStageConfig,
                      output_dir: str | Path, seed: int, log: Callable[[str], None]) -> tuple[Any, StageResult]:
    """The cached trainer: reference log-probs once, in the trunk-cache pass; the same adapter as TRL's path."""
    rows = dpo_rows(tokenizer, pairs)
    check_pair_lengths(rows, cfg.max_length, "DPO")
    settings = cached.dpo_settings(cfg, seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    log(f"dpo: {len(pairs)} pairs, beta={cfg.beta}, reference = SFT model (log-probs computed once)")
    run = cached.train_rows(model, rows, settings, output_dir, cached.dpo_loss(cfg.beta), ref_logps=True,
                            tokenizer=tokenizer, pad_id=pad, log=log)
    r = run.result
    result = StageResult("dpo", r.final_dir, r.global_step, r.wall_time_s, len(pairs),
                         _numeric_history(r.loss_history),
                         settings={**cfg.model_dump(), "seed": seed, "trunk_layer": r.trunk_layer,
                                   "cache_build_s": r.cache_build_s, "train_s": r.train_s,
                                   "epochs_done": r.epochs_done})
    write_json(Path(output_dir) / "result.json", result.to_dict())
    return run.model, result


# --------------------------------------------------------------------------- RL: prompts and rewards


def rl_prompt_dataset(records: Sequence[Mapping[str, Any]], model: style.StyleModel, n: int, seed: int,
                      tokenizer: Any, max_prompt_tokens: int) -> tuple[datasets.Dataset, dict[str, int]]:
    """Seeded prompts of seen radiologists (their style prefix) with ``findings``, ``reference`` and ``group`` columns.

    Findings are truncated (token boundary, " [...]") so the templated prompt fits
    ``max_prompt_tokens``; truncations are counted.
    """
    if any(r.get("split") == "test" for r in records):
        raise ValueError("RL prompts come from the train split, never the test split")
    groups = model.assign(records)
    idx = [i for i, g in enumerate(groups) if g in model.seen_groups]
    rng = random.Random(seed)
    rng.shuffle(idx)
    rows: dict[str, list[Any]] = {"prompt": [], "findings": [], "reference": [], "group": [], "report_id": []}
    stats = {"truncated": 0}
    for i in idx[:n]:
        record, group = dict(records[i]), groups[i]
        slot = style.style_prefix(model, group)

        def length(findings: str, rec=record, s=slot) -> int:
            text = tokenizer.apply_chat_template(build_messages(dict(rec, findings=findings), s), tokenize=False,
                                                 add_generation_prompt=True)
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        findings = record["findings"]
        if length(findings) > max_prompt_tokens:
            ids = tokenizer(findings, add_special_tokens=False)["input_ids"]
            keep = len(ids)
            while keep > 0 and length(findings) > max_prompt_tokens:
                keep = max(0, keep - max(4, keep // 8))
                findings = tokenizer.decode(ids[:keep], skip_special_tokens=True).strip() + " [...]"
            stats["truncated"] += 1
        rows["prompt"].append(build_messages(dict(record, findings=findings), slot))
        rows["findings"].append(record["findings"])
        rows["reference"].append(record["impression"])
        rows["group"].append(group)
        rows["report_id"].append(str(record.get("report_id")))
    return datasets.Dataset.from_dict(rows), stats


def _positive(text: str) -> frozenset[str]:
    labels = labeler.label_report(text)
    return frozenset(o for o, s in labels.items() if s in (labeler.POSITIVE, labeler.UNCERTAIN))


def factual_consistency(findings: str, impression: str) -> float:
    """F1 (0-1) between the observations positive/uncertain in the impression and in the findings.

    No Finding counts as an observation (a normal impression for normal findings scores 1);
    an empty impression scores 0.
    """
    if not impression.strip():
        return 0.0
    f, i = _positive(findings), _positive(impression)
    if not f and not i:
        return 1.0
    tp = len(f & i)
    return 2 * tp / (len(f) + len(i)) if (f or i) else 1.0


def graph_consistency(findings: str, impression: str) -> float:
    """Entity-graph consistency of an impression with its findings: ``1 / (1 + errors)`` in (0, 1].

    Errors are the hallucinated observations, negation flips and omitted significant findings of
    :func:`radimpress_lib.clinical.graph.compare_to_findings` (entity-graph stage).
    """

    errors = graph.compare_to_findings(graph.extract_graph_cached(impression), graph.extract_graph_cached(findings))
    return 1.0 / (1 + sum(len(v) for v in errors.values()))


def _completion_text(c: Any) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, list) and c and isinstance(c[-1], Mapping):
        return str(c[-1].get("content", ""))
    return str(c)


class RewardFunctions:
    """The RL reward functions (TRL signature ``f(prompts, completions, **columns) -> list[float]``) and the guards.

    ``functions`` is ``[reward_model, factual, length]``; TRL logs each one's mean as
    ``rewards/<name>/mean`` and their weighted sum as ``reward``. The length function also
    logs ``guard/length_ratio`` and ``guard/distinct_ratio`` of each step's completions.
    """

    def __init__(self, scorer: Any | None, cfg: RLStageConfig) -> None:
        self.scorer, self.cfg = scorer, cfg
        self.steps: list[dict[str, float]] = []

    def reward_model(self, prompts, completions, **kwargs) -> list[float]:
        """Reward-model score of each completion under its (style-slot) prompt."""
        if self.scorer is None:
            return [0.0] * len(completions)
        return self.scorer(prompts, [_completion_text(c) for c in completions],
                           share_prompts=self.cfg.trainer == "cached")

    def factual(self, prompts, completions, findings, **kwargs) -> list[float]:
        """Mean of the labeler consistency and the entity-graph consistency with the findings."""
        out = []
        for f, c in zip(findings, completions):
            text = _completion_text(c)
            out.append(0.5 * (factual_consistency(f, text) + graph_consistency(f, text)))
        return out

    def length(self, prompts, completions, reference, log_metric=None, **kwargs) -> list[float]:
        """``-|log((words + 1) / (reference words + 1))|``; logs the step's guard statistics."""
        texts = [_completion_text(c).strip() for c in completions]
        ratio = [(style.word_count(t) + 1) / (style.word_count(r) + 1) for t, r in zip(texts, reference)]
        stats = {"length_ratio": float(np.mean([style.word_count(t) for t in texts]) / max(np.mean([style.word_count(r) for r in reference]), 1e-9)),
                 "distinct_ratio": len(set(texts)) / len(texts)}
        self.steps.append(stats)
        if log_metric is not None:
            for k, v in stats.items():
                log_metric(f"guard/{k}", v)
        return [-abs(math.log(x)) for x in ratio]

    @property
    def functions(self) -> list[Callable[..., list[float]]]:
        """The reward callables, in weight order."""
        # TRL names the logged reward columns after each callable's __name__.
        return [self.reward_model, self.factual, self.length]

    @property
    def weights(self) -> list[float]:
        """``[rl.w_reward_model, rl.w_factual, rl.w_length]``."""
        return [self.cfg.w_reward_model, self.cfg.w_factual, self.cfg.w_length]


# --------------------------------------------------------------------------- RL: training


def _zero_ref_adapter(model: Any) -> int:
    """Make TRL's "ref" adapter the identity (LoRA B = 0): the KL reference becomes the base (SFT) model."""
    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ref." in name and "lora_B" in name:
                p.zero_()
                n += 1
    return n


def train_rl(model: Any, tokenizer: Any, prompts: datasets.Dataset, rewards: RewardFunctions, cfg: RLStageConfig,
             output_dir: str | Path, seed: int, log: Callable[[str], None] | None = None) -> tuple[Any, StageResult]:
    """Online RL (GRPO or RLOO) of ``model`` — a peft model whose trainable adapter is the DPO adapter on SFT.

    KL to the SFT model (see module doc). Returns (peft model, result); the adapter is saved
    to ``<output_dir>/adapter``.
    """
    from accelerate.utils import is_peft_model
    from transformers.trainer_callback import PrinterCallback


    log = log or default_log
    if not is_peft_model(model):
        raise ValueError("train_rl expects a peft model (the merged SFT model with the trainable DPO adapter)")
    if len(prompts) == 0:
        raise ValueError("no RL prompts")
    _check_fp32(model)
    configure_cpu_threads()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.trainer == "cached":
        return _train_rl_cached(model, tokenizer, prompts, rewards, cfg, output_dir, seed, log)
    on_cuda = torch.cuda.is_available()
    batch = cfg.prompts_per_step * cfg.num_generations
    common = dict(
        output_dir=str(output_dir / "checkpoints"), learning_rate=cfg.learning_rate, max_steps=cfg.max_steps,
        per_device_train_batch_size=batch, gradient_accumulation_steps=1, num_generations=cfg.num_generations,
        max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature, beta=cfg.beta,
        reward_weights=rewards.weights, logging_steps=cfg.logging_steps, lr_scheduler_type="constant",
        shuffle_dataset=True, **_common_args(seed, on_cuda),
    )
    if cfg.algorithm == "grpo":
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer
    args = Config(**common)
    tokenizer.padding_side = "left"
    with no_progress_bars():
        trainer = Trainer(model=model, reward_funcs=rewards.functions, args=args, train_dataset=prompts,
                          processing_class=tokenizer, callbacks=[TextProgressCallback(None, log, prefix=cfg.algorithm)])
    trainer.remove_callback(PrinterCallback)
    zeroed = _zero_ref_adapter(trainer.model) if cfg.beta > 0 else 0
    reference = ("SFT model (ref adapter zeroed)" if zeroed else
                 "SFT model (adapters disabled)" if cfg.beta > 0 else "none (beta=0)")
    n_train = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    log(f"{cfg.algorithm}: {len(prompts)} prompts, {cfg.max_steps} steps x {cfg.prompts_per_step} prompts x "
        f"{cfg.num_generations} samples, beta={cfg.beta}, KL reference: {reference}, trainable {n_train:,} params")
    t0 = time.perf_counter()
    with no_progress_bars(), compact_lm_head_on_cpu():
        trainer.train()
    wall = time.perf_counter() - t0
    adapter = output_dir / "adapter"
    with no_progress_bars():
        trainer.model.save_pretrained(str(adapter), selected_adapters=["default"])
    result = StageResult(cfg.algorithm, str(adapter), int(trainer.state.global_step), wall, len(prompts),
                         _numeric_history(trainer.state.log_history),
                         settings={**cfg.model_dump(), "seed": seed, "kl_reference": reference})
    write_json(output_dir / "result.json", result.to_dict())
    log(f"{cfg.algorithm}: done, {result.global_step} steps in {wall:.0f}s; adapter saved to {adapter}")
    trainer.model.eval()
    return trainer.model, result


def _train_rl_cached(model: Any, tokenizer: Any, prompts: datasets.Dataset, rewards: RewardFunctions,
                     cfg: RLStageConfig, output_dir: Path, seed: int, log: Callable[[str], None]
                     ) -> tuple[Any, StageResult]:
    """``rl.trainer: cached`` (:mod:`radimpress_lib.train.rl_cached`): the reference is the SFT model (adapter
    disabled); the same adapter folder and result as TRL's path."""
    reference = "SFT model (adapter disabled)" + ("" if cfg.beta > 0 else "; KL logged, not penalised (beta=0)")
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"grpo (cached): {len(prompts)} prompts, {cfg.max_steps} steps x {cfg.prompts_per_step} prompts x "
        f"{cfg.num_generations} samples, beta={cfg.beta}, KL reference: {reference}, trainable {n_train:,} params")
    history, wall = rl_cached.train_grpo_cached(model, tokenizer, prompts, rewards, cfg, seed, log=log)
    adapter = output_dir / "adapter"
    with no_progress_bars():
        model.save_pretrained(str(adapter), selected_adapters=[model.active_adapter])
    result = StageResult(cfg.algorithm, str(adapter), len(history), wall, len(prompts), _numeric_history(history),
                         settings={**cfg.model_dump(), "seed": seed, "kl_reference": reference})
    write_json(output_dir / "result.json", result.to_dict())
    log(f"{cfg.algorithm}: done, {result.global_step} steps in {wall:.0f}s; adapter saved to {adapter}")
    return model, result


def load_trainable_dpo(sft_model: Any, params: Params) -> Any:
    """The RL starting point on the merged SFT model, *trainable*: the DPO adapter (``rl.start: dpo``) or a fresh
    adapter with the DPO stage's LoRA settings (``rl.start: sft``; LoRA's zero-initialised B makes it the SFT model)."""
    from peft import PeftModel, get_peft_model

    if params.rl.start == "sft":
        return get_peft_model(sft_model, _lora(params.dpo.lora_r, params.dpo.lora_alpha,
                                               lora_layers(sft_model, params.dpo.lora_last_layers)))
    folder = dpo_dir(params) / "adapter"
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder}: no DPO adapter; run the DPO part of notebook 04 first")
    return PeftModel.from_pretrained(sft_model, str(folder), is_trainable=True)


# --------------------------------------------------------------------------- guards and curves


def guards(predictions: Sequence[str], references: Sequence[str], cfg: RLStageConfig) -> dict[str, Any]:
    """Length ratio (mean generated words / mean reference words), distinct-impression ratio, and pass flags."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    ratio = float(np.mean([style.word_count(p) for p in predictions]) / max(np.mean([style.word_count(r) for r in references]), 1e-9))
    distinct = len({p.strip() for p in predictions}) / len(predictions)
    ref_distinct = len({r.strip() for r in references}) / len(references)
    low, high = cfg.guard_length_ratio
    return {"length_ratio": ratio, "distinct_ratio": distinct, "reference_distinct_ratio": ref_distinct,
            "length_ok": low <= ratio <= high, "distinct_ok": distinct >= cfg.guard_min_distinct}


def validation_guards(decoded: Mapping[str, Any], records: Sequence[Mapping[str, Any]], targets: Sequence[str],
                      style_classifier: Any, cfg: RLStageConfig) -> pd.DataFrame:
    """Guards, style accuracy and labeler consistency of each fine policy's validation drafts (notebook 04).

    ``decoded`` maps a stage (``dpo``, ``rl``) to its :class:`~radimpress_lib.llm.generation.GenerationResult`
    on ``records``; ``targets`` are the records' target radiologists.
    """
    references = [r["impression"] for r in records]
    rows = {}
    for stage, result in decoded.items():
        preds = [p["prediction"] for p in result.predictions]
        rows[stage] = guards(preds, references, cfg) | {
            "style_accuracy": style_classifier.accuracy(preds, targets),
            "factual_consistency": float(np.mean([factual_consistency(r["findings"], p) for r, p in zip(records, preds)]))}
    return pd.DataFrame(rows).T


def failed_guards(table: pd.DataFrame, cfg: RLStageConfig) -> list[str]:
    """One sentence per fine policy whose length or distinct-impression guard failed (empty when all pass)."""
    low, high = cfg.guard_length_ratio
    out = []
    for stage, row in table.iterrows():
        problems = []
        if not row["length_ok"]:
            problems.append(f"length ratio {row['length_ratio']:.2f} outside [{low}, {high}]")
        if not row["distinct_ok"]:
            problems.append(f"distinct-impression ratio {row['distinct_ratio']:.2f} below {cfg.guard_min_distinct}")
        if problems:
            out.append(f"{stage}: " + " and ".join(problems))
    return out


def plot_rl_curves(history: Sequence[Mapping[str, float]], algorithm: str = "grpo"):
    """Reward (total and per component), KL to the SFT model and the guards against optimizer step."""
    import matplotlib.pyplot as plt

    rows = [h for h in history if "reward" in h]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    steps = [h.get("step", i + 1) for i, h in enumerate(rows)]
    axes[0].plot(steps, [h["reward"] for h in rows], marker="o", label="total (weighted)")
    for name in ("reward_model", "factual", "length"):
        key = f"rewards/{name}/mean"
        if any(key in h for h in rows):
            axes[0].plot(steps, [h.get(key, np.nan) for h in rows], marker=".", label=name)
    axes[0].set_title(f"{algorithm.upper()} reward")
    axes[0].legend(fontsize=8)
    axes[1].plot(steps, [h.get("kl", np.nan) for h in rows], marker="o", color="C3")
    axes[1].set_title("KL to the SFT model")
    for key, label in (("guard/length_ratio", "length ratio"), ("guard/distinct_ratio", "distinct ratio")):
        axes[2].plot(steps, [h.get(key, np.nan) for h in rows], marker="o", label=label)
    axes[2].set_title("guards (sampled completions)")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("optimizer step")
    fig.tight_layout()
    return fig


def plot_dpo_curves(history: Sequence[Mapping[str, float]]):
    """DPO loss and reward accuracy / margin against optimizer step."""
    import matplotlib.pyplot as plt

    rows = [h for h in history if "loss" in h]
    steps = [h.get("step", i + 1) for i, h in enumerate(rows)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(steps, [h["loss"] for h in rows], marker="o")
    axes[0].set_title("DPO loss")
    for key in ("rewards/accuracies", "rewards/margins"):
        axes[1].plot(steps, [h.get(key, np.nan) for h in rows], marker=".", label=key)
    axes[1].legend(fontsize=8)
    axes[1].set_title("implicit reward (train batches)")
    for ax in axes:
        ax.set_xlabel("optimizer step")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- loading policies (05)


def load_policy(params: Params, stage: str, *, padding_side: str = "left"):
    """The fine-stage model of ``stage`` ('dpo' or 'rl'): merged SFT model + that stage's adapter, merged."""

    folder = {"dpo": dpo_dir, "rl": rl_dir}[stage](params) / "adapter"
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder}: no {stage} adapter; run notebook 04 first")
    model, tokenizer, info = checkpoints.load_finetuned(params, padding_side=padding_side)
    model = apply_adapter(model, folder, merge=True)
    model.eval()
    return model, tokenizer, info | {"fine_adapter": str(folder.relative_to(params.output_dir))}


# --------------------------------------------------------------------------- evaluation (05)


def available_fine_stages(params: Params) -> list[str]:
    """Fine stages whose adapters notebook 04 has written ('dpo', 'rl'), in order."""
    folders = {"dpo": dpo_dir(params), "rl": rl_dir(params)}
    return [s for s, f in folders.items() if (f / "adapter" / "adapter_config.json").is_file()]
