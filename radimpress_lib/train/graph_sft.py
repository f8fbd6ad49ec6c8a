"""Graph-conditioned SFT: LoRA adapter and GNN soft-prompt encoder trained jointly.

The ``gnn`` variant of the entity-graph ablation (notebook 09). Each training example is
the usual completion-only chat example (:func:`radimpress_lib.llm.prompting.build_sft_dataset`,
same prompt context as the run's SFT model) plus the entity graph of its findings
(:func:`radimpress_lib.clinical.graph.extract_graph_cached`), which
:class:`radimpress_lib.llm.graph_encoder.GraphEncoder` turns into ``graph.n_prefix`` vectors
prepended to the prompt's token embeddings.

TRL's ``SFTTrainer`` feeds token ids, not embeddings plus a graph, so this is a small
training loop with the same settings as :func:`radimpress_lib.train.sft.train_sft`: AdamW,
the ``sft.lr_scheduler`` schedule with ``sft.warmup_ratio`` warmup, gradient clipping,
gradient accumulation with the loss averaged over the labelled tokens of the whole
accumulated batch, length-grouped batches (TRL's ``group_by_length`` scheme: shuffled
mega-batches of 50 batches, sorted by length) and the sparse LM-head loss
(:func:`radimpress_lib.train.sft.completion_loss`). The encoder has its own learning rate
(``graph.encoder_lr``). LoRA only (``sft.method='lora'``); the run writes no mid-run
checkpoints, so an interrupted run starts again (it is an ablation of a few minutes).

Saved to ``<output_dir>/adapter/`` (peft adapter), ``graph_encoder.pt`` (encoder state)
and ``graph_encoder.json`` (its shape); :func:`load_graph_prefix_model` rebuilds the
model for :func:`radimpress_lib.llm.generation.generate_impressions`.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from radimpress_lib.clinical import graph as G
from radimpress_lib.core.config import GraphStageConfig, SFTStageConfig
from radimpress_lib.core.jsonio import write_json
from radimpress_lib.llm.callbacks import fmt_seconds, quiet_library_warnings
from radimpress_lib.llm.checkpoints import apply_adapter
from radimpress_lib.llm.graph_encoder import GraphEncoder, GraphPrefixModel, encode_graphs
from radimpress_lib.llm.models import configure_cpu_threads
from radimpress_lib.llm.prompting import IGNORE_INDEX, build_sft_dataset
from radimpress_lib.train.sft import SFTResult, _check_precision, completion_loss, make_lora_config

__all__ = ["length_grouped_batches", "load_graph_prefix_model", "train_graph_prefix_sft"]

LogFn = Callable[[str], None]
ENCODER_FILE = "graph_encoder.pt"
ENCODER_CONFIG = "graph_encoder.json"


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: random.Random,
                           mega: int = 50) -> list[list[int]]:
    """One epoch of batches: shuffled, then sorted by length (longest first) within mega-batches.

    ``mega=1`` gives plain shuffled batches (no length grouping).
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    for start in range(0, len(order), mega * batch_size):
        chunk = sorted(order[start: start + mega * batch_size], key=lambda i: -lengths[i])
        batches.extend(chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size))
    return batches


def _right_pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
    return out


def _graphs(records: Sequence[Mapping[str, Any]]) -> list[G.EntityGraph]:
    return [G.extract_graph_cached(r["findings"]) for r in records]


def _batch_loss(model: GraphPrefixModel, examples: Mapping[str, list], graphs: Sequence[G.EntityGraph],
                idx: Sequence[int], tokenizer: Any, max_nodes: int, pad_id: int,
                num_items: int | None) -> tuple[torch.Tensor, int, int]:
    ids = _right_pad([examples["input_ids"][i] for i in idx], pad_id)
    labels = _right_pad([examples["labels"][i] for i in idx], IGNORE_INDEX)
    mask = _right_pad([[1] * len(examples["input_ids"][i]) for i in idx], 0)
    batch = encode_graphs([graphs[i] for i in idx], tokenizer, max_nodes=max_nodes)
    inputs = model._inputs(ids, mask, batch, labels)
    labels = inputs.pop("labels")
    loss, _, tgt = completion_loss(model.lm, inputs, labels, num_items)
    return loss, int(mask.sum()), int(tgt.numel())


def train_graph_prefix_sft(
    model: Any,
    tokenizer: Any,
    train_records: Sequence[Mapping[str, Any]],
    eval_records: Sequence[Mapping[str, Any]] | None,
    sft_cfg: SFTStageConfig,
    graph_cfg: GraphStageConfig,
    output_dir: str | Path,
    seed: int,
    *,
    log: LogFn | None = None,
) -> SFTResult:
    """Train a LoRA adapter and a graph encoder jointly on ``train_records``.

    Args:
        model: the base causal LM (fp32 on CPU), without adapters.
        tokenizer: its tokenizer (chat template).
        train_records / eval_records: canonical records with the prompt context already
            added (:func:`radimpress_lib.llm.retrieval.with_prompt_context`); the graph is
            extracted from each record's ``findings``.
        sft_cfg: the run's SFT settings (steps, batch, LoRA, learning rate, schedule).
        graph_cfg: encoder shape and learning rate (``graph_*``).
        output_dir: where ``adapter/``, the encoder files and ``sft_result.json`` go.
        seed: seed of LoRA/encoder init and data order.

    Returns:
        :class:`radimpress_lib.train.sft.SFTResult` (``method='lora+gnn'``).
    """
    from peft import get_peft_model
    from transformers import get_scheduler

    log = log or print
    if sft_cfg.method != "lora":
        raise ValueError(f"the graph-prefix variant trains a LoRA adapter; sft.method={sft_cfg.method!r}")
    _check_precision(model, torch.cuda.is_available())
    threads = configure_cpu_threads(sft_cfg.num_threads)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    rng = random.Random(seed)

    k = graph_cfg.n_prefix
    max_len = sft_cfg.max_seq_len - k  # the soft prompt takes k positions of the context
    train_rows = list(train_records)
    train_ex, stats = build_sft_dataset(tokenizer, train_rows, max_len)
    train_ex = train_ex.to_dict()
    train_graphs = _graphs(train_rows)
    eval_rows = list(eval_records or [])
    eval_ex = build_sft_dataset(tokenizer, eval_rows, max_len)[0].to_dict() if eval_rows else None
    eval_graphs = _graphs(eval_rows)
    if stats.n_truncated:
        log(f"graph-sft: {stats.n_truncated}/{stats.n_examples} train examples had their findings truncated")

    with quiet_library_warnings():
        peft_model = get_peft_model(model, make_lora_config(sft_cfg))
    encoder = GraphEncoder(model.config.hidden_size, d_node=graph_cfg.d_node,
                           n_layers=graph_cfg.n_layers, n_prefix=k)
    wrapped = GraphPrefixModel(peft_model, encoder, max_nodes=graph_cfg.max_nodes)
    lora_params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": lora_params, "lr": sft_cfg.learning_rate},
         {"params": list(encoder.parameters()), "lr": graph_cfg.encoder_lr}],
        weight_decay=sft_cfg.weight_decay)
    micro, accum = sft_cfg.per_device_batch, sft_cfg.grad_accum
    steps_per_epoch = math.ceil(len(train_rows) / (micro * accum))
    max_steps = sft_cfg.max_steps if sft_cfg.max_steps > 0 else math.ceil(sft_cfg.epochs * steps_per_epoch)
    scheduler = get_scheduler(sft_cfg.lr_scheduler, optimizer,
                              num_warmup_steps=math.ceil(sft_cfg.warmup_ratio * max_steps),
                              num_training_steps=max_steps)
    lengths = [len(x) for x in train_ex["input_ids"]]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n_trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    n_params = sum(p.numel() for p in wrapped.parameters())
    log(f"graph-sft: LoRA + GNN encoder ({sum(p.numel() for p in encoder.parameters()):,} encoder params), "
        f"trainable {n_trainable:,}/{n_params:,}, {len(train_rows)} examples, {max_steps} steps of "
        f"{micro}x{accum}, threads={threads}")

    queue: list[list[int]] = []
    loss_history: list[dict[str, float]] = []
    tokens = completion_tokens = 0
    wrapped.train()
    t0 = time.perf_counter()
    for step in range(1, max_steps + 1):
        groups = []
        for _ in range(accum):
            if not queue:
                queue = length_grouped_batches(lengths, micro, rng, mega=50 if sft_cfg.group_by_length else 1)
            groups.append(queue.pop(0))
        n_items = sum(1 for g in groups for i in g for t in train_ex["labels"][i][1:] if t != IGNORE_INDEX)
        step_loss = 0.0
        for idx in groups:
            loss, n_tok, n_comp = _batch_loss(wrapped, train_ex, train_graphs, idx, tokenizer,
                                              graph_cfg.max_nodes, pad_id, n_items)
            loss.backward()
            step_loss += float(loss.detach())
            tokens += n_tok
            completion_tokens += n_comp
        grad_norm = float(torch.nn.utils.clip_grad_norm_(wrapped.trainable_parameters(), sft_cfg.max_grad_norm))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step == 1 or step % sft_cfg.logging_steps == 0 or step == max_steps:
            elapsed = time.perf_counter() - t0
            loss_history.append({"step": float(step), "epoch": step / steps_per_epoch, "loss": step_loss,
                                 "learning_rate": scheduler.get_last_lr()[0], "grad_norm": grad_norm})
            log(f"graph-sft step {step}/{max_steps} | loss {step_loss:.4f} | lr {scheduler.get_last_lr()[0]:.2e} | "
                f"{tokens / elapsed:.0f} tok/s | {fmt_seconds(elapsed)} elapsed")
    wall = time.perf_counter() - t0

    final_eval = None
    if eval_ex is not None:
        wrapped.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(eval_rows), micro):
                idx = list(range(start, min(start + micro, len(eval_rows))))
                loss, _, n_comp = _batch_loss(wrapped, eval_ex, eval_graphs, idx, tokenizer,
                                              graph_cfg.max_nodes, pad_id, None)
                total += float(loss) * n_comp
                n += n_comp
        final_eval = total / max(n, 1)
        log(f"graph-sft: eval_loss {final_eval:.4f}")

    final_dir = output_dir / "adapter"
    peft_model.save_pretrained(str(final_dir))
    tokenizer.save_pretrained(str(final_dir))
    torch.save(encoder.state_dict(), output_dir / ENCODER_FILE)
    shape = {"d_model": model.config.hidden_size, "d_node": graph_cfg.d_node,
             "n_layers": graph_cfg.n_layers, "n_prefix": k, "max_nodes": graph_cfg.max_nodes}
    write_json(output_dir / ENCODER_CONFIG, shape)
    result = SFTResult(
        output_dir=str(output_dir), final_dir=str(final_dir), method="lora+gnn", global_step=max_steps,
        max_steps=max_steps, loss_history=loss_history, eval_history=[], final_train_loss=loss_history[-1]["loss"],
        final_eval_loss=final_eval, train_tokens=tokens, completion_tokens=completion_tokens, wall_time_s=wall,
        tokens_per_s=tokens / wall if wall > 0 else math.nan, resumed_from=None, n_trainable_params=n_trainable,
        n_params=n_params, torch_threads=threads, device="cuda" if torch.cuda.is_available() else "cpu",
        dataset_stats=stats.as_dict(),
        settings={**sft_cfg.model_dump(), **graph_cfg.model_dump(), "seed": seed},
    )
    write_json(output_dir / "sft_result.json", result.to_dict())
    log(f"graph-sft: done, {max_steps} steps, {tokens:,} tokens in {fmt_seconds(wall)} "
        f"({result.tokens_per_s:.0f} tok/s); saved to {output_dir}")
    return result


def load_graph_prefix_model(base_model: Any, folder: str | Path) -> GraphPrefixModel:
    """The trained graph-prefix model of ``folder`` (adapter merged into ``base_model``), in eval mode."""
    folder = Path(folder)
    missing = [p for p in (folder / "adapter", folder / ENCODER_FILE, folder / ENCODER_CONFIG) if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{folder}: no trained graph-prefix model (missing {[str(p) for p in missing]})")
    shape = json.loads((folder / ENCODER_CONFIG).read_text(encoding="utf-8"))
    if shape["d_model"] != base_model.config.hidden_size:
        raise ValueError(f"{folder}: encoder built for hidden size {shape['d_model']}, "
                         f"base model has {base_model.config.hidden_size}")
    lm = apply_adapter(base_model, folder / "adapter", merge=True)
    encoder = GraphEncoder(shape["d_model"], d_node=shape["d_node"], n_layers=shape["n_layers"],
                           n_prefix=shape["n_prefix"])
    encoder.load_state_dict(torch.load(folder / ENCODER_FILE, map_location="cpu", weights_only=True))
    model = GraphPrefixModel(lm, encoder.to(next(lm.parameters()).device), max_nodes=shape["max_nodes"])
    return model.eval()
