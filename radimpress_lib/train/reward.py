"""Reward model (notebook 03): preference pairs of two kinds and a TRL ``RewardTrainer`` with LoRA.

Pairs (shared format of :mod:`radimpress_lib.data.preferences`; the prompt's style slot holds the
*target* radiologist's style prefix, :func:`radimpress_lib.clinical.style.style_prefix`):

* **style pairs** — same content, target radiologist's style vs another's. ``chosen`` is the
  report's own impression (written by the target group); ``rejected`` is an impression of
  *another* group with the same content, found by its CheXpert label signature (the set of
  positive/uncertain observations, :mod:`radimpress_lib.clinical.labeler`) in the same split
  (``style:swap``). Real impressions are used rather than synthetic rewrites so the reward
  model learns the readers' actual wording and not a rewriting artefact; the label signature
  keeps the content the same at the level the factual reward can see (locations and severity
  may still differ, a known limitation). When no other group has an impression with that
  signature, the impression is rewritten in another group's template
  (:func:`radimpress_lib.clinical.style.restyle`: its normal phrase and numbering; ``style:restyle``).
* **factual pairs** — reference vs a factually corrupted copy (``factual:<kind>``), from
  :func:`radimpress_lib.clinical.corruptions.corrupt_impression` (negation flipped, laterality
  swapped, a finding dropped or inserted, severity changed; each checked on the entity graph).

Train pairs come from the train split, held-out pairs from the validation split (never test).
The unseen radiologist group is excluded from every pair (it is the few-shot case).

The reward model is the SFT model's backbone with a scalar ``score`` head
(``AutoModelForSequenceClassification``, ``num_labels=1``), LoRA adapters on the attention
projections of the last ``rm.lora_last_layers`` layers (on CPU the backward pass then stops
there) and the score head trained in full and saved with the adapter (peft
``modules_to_save``). Trainers (``rm.trainer``): ``cached`` (CPU default; the layers below the
LoRA layers computed once per pair, the prompt once for chosen and rejected:
:func:`radimpress_lib.train.cached.train_rows` on :func:`rm_rows`) or TRL's ``RewardTrainer``
(``trl``); both save the same adapter layout, which :func:`load_reward_model` loads.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_args

import datasets
import pandas as pd
import torch

from radimpress_lib.clinical import corruptions, labeler, style
from radimpress_lib.core.config import FactualMix, RewardStageConfig
from radimpress_lib.core.jsonio import write_json
from radimpress_lib.data.preferences import make_pair, validate_pair
from radimpress_lib.llm import trunk
from radimpress_lib.llm.callbacks import TextProgressCallback, default_log, no_progress_bars
from radimpress_lib.llm.models import configure_cpu_threads
from radimpress_lib.llm.prompting import build_messages, end_of_turn_token_ids, without_similar
from radimpress_lib.train import cached

__all__ = [
    "FACTUAL_MIXES",
    "RewardScorer",
    "chat_token_ids",
    "build_factual_pairs",
    "build_pairs",
    "build_style_pairs",
    "fit_pairs_to_length",
    "label_signature",
    "length_grouped_dataset",
    "load_reward_model",
    "lora_layers",
    "pairwise_accuracy",
    "plot_margins",
    "check_pair_lengths",
    "pair_token_ids",
    "reward_model_from_causal_lm",
    "rm_messages",
    "rm_rows",
    "score_pairs",
    "score_pairs_rows",
    "train_reward_model",
]

logger = logging.getLogger("radimpress.reward")

# --------------------------------------------------------------------------- content signature


def label_signature(text: str) -> frozenset[str]:
    """Observations the labeler finds positive or uncertain in ``text`` (No Finding included)."""
    labels = labeler.label_report(text)
    return frozenset(obs for obs, status in labels.items() if status in (labeler.POSITIVE, labeler.UNCERTAIN))


# --------------------------------------------------------------------------- pairs


def _seen(records: Sequence[Mapping[str, Any]], groups: Sequence[str], model: style.StyleModel):
    return [(r, g) for r, g in zip(records, groups) if g in model.seen_groups]


def build_style_pairs(records: Sequence[Mapping[str, Any]], groups: Sequence[str], model: style.StyleModel, n: int,
                      seed: int, source: str = "style_pairs", restyle_share: float = 0.0
                      ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Up to ``n`` style pairs from ``records`` (one split) and their groups; returns (pairs, info).

    Targets are drawn seeded, with the groups balanced (round robin over seen groups), so the
    pairs are not all about the most frequent normal template. A pair is a *swap* (another group's
    impression with the same findings labels) where one exists, else a *restyle* (the impression
    rewritten in another group's template: normal phrase, numbering); ``restyle_share`` > 0 makes
    at least that share of the pairs restyles even where a swap exists (same content, other template:
    what a policy changes when it games the template).
    """
    if not 0.0 <= restyle_share <= 1.0:
        raise ValueError(f"restyle_share must be in [0, 1], got {restyle_share}")
    rng = random.Random(seed)
    seen = _seen(records, groups, model)
    by_sig: dict[frozenset[str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    sigs = []
    for r, g in seen:
        sig = label_signature(r["impression"])
        sigs.append(sig)
        by_sig[sig][g].append(r["impression"].strip())
    per_group: dict[str, list[int]] = defaultdict(list)
    for i, (_, g) in enumerate(seen):
        per_group[g].append(i)
    for idx in per_group.values():
        rng.shuffle(idx)
    order = []
    queues = [per_group[g] for g in model.seen_groups if per_group.get(g)]
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop())
    pairs, info = [], {"swap": 0, "restyle": 0, "no_partner": 0}
    for i in order:
        if len(pairs) >= n:
            break
        record, group = seen[i]
        chosen = record["impression"].strip()
        others = [(g, t) for g, texts in by_sig[sigs[i]].items() if g != group for t in texts if t != chosen]
        if others and info["restyle"] >= restyle_share * (len(pairs) + 1):
            _, rejected = rng.choice(others)
            kind = "swap"
        else:
            targets = [g for g in model.seen_groups if g != group]
            rng.shuffle(targets)
            rejected = next((t for t in (style.restyle(chosen, model, g) for g in targets) if t.strip() != chosen), None)
            kind = "restyle"
            if rejected is None and others:
                _, rejected = rng.choice(others)
                kind = "swap"
            if rejected is None:
                info["no_partner"] += 1
                continue
        info[kind] += 1
        pairs.append(make_pair(record, chosen, rejected, f"style:{kind}", source, style=style.style_prefix(model, group)))
    return pairs, info


FACTUAL_MIXES: tuple[str, ...] = get_args(FactualMix)


def build_factual_pairs(records: Sequence[Mapping[str, Any]], groups: Sequence[str], model: style.StyleModel, n: int,
                        seed: int, source: str | None = None, mix: str = "natural"
                        ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Up to ``n`` factual pairs (reference vs corrupted reference); returns (pairs, info).

    ``mix``: ``natural`` draws each report's corruption type uniformly among those that apply to
    it, so the types that apply to few impressions (dropped finding, laterality, severity) stay
    rare; ``balanced`` tries first the type with the fewest pairs so far, so every type is taken
    wherever it applies (the reward model's train pairs, ``rm.factual_mix``; held-out pairs stay
    natural). ``info["types"]`` counts the pairs of each type.
    """
    if mix not in FACTUAL_MIXES:
        raise ValueError(f"factual pair mix must be one of {FACTUAL_MIXES}, got {mix!r}")
    rng = random.Random(seed)
    name = "corruptions.corrupt_impression"
    seen = _seen(records, groups, model)
    order = list(range(len(seen)))
    rng.shuffle(order)
    pairs, skipped = [], 0
    counts = dict.fromkeys(corruptions.CORRUPTION_TYPES, 0)
    prefer = counts.__getitem__ if mix == "balanced" else None
    for i in order:
        if len(pairs) >= n:
            break
        record, group = seen[i]
        out = corruptions.corrupt_impression(record["impression"].strip(), rng, prefer=prefer)
        if out is None:
            skipped += 1
            continue
        corrupted, kind = out
        counts[kind] += 1
        pairs.append(make_pair(record, record["impression"].strip(), corrupted, f"factual:{kind}", source or name,
                               style=style.style_prefix(model, group)))
    return pairs, {"generator": name, "mix": mix, "no_corruption": skipped, "types": counts}


def build_pairs(records: Sequence[Mapping[str, Any]], model: style.StyleModel, n: int, seed: int,
                split: str, factual_mix: str = "natural", restyle_share: float = 0.0
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``n`` pairs from one split: half style, half factual (seeded); returns (pairs, info with counts).

    ``factual_mix``: how the factual pairs' corruption types are drawn (:func:`build_factual_pairs`);
    ``restyle_share``: least share of restyled style pairs (:func:`build_style_pairs`).
    """
    if any(r.get("split") == "test" for r in records):
        raise ValueError("preference pairs are built from train/validate reports only, never the test split")
    groups = model.assign(records)
    n_style = n // 2
    style_pairs, s_info = build_style_pairs(records, groups, model, n_style, seed, source=f"style_pairs:{split}",
                                            restyle_share=restyle_share)
    fact_pairs, f_info = build_factual_pairs(records, groups, model, n - len(style_pairs), seed + 1,
                                             mix=factual_mix)
    pairs = style_pairs + fact_pairs
    random.Random(seed).shuffle(pairs)
    info = {"split": split, "n": len(pairs), "style": len(style_pairs), "factual": len(fact_pairs),
            "style_info": s_info, "factual_info": f_info}
    if len(pairs) < n:
        logger.warning("%s: asked for %d pairs, built %d (%s)", split, n, len(pairs), info)
    return pairs, info


def _chat_len(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def rm_messages(messages: Sequence[Mapping[str, str]], show_similar: bool = True) -> list[dict[str, str]]:
    """The prompt messages as the reward model reads them (``rm.prompt_similar``).

    With ``show_similar`` false the retrieval context ("Impressions of similar reports": the
    impressions of the nearest training reports) is left out, and the reward model compares the
    answer with the style slot and the findings only. Measured with ``bench/rm_scaling.py`` (640
    pairs): 25% less training time, factual pairs as before, style pairs about 6 points worse
    (the neighbours are often the same reader's reports, so they show the template).
    """
    return [dict(m) for m in messages] if show_similar else without_similar(messages)


def fit_pairs_to_length(pairs: Sequence[Mapping[str, Any]], tokenizer: Any, max_length: int,
                        show_similar: bool = True) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Truncate each pair's findings (token boundary, " [...]") so prompt + longer answer fit ``max_length``.

    TRL's trainers drop over-long pairs silently; here they are shortened and counted, and a pair
    that cannot fit even with empty findings is dropped and counted (``dropped``). Lengths are
    those of the prompt the reward model reads (:func:`rm_messages` with ``show_similar``).
    """
    out, stats = [], {"truncated": 0, "dropped": 0}
    for pair in pairs:
        pair = json.loads(json.dumps(pair))
        answer = max((pair["chosen"], pair["rejected"]), key=len)

        def total(findings: str, p=pair, a=answer) -> int:
            rec = dict(p["record"], findings=findings)
            messages = rm_messages(build_messages(rec, p["style"]), show_similar)
            return _chat_len(tokenizer, messages + [{"role": "assistant", "content": a}])

        if total(pair["record"]["findings"]) > max_length:
            ids = tokenizer(pair["record"]["findings"], add_special_tokens=False)["input_ids"]
            keep = len(ids)
            while keep > 0:
                keep = max(0, keep - max(4, keep // 8))
                text = tokenizer.decode(ids[:keep], skip_special_tokens=True).strip() + " [...]"
                if total(text) <= max_length:
                    break
            if keep == 0:
                stats["dropped"] += 1
                continue
            pair["record"]["findings"] = text
            stats["truncated"] += 1
        out.append(pair)
    return out, stats


def chat_token_ids(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    """Token ids of the chat-templated ``messages`` as the reward model and the RL trainers read them (the rendered
    text tokenized without added special tokens)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def pair_token_ids(tokenizer: Any, pairs: Sequence[Mapping[str, Any]], show_similar: bool = True,
                   cut_at_end: bool = False) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """``(prompt, chosen, rejected)`` token ids of pairs: the chat-templated prompt (generation prompt
    included) and each answer's continuation of it.

    ``cut_at_end`` ends an answer at its end-of-turn token (what the policy learns to generate, DPO);
    otherwise the template's trailing tokens stay (what :class:`RewardScorer` reads: the score is taken
    at the last token of the templated conversation).
    """
    end_ids = set(end_of_turn_token_ids(tokenizer))
    P, C, R = [], [], []
    for i, pair in enumerate(pairs):
        validate_pair(pair, where=f"pair {i}")
        msgs = rm_messages(build_messages(pair["record"], pair["style"]), show_similar)
        prompt = chat_token_ids(tokenizer, msgs, True)
        answers = []
        for answer in (pair["chosen"], pair["rejected"]):
            full = chat_token_ids(tokenizer, msgs + [{"role": "assistant", "content": answer.strip()}], False)
            if full[: len(prompt)] != prompt:
                raise ValueError("the chat template renders the prompt differently with the answer appended")
            comp = full[len(prompt):]
            if cut_at_end:
                cut = next((j for j, t in enumerate(comp) if t in end_ids), None)
                comp = comp if cut is None else comp[: cut + 1]
            answers.append(comp)
        P.append(prompt)
        C.append(answers[0])
        R.append(answers[1])
    return P, C, R


def rm_rows(tokenizer: Any, pairs: Sequence[Mapping[str, Any]], show_similar: bool = True) -> list[trunk.Row]:
    """Prefix-shared rows of pairs for the reward model, tokenized as :class:`RewardScorer` reads them
    (prompt once, then both templated answers; the score at each branch's last token)."""
    P, C, R = pair_token_ids(tokenizer, pairs, show_similar, cut_at_end=False)
    return trunk.pair_rows(P, C, R, [{"report_id": p.get("report_id"), "pair_type": p.get("pair_type")}
                                     for p in pairs])


def score_pairs_rows(model: Any, tokenizer: Any, pairs: Sequence[Mapping[str, Any]], show_similar: bool = True,
                     max_batch_tokens: int = 4096) -> pd.DataFrame:
    """:func:`score_pairs` of a LLaMA-type reward model from prefix-shared rows: the same scores (to ~1e-5), with
    each pair's prompt computed once and the shared system prompt once per batch (about half the compute)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = trunk.pair_score_rows(model, rm_rows(tokenizer, pairs, show_similar), max_batch_tokens, pad)
    chosen, rejected = scores[:, 0].tolist(), scores[:, 1].tolist()
    return pd.DataFrame({
        "report_id": [p["report_id"] for p in pairs],
        "pair_type": [p["pair_type"] for p in pairs],
        "family": [p["pair_type"].split(":", 1)[0] for p in pairs],
        "reward_chosen": chosen, "reward_rejected": rejected,
        "margin": [c - r for c, r in zip(chosen, rejected)],
    })


def score_held_out(model: Any, tokenizer: Any, pairs: Sequence[Mapping[str, Any]], cfg: RewardStageConfig
                   ) -> pd.DataFrame:
    """Notebook 03's held-out scores: :func:`score_pairs_rows` for LLaMA-type models, else :class:`RewardScorer`."""
    try:
        trunk.check_supported(model)
    except ValueError:
        return score_pairs(RewardScorer(model, tokenizer, batch_size=cfg.per_device_batch,
                                        show_similar=cfg.prompt_similar), pairs)
    return score_pairs_rows(model, tokenizer, pairs, cfg.prompt_similar)


#: Trainer arguments for length-grouped batches over :func:`length_grouped_dataset`'s "length"
#: column (transformers' ``LengthGroupedSampler``). ``remove_unused_columns=False`` keeps that
#: column until the sampler is built; TRL's preference collators read only the token ids.
LENGTH_GROUPED: dict[str, Any] = {"train_sampling_strategy": "group_by_length", "length_column_name": "length",
                                  "remove_unused_columns": False}


def length_grouped_dataset(pairs: Sequence[Mapping[str, Any]], tokenizer: Any, show_similar: bool = True):
    """TRL preference dataset (``prompt``, ``chosen``, ``rejected``) of ``pairs`` with a ``length`` column.

    ``length`` is the longer templated prompt + answer in tokens, for :data:`LENGTH_GROUPED`
    batches: random batches of these 200-300-token pairs compute ~23% padding, length-grouped
    ones ~4% (measured on 640 train pairs). ``show_similar`` false drops the retrieval context
    from the prompts (:func:`rm_messages`).
    """
    dataset = to_trl_dataset(pairs).remove_columns(["report_id", "pair_type"])
    if not show_similar:
        dataset = dataset.map(lambda row: {"prompt": without_similar(row["prompt"])})
    lengths = [max(_chat_len(tokenizer, row["prompt"] + row[answer]) for answer in ("chosen", "rejected"))
               for row in dataset]
    return dataset.add_column("length", lengths)


# --------------------------------------------------------------------------- model


def reward_model_from_causal_lm(causal_lm: Any, seed: int) -> Any:
    """A ``num_labels=1`` sequence-classification model sharing ``causal_lm``'s backbone weights.

    The score head is a fresh seeded linear layer; the backbone (e.g. the merged SFT model) is
    copied, so the reward model starts from what the policy knows.
    """
    from transformers import AutoModelForSequenceClassification

    config = causal_lm.config.__class__.from_dict(causal_lm.config.to_dict())
    config.num_labels = 1
    config.problem_type = "regression"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        rm = AutoModelForSequenceClassification.from_config(config, dtype=next(causal_lm.parameters()).dtype)
    backbone = causal_lm.get_decoder() if hasattr(causal_lm, "get_decoder") else causal_lm.model
    missing, unexpected = rm.model.load_state_dict(backbone.state_dict(), strict=False)
    if unexpected or [m for m in missing if "rotary" not in m]:
        raise RuntimeError(f"backbone weights do not fit the reward model (missing {missing}, unexpected {unexpected})")
    rm.config.pad_token_id = causal_lm.config.pad_token_id
    return rm.to(next(causal_lm.parameters()).device)


def lora_layers(model: Any, last: int | None) -> list[int] | None:
    """Indices of the last ``last`` decoder layers (None: all layers)."""
    if last is None:
        return None
    n = model.config.get_text_config().num_hidden_layers
    return list(range(max(0, n - last), n))


@dataclass
class RewardResult:
    """What :func:`train_reward_model` returns (also ``reward_result.json``)."""

    adapter_dir: str
    global_step: int
    loss_history: list[dict[str, float]]
    wall_time_s: float
    n_train_pairs: int
    n_trainable_params: int
    n_params: int
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return asdict(self)


def train_reward_model(causal_lm: Any, tokenizer: Any, train_pairs: Sequence[Mapping[str, Any]],
                       cfg: RewardStageConfig, output_dir: str | Path, seed: int,
                       log: Callable[[str], None] | None = None, callbacks: Sequence[Any] = ()
                       ) -> tuple[Any, RewardResult]:
    """Train the reward model on ``train_pairs`` with ``cfg.trainer``; returns (trained peft model, result).

    The adapter (LoRA + the ``score`` head via ``modules_to_save``) is saved to
    ``<output_dir>/adapter``. ``callbacks``: extra ``TrainerCallback`` objects (trl trainer, as in
    :func:`radimpress_lib.train.sft.train_sft`).
    """
    from peft import LoraConfig
    from trl import RewardConfig, RewardTrainer


    log = log or default_log
    if not train_pairs:
        raise ValueError("no train pairs for the reward model")
    if next(causal_lm.parameters()).dtype != torch.float32 and not torch.cuda.is_available():
        raise ValueError("reward-model training on CPU is fp32 only")
    if cfg.trainer == "cached":
        return _train_reward_model_cached(causal_lm, tokenizer, train_pairs, cfg, output_dir, seed, log)
    configure_cpu_threads()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rm = reward_model_from_causal_lm(causal_lm, seed)
    peft_config = LoraConfig(
        task_type="SEQ_CLS", r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], layers_to_transform=lora_layers(rm, cfg.lora_last_layers),
        modules_to_save=["score"], bias="none",
    )
    on_cuda = torch.cuda.is_available()
    args = RewardConfig(
        output_dir=str(output_dir / "checkpoints"), seed=seed, learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, per_device_train_batch_size=cfg.per_device_batch,
        lr_scheduler_type="linear", warmup_steps=0.1, logging_steps=cfg.logging_steps, logging_first_step=True,
        save_strategy="no", report_to="none", disable_tqdm=True, max_length=cfg.max_length,
        center_rewards_coefficient=cfg.center_rewards, bf16=bool(on_cuda and torch.cuda.is_bf16_supported()),
        dataloader_num_workers=0, dataloader_pin_memory=on_cuda, activation_checkpointing=False,
        **LENGTH_GROUPED,
    )
    dataset = length_grouped_dataset(train_pairs, tokenizer, cfg.prompt_similar)
    tokenizer.padding_side = "right"
    with no_progress_bars():
        trainer = RewardTrainer(model=rm, args=args, train_dataset=dataset, processing_class=tokenizer,
                                peft_config=peft_config,
                                callbacks=[TextProgressCallback(None, log, prefix="rm"), *callbacks])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    kept = len(trainer.train_dataset)
    if kept != len(train_pairs):
        raise ValueError(f"RewardTrainer dropped {len(train_pairs) - kept} pairs longer than rm.max_length="
                         f"{cfg.max_length}; fit them first with reward.fit_pairs_to_length")
    n_params = sum(p.numel() for p in trainer.model.parameters())
    n_train = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    log(f"rm: {len(train_pairs)} pairs, trainable {n_train:,}/{n_params:,} params "
        f"(LoRA layers {lora_layers(rm, cfg.lora_last_layers) or 'all'} + score head)")
    t0 = time.perf_counter()
    with no_progress_bars():
        trainer.train()
    wall = time.perf_counter() - t0
    adapter_dir = output_dir / "adapter"
    with no_progress_bars():
        trainer.save_model(str(adapter_dir))
    history = [{k: float(h[k]) for k in ("step", "loss", "accuracy", "margin", "learning_rate") if k in h}
               for h in trainer.state.log_history if "loss" in h]
    result = RewardResult(str(adapter_dir), int(trainer.state.global_step), history, wall, len(train_pairs),
                          n_train, n_params, settings={**cfg.model_dump(), "seed": seed})
    write_json(output_dir / "reward_result.json", result.to_dict())
    log(f"rm: done, {result.global_step} steps in {wall:.0f}s; adapter saved to {adapter_dir}")
    model = trainer.model
    model.eval()
    return model, result


def check_pair_lengths(rows: Sequence[trunk.Row], max_length: int, what: str) -> None:
    """Refuse pairs whose prompt + longer answer exceeds ``max_length`` (fit them first)."""
    long = [i for i, r in enumerate(rows)
            if max(r.branch.count(0) + r.branch.count(b) for b in (1, 2)) > max_length]
    if long:
        raise ValueError(f"{len(long)} {what} pairs are longer than max_length={max_length} tokens (first: pair "
                         f"{long[0]}); fit them first with reward.fit_pairs_to_length")


def _train_reward_model_cached(causal_lm: Any, tokenizer: Any, pairs: Sequence[Mapping[str, Any]],
                               cfg: RewardStageConfig, output_dir: str | Path, seed: int,
                               log: Callable[[str], None]) -> tuple[Any, RewardResult]:
    """The cached trainer (:func:`radimpress_lib.train.cached.train_rows`): same model, loss and adapter layout as
    TRL's ``RewardTrainer`` path."""
    rm = reward_model_from_causal_lm(causal_lm, seed)
    rows = rm_rows(tokenizer, pairs, cfg.prompt_similar)
    check_pair_lengths(rows, cfg.max_length, "reward-model")
    settings = cached.rm_settings(cfg, seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    run = cached.train_rows(rm, rows, settings, output_dir, cached.rm_loss(cfg.center_rewards), task_type="SEQ_CLS",
                            modules_to_save=["score"], tokenizer=tokenizer, pad_id=pad, log=log)
    r = run.result
    history = [{k: float(h[k]) for k in ("step", "loss", "accuracy", "margin", "learning_rate") if k in h}
               for h in r.loss_history]
    result = RewardResult(r.final_dir, r.global_step, history, r.wall_time_s, len(pairs), r.n_trainable_params,
                          r.n_params, settings={**cfg.model_dump(), "seed": seed, "trunk_layer": r.trunk_layer,
                                                "cache_build_s": r.cache_build_s, "train_s": r.train_s,
                                                "epochs_done": r.epochs_done})
    write_json(Path(output_dir) / "reward_result.json", result.to_dict())
    return run.model, result


def load_reward_model(causal_lm: Any, adapter_dir: str | Path, seed: int = 0) -> Any:
    """The trained reward model: ``causal_lm``'s backbone + the saved LoRA and score head (merged), eval mode."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir}: no reward-model adapter; run notebook 03 first")
    rm = reward_model_from_causal_lm(causal_lm, seed)
    model = PeftModel.from_pretrained(rm, str(adapter_dir)).merge_and_unload()
    model.eval()
    return model


# --------------------------------------------------------------------------- scoring


class RewardScorer:
    """Scores (prompt messages, impression) with a reward model, batched, in the training format."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 8, max_length: int | None = None,
                 show_similar: bool = True) -> None:
        self.model, self.tokenizer, self.batch_size, self.max_length = model, tokenizer, batch_size, max_length
        self.show_similar = show_similar  # as the model was trained: RewardStageConfig.prompt_similar

    def texts(self, prompts: Sequence[list[dict[str, str]]], completions: Sequence[str]) -> list[str]:
        """The chat-templated conversations the reward model reads (as in TRL's RewardTrainer)."""
        return [self.tokenizer.apply_chat_template(rm_messages(p, self.show_similar)
                                                   + [{"role": "assistant", "content": c.strip()}],
                                                   tokenize=False) for p, c in zip(prompts, completions)]

    @torch.inference_mode()
    def __call__(self, prompts: Sequence[list[dict[str, str]]], completions: Sequence[str], *,
                 share_prompts: bool = False) -> list[float]:
        """One score per (prompt, completion), in input order.

        Texts are batched by token length (longest first), so a batch pads to about its own
        length: the same scores as input-order batches (tested), with less padding computed.
        ``share_prompts`` (LLaMA-type reward models, no ``max_length``): completions of the same prompt
        are scored as branches of one row (:func:`radimpress_lib.llm.trunk.group_rows`), the prompt
        computed once: the same scores to ~1e-5 (tested), about ``G`` times less compute for RL groups.
        """
        if share_prompts and not self.max_length:
            try:
                trunk.check_supported(self.model)
            except ValueError:
                pass
            else:
                return self._shared_prompt_scores(prompts, completions)
        texts = self.texts(prompts, completions)
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        encoded = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        if self.max_length:
            encoded = [e[-self.max_length:] for e in encoded]
        order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
        out: list[float] = [math.nan] * len(encoded)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(idx):  # right padding: the score is read at the last non-pad token
                ids[row, :len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, :len(encoded[i])] = 1
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for i, x in zip(idx, logits[:, 0].float().cpu()):
                out[i] = float(x)
        return out

    def _shared_prompt_scores(self, prompts: Sequence[list[dict[str, str]]], completions: Sequence[str]
                              ) -> list[float]:
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(json.dumps(p, sort_keys=True), []).append(i)
        prompt_ids, answers, index = [], [], []
        for idx in groups.values():
            msgs = rm_messages(prompts[idx[0]], self.show_similar)
            head = chat_token_ids(self.tokenizer, msgs, True)
            comps = []
            for i in idx:
                full = chat_token_ids(self.tokenizer, msgs + [{"role": "assistant", "content": completions[i].strip()}],
                                 False)
                if full[: len(head)] != head:
                    raise ValueError("the chat template renders the prompt differently with the answer appended")
                comps.append(full[len(head):])
            prompt_ids.append(head)
            answers.append(comps)
            index.append(idx)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out: list[float] = [math.nan] * len(completions)
        for idx, scores in zip(index, trunk.branch_scores(self.model, trunk.group_rows(prompt_ids, answers),
                                                          pad_id=pad)):
            for i, x in zip(idx, scores.tolist()):
                out[i] = float(x)
        return out


def score_pairs(scorer: RewardScorer, pairs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Reward of chosen and rejected for every pair: one row per pair with ``margin`` = chosen - rejected."""
    prompts = [build_messages(p["record"], p["style"]) for p in pairs]
    chosen = scorer(prompts, [p["chosen"] for p in pairs])
    rejected = scorer(prompts, [p["rejected"] for p in pairs])
    return pd.DataFrame({
        "report_id": [p["report_id"] for p in pairs],
        "pair_type": [p["pair_type"] for p in pairs],
        "family": [p["pair_type"].split(":", 1)[0] for p in pairs],
        "reward_chosen": chosen, "reward_rejected": rejected,
        "margin": [c - r for c, r in zip(chosen, rejected)],
    })


def pairwise_accuracy(scores: pd.DataFrame) -> pd.DataFrame:
    """Pairwise accuracy (chosen scored above rejected) and mean margin by family and by pair type."""
    rows = []
    for level in ("family", "pair_type"):
        for name, g in scores.groupby(level):
            rows.append({"level": level, "name": name, "n": len(g), "accuracy": float((g["margin"] > 0).mean()),
                         "mean_margin": float(g["margin"].mean())})
    rows.append({"level": "all", "name": "all", "n": len(scores), "accuracy": float((scores["margin"] > 0).mean()),
                 "mean_margin": float(scores["margin"].mean())})
    return pd.DataFrame(rows)


def accuracy_summary(scores: pd.DataFrame) -> dict[str, float | None]:
    """``{"factual_pair_acc", "style_pair_acc", "n_factual", "n_style"}`` for metrics.json."""
    out: dict[str, float | None] = {}
    for fam in ("factual", "style"):
        g = scores[scores["family"] == fam]
        out[f"{fam}_pair_acc"] = float((g["margin"] > 0).mean()) if len(g) else None
        out[f"n_{fam}"] = len(g)
    return out


def plot_margins(scores: pd.DataFrame):
    """Histogram of reward margins (chosen - rejected) per pair family; right of 0 = ranked correctly."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    for fam, g in scores.groupby("family"):
        ax.hist(g["margin"], bins=20, alpha=0.6, label=f"{fam} (acc {(g['margin'] > 0).mean():.2f}, n={len(g)})")
    ax.axvline(0, color="grey", lw=1, ls="--")
    ax.set_xlabel("reward(chosen) - reward(rejected)")
    ax.set_ylabel("held-out pairs")
    ax.set_title("Reward margins on held-out validation pairs")
    ax.legend()
    fig.tight_layout()
    return fig


def to_trl_dataset(pairs: Sequence[Mapping[str, Any]]) -> datasets.Dataset:
    """TRL conversational preference dataset: ``prompt`` (system+user messages), ``chosen``, ``rejected``.

    Extra columns ``report_id`` and ``pair_type`` are kept for per-type evaluation.
    """
    rows: dict[str, list[Any]] = {"prompt": [], "chosen": [], "rejected": [], "report_id": [], "pair_type": []}
    for i, pair in enumerate(pairs):
        validate_pair(pair, where=f"pair {i}")
        rows["prompt"].append(build_messages(pair["record"], pair["style"]))
        rows["chosen"].append([{"role": "assistant", "content": pair["chosen"].strip()}])
        rows["rejected"].append([{"role": "assistant", "content": pair["rejected"].strip()}])
        rows["report_id"].append(pair["report_id"])
        rows["pair_type"].append(pair["pair_type"])
    return datasets.Dataset.from_dict(rows)
