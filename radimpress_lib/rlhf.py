"""Notebook 04: DPO then online RL (TRL GRPO or RLOO) towards a radiologist's style, kept factual.

Models (all LoRA on the merged SFT model of notebook 02, which is the *reference* of both stages):

* **DPO** (:func:`train_dpo`): TRL ``DPOTrainer`` on style + factual preference pairs from the
  train split (and physician-feedback pairs from :mod:`radimpress_lib.feedback` when that
  stage is configured and enabled), with a fresh LoRA adapter; the reference log-probs come
  from the same model with the adapter disabled, i.e. the SFT model. Saved to ``dpo/adapter``.
* **online RL** (:func:`train_rl`): TRL ``GRPOTrainer`` (or ``RLOOTrainer``) continues training
  the DPO adapter on train-split prompts of the seen radiologists (their style prefix in the
  prompt) with three weighted rewards:

  - the reward-model score (notebook 03; :class:`radimpress_lib.reward.RewardScorer`);
  - a rule factual reward: F1 between the observations the labeler finds positive/uncertain
    in the completion and in the findings (No Finding included; 1 when both are empty),
    averaged with the entity-graph consistency (:func:`graph_consistency`: hallucinations,
    negation flips and omissions of :func:`radimpress_lib.graph.compare_to_findings`) when the
    entity-graph module is installed;
  - a length penalty ``-|log((words + 1) / (reference words + 1))|``;

  and a KL penalty (``rl_beta``) to the **SFT model**: TRL copies the trained adapter into a
  "ref" adapter for the reference; its LoRA ``B`` matrices are zeroed here, so the reference
  is the SFT model itself and not the DPO starting point. Saved to ``rl/adapter``.

Guards against length and template exploitation (:func:`guards`): generated/reference length
ratio and the share of distinct impressions, logged at every RL step and checked on greedy
decodes of validation reports after training.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import torch

from radimpress_lib import labeler, style
from radimpress_lib.config import DPOStageConfig, Params, RLStageConfig
from radimpress_lib.prompting import build_messages

__all__ = [
    "RewardFunctions",
    "StageResult",
    "dpo_dir",
    "factual_consistency",
    "guards",
    "load_policy",
    "per_radiologist_table",
    "plot_rl_curves",
    "review_pairs",
    "rl_dir",
    "rl_prompt_dataset",
    "rm_dir",
    "style_evaluation",
    "test_style_slots",
    "train_dpo",
    "train_rl",
]

logger = logging.getLogger("radimpress.rlhf")
_WORDS = re.compile(r"\w+")

# --------------------------------------------------------------------------- folders


def rm_dir(params: Params) -> Path:
    """Notebook 03's reward model folder."""
    return params.output_dir / "reward_model"


def dpo_dir(params: Params) -> Path:
    """Notebook 04's DPO folder (``adapter/`` on top of the merged SFT model)."""
    return params.output_dir / "dpo"


def rl_dir(params: Params) -> Path:
    """Notebook 04's online-RL folder (``adapter/``: the DPO adapter trained further)."""
    return params.output_dir / "rl"


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
    """Physician-feedback pairs for DPO (:func:`radimpress_lib.feedback.feedback_pairs_for_dpo`), when configured.

    Returns ``([], info)`` with the reason when the feedback module or its ``review`` stage
    config is absent, or the stage's own switch (``review_pairs_to_dpo``) is off.
    """
    try:
        from radimpress_lib import feedback
    except ImportError:
        return [], {"enabled": False, "reason": "radimpress_lib.feedback is not installed"}
    if not hasattr(feedback, "feedback_pairs_for_dpo"):
        return [], {"enabled": False, "reason": "radimpress_lib.feedback has no feedback_pairs_for_dpo"}
    if not hasattr(params, "review"):
        return [], {"enabled": False, "reason": "no review stage in this run's params"}
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


def train_dpo(model: Any, tokenizer: Any, pairs: Sequence[Mapping[str, Any]], cfg: DPOStageConfig,
              output_dir: str | Path, seed: int, log: Callable[[str], None] | None = None) -> tuple[Any, StageResult]:
    """DPO with a fresh LoRA adapter on ``model`` (the merged SFT model, also the reference).

    ``pairs`` must fit ``dpo_max_length`` (:func:`radimpress_lib.reward.fit_pairs_to_length`);
    TRL would drop longer ones silently, so that is checked. Returns (peft model, result);
    the adapter is saved to ``<output_dir>/adapter``.
    """
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    from radimpress_lib.models import configure_cpu_threads
    from radimpress_lib.reward import LENGTH_GROUPED, length_grouped_dataset, lora_layers
    from radimpress_lib.sft import TextProgressCallback, _default_log, _no_progress_bars

    log = log or _default_log
    if not pairs:
        raise ValueError("no preference pairs for DPO")
    _check_fp32(model)
    configure_cpu_threads()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    on_cuda = torch.cuda.is_available()
    args = DPOConfig(
        output_dir=str(output_dir / "checkpoints"), learning_rate=cfg.dpo_learning_rate, beta=cfg.dpo_beta,
        num_train_epochs=1.0, max_steps=cfg.dpo_max_steps, per_device_train_batch_size=cfg.dpo_per_device_batch,
        lr_scheduler_type="linear", warmup_steps=0.1, logging_steps=cfg.dpo_logging_steps,
        max_length=cfg.dpo_max_length, truncation_mode="keep_start", **_common_args(seed, on_cuda), **LENGTH_GROUPED,
    )
    dataset = length_grouped_dataset(pairs, tokenizer)
    tokenizer.padding_side = "right"
    with _no_progress_bars():
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=_lora(cfg.dpo_lora_r, cfg.dpo_lora_alpha,
                                               lora_layers(model, cfg.dpo_lora_last_layers)),
                             callbacks=[TextProgressCallback(None, log, prefix="dpo")])
    trainer.remove_callback(PrinterCallback)
    n_train = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    log(f"dpo: {len(dataset)} pairs, beta={cfg.dpo_beta}, trainable {n_train:,} params, reference = SFT model "
        "(adapter disabled)")
    t0 = time.perf_counter()
    with _no_progress_bars(), compact_lm_head_on_cpu():
        trainer.train()
    wall = time.perf_counter() - t0
    adapter = output_dir / "adapter"
    with _no_progress_bars():
        trainer.model.save_pretrained(str(adapter))
    result = StageResult("dpo", str(adapter), int(trainer.state.global_step), wall, len(dataset),
                         _numeric_history(trainer.state.log_history), settings={**cfg.model_dump(), "seed": seed})
    (output_dir / "result.json").write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    log(f"dpo: done, {result.global_step} steps in {wall:.0f}s; adapter saved to {adapter}")
    trainer.model.eval()
    return trainer.model, result


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
    :func:`radimpress_lib.graph.compare_to_findings` (entity-graph stage).
    """
    from radimpress_lib import graph

    errors = graph.compare_to_findings(graph.extract_graph_cached(impression), graph.extract_graph_cached(findings))
    return 1.0 / (1 + sum(len(v) for v in errors.values()))


def _graph_consistency() -> Callable[[str, str], float] | None:
    """:func:`graph_consistency` when the entity-graph module is installed, else None."""
    try:
        from radimpress_lib import graph
    except ImportError:
        return None
    if not all(hasattr(graph, name) for name in ("compare_to_findings", "extract_graph_cached")):
        return None
    return graph_consistency


def _completion_text(c: Any) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, list) and c and isinstance(c[-1], Mapping):
        return str(c[-1].get("content", ""))
    return str(c)


def _words(text: str) -> int:
    return len(_WORDS.findall(text))


class RewardFunctions:
    """The RL reward functions (TRL signature ``f(prompts, completions, **columns) -> list[float]``) and the guards.

    ``functions`` is ``[reward_model, factual, length]``; TRL logs each one's mean as
    ``rewards/<name>/mean`` and their weighted sum as ``reward``. The length function also
    logs ``guard/length_ratio`` and ``guard/distinct_ratio`` of each step's completions.
    """

    def __init__(self, scorer: Any | None, cfg: RLStageConfig) -> None:
        self.scorer, self.cfg = scorer, cfg
        self.graph = _graph_consistency()
        self.steps: list[dict[str, float]] = []

    def reward_model(self, prompts, completions, **kwargs) -> list[float]:
        """Reward-model score of each completion under its (style-slot) prompt."""
        if self.scorer is None:
            return [0.0] * len(completions)
        return self.scorer(prompts, [_completion_text(c) for c in completions])

    def factual(self, prompts, completions, findings, **kwargs) -> list[float]:
        """Labeler consistency with the findings (mean with the graph consistency when available)."""
        out = []
        for f, c in zip(findings, completions):
            text = _completion_text(c)
            score = factual_consistency(f, text)
            if self.graph is not None:
                score = 0.5 * (score + float(self.graph(f, text)))
            out.append(score)
        return out

    def length(self, prompts, completions, reference, log_metric=None, **kwargs) -> list[float]:
        """``-|log((words + 1) / (reference words + 1))|``; logs the step's guard statistics."""
        texts = [_completion_text(c).strip() for c in completions]
        ratio = [(_words(t) + 1) / (_words(r) + 1) for t, r in zip(texts, reference)]
        stats = {"length_ratio": float(np.mean([_words(t) for t in texts]) / max(np.mean([_words(r) for r in reference]), 1e-9)),
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
        """``[rl_w_reward_model, rl_w_factual, rl_w_length]``."""
        return [self.cfg.rl_w_reward_model, self.cfg.rl_w_factual, self.cfg.rl_w_length]


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

    from radimpress_lib.models import configure_cpu_threads
    from radimpress_lib.sft import TextProgressCallback, _default_log, _no_progress_bars

    log = log or _default_log
    if not is_peft_model(model):
        raise ValueError("train_rl expects a peft model (the merged SFT model with the trainable DPO adapter)")
    if len(prompts) == 0:
        raise ValueError("no RL prompts")
    _check_fp32(model)
    configure_cpu_threads()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    on_cuda = torch.cuda.is_available()
    batch = cfg.rl_prompts_per_step * cfg.rl_num_generations
    common = dict(
        output_dir=str(output_dir / "checkpoints"), learning_rate=cfg.rl_learning_rate, max_steps=cfg.rl_max_steps,
        per_device_train_batch_size=batch, gradient_accumulation_steps=1, num_generations=cfg.rl_num_generations,
        max_completion_length=cfg.rl_max_new_tokens, temperature=cfg.rl_temperature, beta=cfg.rl_beta,
        reward_weights=rewards.weights, logging_steps=cfg.rl_logging_steps, lr_scheduler_type="constant",
        shuffle_dataset=True, **_common_args(seed, on_cuda),
    )
    if cfg.rl_algorithm == "grpo":
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer
    args = Config(**common)
    tokenizer.padding_side = "left"
    with _no_progress_bars():
        trainer = Trainer(model=model, reward_funcs=rewards.functions, args=args, train_dataset=prompts,
                          processing_class=tokenizer, callbacks=[TextProgressCallback(None, log, prefix=cfg.rl_algorithm)])
    trainer.remove_callback(PrinterCallback)
    zeroed = _zero_ref_adapter(trainer.model) if cfg.rl_beta > 0 else 0
    reference = ("SFT model (ref adapter zeroed)" if zeroed else
                 "SFT model (adapters disabled)" if cfg.rl_beta > 0 else "none (beta=0)")
    n_train = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    log(f"{cfg.rl_algorithm}: {len(prompts)} prompts, {cfg.rl_max_steps} steps x {cfg.rl_prompts_per_step} prompts x "
        f"{cfg.rl_num_generations} samples, beta={cfg.rl_beta}, KL reference: {reference}, trainable {n_train:,} params")
    t0 = time.perf_counter()
    with _no_progress_bars(), compact_lm_head_on_cpu():
        trainer.train()
    wall = time.perf_counter() - t0
    adapter = output_dir / "adapter"
    with _no_progress_bars():
        trainer.model.save_pretrained(str(adapter), selected_adapters=["default"])
    result = StageResult(cfg.rl_algorithm, str(adapter), int(trainer.state.global_step), wall, len(prompts),
                         _numeric_history(trainer.state.log_history),
                         settings={**cfg.model_dump(), "seed": seed, "kl_reference": reference})
    (output_dir / "result.json").write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    log(f"{cfg.rl_algorithm}: done, {result.global_step} steps in {wall:.0f}s; adapter saved to {adapter}")
    trainer.model.eval()
    return trainer.model, result


def load_trainable_dpo(sft_model: Any, params: Params) -> Any:
    """The merged SFT model with the DPO adapter attached *trainable* (the RL starting point)."""
    from peft import PeftModel

    folder = dpo_dir(params) / "adapter"
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder}: no DPO adapter; run the DPO part of notebook 04 first")
    return PeftModel.from_pretrained(sft_model, str(folder), is_trainable=True)


# --------------------------------------------------------------------------- guards and curves


def guards(predictions: Sequence[str], references: Sequence[str], cfg: RLStageConfig) -> dict[str, Any]:
    """Length ratio (mean generated words / mean reference words), distinct-impression ratio, and pass flags."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    ratio = float(np.mean([_words(p) for p in predictions]) / max(np.mean([_words(r) for r in references]), 1e-9))
    distinct = len({p.strip() for p in predictions}) / len(predictions)
    ref_distinct = len({r.strip() for r in references}) / len(references)
    low, high = cfg.rl_guard_length_ratio
    return {"length_ratio": ratio, "distinct_ratio": distinct, "reference_distinct_ratio": ref_distinct,
            "length_ok": low <= ratio <= high, "distinct_ok": distinct >= cfg.rl_guard_min_distinct}


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
    from radimpress_lib import nbutils
    from radimpress_lib.sft import apply_adapter

    folder = {"dpo": dpo_dir, "rl": rl_dir}[stage](params) / "adapter"
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder}: no {stage} adapter; run notebook 04 first")
    model, tokenizer, info = nbutils.load_finetuned(params, padding_side=padding_side)
    model = apply_adapter(model, folder, merge=True)
    model.eval()
    return model, tokenizer, info | {"fine_adapter": str(folder.relative_to(params.output_dir))}


# --------------------------------------------------------------------------- evaluation (05)


def test_style_slots(model: style.StyleModel, records: Sequence[Mapping[str, Any]],
                     pool: Sequence[Mapping[str, Any]], k: int, seed: int) -> tuple[list[str], list[str | None], list[bool]]:
    """Target group, style slot and 'unseen' flag for each evaluation record.

    The target radiologist of a report is the group of its reference impression. Seen groups
    get their style prefix; the unseen group gets the few-shot slot with ``k`` examples from
    ``pool`` (train/validate records only).
    """
    targets = model.assign(records)
    fewshot = style.fewshot_style(model, model.unseen, pool, k=k, seed=seed) if model.unseen else None
    slots = [fewshot if g == model.unseen else style.style_prefix(model, g) if g in model.profiles else None
             for g in targets]
    return targets, slots, [g == model.unseen for g in targets]


def template_insertion(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """How often the drafts carry a normal-study statement, overall and where the reference has none.

    ``normal_statement_added_rate`` is the share of the reports whose reference impression has no
    normal-study statement (:func:`radimpress_lib.style.normal_statement`; mostly abnormal
    studies) for which the draft adds one. A fine stage rewarded for a reader's style can learn
    to append that reader's normal phrase to every impression: template exploitation that the
    length and distinct-impression ratios do not see. Both rates in percent.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    has_pred = [style.normal_statement(p) is not None for p in predictions]
    bare = [i for i, r in enumerate(references) if style.normal_statement(r) is None]
    return {"normal_statement_rate": 100.0 * float(np.mean(has_pred)) if predictions else None,
            "normal_statement_added_rate": 100.0 * float(np.mean([has_pred[i] for i in bare])) if bare else None,
            "n_references_without_normal_statement": len(bare)}


def style_evaluation(classifier: style.StyleClassifier, systems: Mapping[str, Sequence[str]], targets: Sequence[str],
                     references: Sequence[str], *, n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """``style_accuracy`` (classifier says the target radiologist) and ``length_ratio`` (words) with bootstrap CIs.

    Each system also gets :func:`template_insertion`'s rates, and ``style_accuracy_template`` /
    ``style_accuracy_no_template``: the accuracy on the reports whose reference has a
    normal-study statement (the reader's template is visible) and on those without one.
    """
    rng = np.random.default_rng(seed)
    n = len(targets)
    idx = rng.integers(0, n, size=(n_boot, n)) if n else np.zeros((0, 0), dtype=int)
    ref_words = np.array([_words(r) for r in references], dtype=float)
    ref_template = np.array([style.normal_statement(r) is not None for r in references], dtype=bool)
    out = {}
    for name, preds in systems.items():
        if len(preds) != n:
            raise ValueError(f"system {name!r}: {len(preds)} predictions for {n} targets")
        hit = np.array([p == t for p, t in zip(classifier.predict(list(preds)), targets)], dtype=float)
        words = np.array([_words(p) for p in preds], dtype=float)
        acc = hit[idx].mean(1) if n else np.array([np.nan])
        ratio = words[idx].sum(1) / np.maximum(ref_words[idx].sum(1), 1e-9) if n else np.array([np.nan])
        out[name] = {"style_accuracy": float(hit.mean()) if n else None,
                     "style_accuracy_ci": [float(np.percentile(acc, 2.5)), float(np.percentile(acc, 97.5))] if n else None,
                     "length_ratio": float(words.sum() / max(ref_words.sum(), 1e-9)) if n else None,
                     "length_ratio_ci": [float(np.percentile(ratio, 2.5)), float(np.percentile(ratio, 97.5))] if n else None,
                     "n_style": n,
                     "style_accuracy_template": float(hit[ref_template].mean()) if ref_template.any() else None,
                     "style_accuracy_no_template": float(hit[~ref_template].mean()) if (~ref_template).any() else None,
                     **template_insertion(list(preds), list(references))}
    return out


def per_radiologist_table(classifier: style.StyleClassifier, systems: Mapping[str, Sequence[str]],
                          targets: Sequence[str], references: Sequence[str], unseen: Sequence[bool]) -> pd.DataFrame:
    """Style accuracy and length ratio per (target radiologist, system); ``unseen`` marks the few-shot group."""
    rows = []
    preds = {name: classifier.predict(list(p)) for name, p in systems.items()}
    for group in sorted(set(targets)):
        idx = [i for i, t in enumerate(targets) if t == group]
        for name, texts in systems.items():
            words = sum(_words(texts[i]) for i in idx)
            ref = sum(_words(references[i]) for i in idx)
            rows.append({"radiologist": group, "unseen": bool(unseen[idx[0]]), "system": name, "n": len(idx),
                         "style_accuracy": float(np.mean([preds[name][i] == group for i in idx])),
                         "length_ratio": words / ref if ref else None})
    return pd.DataFrame(rows)


def subset_per_example(per: Any, idx: Sequence[int]) -> Any:
    """The :class:`radimpress_lib.metrics.PerExample` statistics of the examples ``idx`` only."""
    import dataclasses

    idx = list(idx)
    values = {}
    for f in dataclasses.fields(per):
        v = getattr(per, f.name)
        if isinstance(v, np.ndarray):
            values[f.name] = v[idx]
        elif isinstance(v, list) and len(v) == per.n:
            values[f.name] = [v[i] for i in idx]
        else:
            values[f.name] = v
    values["n"] = len(idx)
    values["references_sha256"] = f"{per.references_sha256}[subset {len(idx)}]"
    values["n_empty_predictions"] = int(sum(1 for i in idx if per.pred_words[i] == 0))
    return type(per)(**values)


def content_by_radiologist(per: Mapping[str, Any], systems: Sequence[str], targets: Sequence[str],
                           unseen: Sequence[bool], *, n_boot: int = 1000, seed: int = 0,
                           metrics: Sequence[str] = ("rougeL", "label_f1_micro", "len_ratio_words")) -> pd.DataFrame:
    """Content metrics with bootstrap 95% CIs per target radiologist and system (coarse vs fine)."""
    from radimpress_lib import metrics as M

    rows = []
    for group in sorted(set(targets)):
        idx = [i for i, t in enumerate(targets) if t == group]
        for name in systems:
            s = M.summarize(subset_per_example(per[name], idx), n_boot=n_boot, seed=seed)
            row = {"radiologist": group, "unseen": bool(unseen[idx[0]]), "system": name, "n": len(idx)}
            for m in metrics:
                row[m] = s.get(m)
                ci = s.get(f"{m}_ci")
                row[f"{m}_ci"] = None if not ci else [None if c is None else round(c, 2) for c in ci]
            rows.append(row)
    return pd.DataFrame(rows)


def available_fine_stages(params: Params) -> list[str]:
    """Fine stages whose adapters notebook 04 has written ('dpo', 'rl'), in order."""
    folders = {"dpo": dpo_dir(params), "rl": rl_dir(params)}
    return [s for s, f in folders.items() if (f / "adapter" / "adapter_config.json").is_file()]
