"""Batched impression generation (greedy or beam search) and predictions JSONL.

* prompts come from :func:`radimpress_lib.llm.prompting.build_prompt` (the same layout the
  model was fine-tuned on);
* prompts are sorted by token length (longest first) and cut into batches, so a batch
  holds prompts of similar length and little padding; results are put back in input
  order;
* batches are **left**-padded (decoder-only models continue from the last position),
  with an attention mask, so a batched greedy decode equals a one-by-one decode;
* decoding stops at the chat end-of-turn token (``<|im_end|>``) or ``eos``, or after
  ``gen.max_new_tokens`` (such outputs are counted as not stopped);
* the prompts' longest common token prefix (chat template + system prompt + constant
  fields, ~50 tokens of ~130 for SmolLM2) is prefilled **once** and its KV cache reused by
  every batch (``gen.prefix_cache``; greedy only): prefill is most of the work of short
  impressions on CPU, and the outputs are the same (the suffixes are left-padded *after*
  the prefix; positions come from the attention mask, so they are unchanged);
* ``torch.inference_mode``, fp32 on CPU, progress as text lines (reports/s, ETA);
* ``token_stats=True`` (greedy only) also records, per generated token, its log-probability and
  the entropy of the next-token distribution (:class:`TokenStatsRecorder`, a logits processor
  that reads the scores and returns them unchanged, so the drafts are the same); rows then carry
  ``token_logprobs`` and ``token_entropies`` (the model's own uncertainty, a review-triage signal,
  :mod:`radimpress_lib.evaluation.triage`). :func:`score_drafts` gives the same numbers for drafts
  that were not decoded greedily (teacher forcing).

Each prediction row of the JSONL file holds ``report_id, prediction, reference, model,
params_hash`` (plus ``n_prompt_tokens, n_new_tokens, stopped``); ``params_hash`` is the
sha256 of the sorted-key JSON of the generation settings and the model settings, so
rows produced with other settings are never mixed up.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from radimpress_lib.clinical.graph import extract_graph_cached
from radimpress_lib.core.config import GenerationStageConfig
from radimpress_lib.core.jsonl import iter_jsonl_rows, write_jsonl_atomic
from radimpress_lib.llm.graph_encoder import GraphPrefixModel, encode_graphs
from radimpress_lib.llm.prompting import build_prompt, cut_at_end, end_of_turn_token_ids, pad_token_id

__all__ = [
    "GenerationResult",
    "GenerationStageConfig",
    "cache_kwarg",
    "decode_candidates",
    "generate_impressions",
    "left_pad",
    "params_hash",
    "read_predictions_jsonl",
    "score_drafts",
    "TokenStatsRecorder",
    "write_predictions_jsonl",
    "write_system_predictions",
]

logger = logging.getLogger("radimpress.generation")

LogFn = Callable[[str], None]

PREDICTION_FIELDS = ("report_id", "prediction", "reference", "model", "params_hash")


def params_hash(gen_config: GenerationStageConfig | Mapping[str, Any], model_config: Mapping[str, Any]) -> str:
    """sha256 (hex) of the sorted-key JSON of ``{"generation": ..., "model": ...}``."""
    gen = gen_config.model_dump() if isinstance(gen_config, GenerationStageConfig) else dict(gen_config)
    gen.pop("log_every", None)  # progress logging does not change the predictions
    gen.pop("prefix_cache", None)  # nor does reusing the prefix's KV cache (tested: same tokens)
    blob = json.dumps({"generation": gen, "model": dict(model_config)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class GenerationResult:
    """Predictions (input order) and timing of one :func:`generate_impressions` call."""

    predictions: list[dict[str, Any]]
    params_hash: str
    wall_time_s: float
    reports_per_s: float
    new_tokens: int
    n_not_stopped: int
    n_batches: int
    padding_ratio: float
    prefix_tokens: int = 0
    path: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Everything but the predictions (JSON-serialisable)."""
        out = asdict(self)
        out.pop("predictions")
        out["n_reports"] = len(self.predictions)
        return out


def default_log(line: str) -> None:
    if logger.isEnabledFor(logging.INFO) and logger.hasHandlers():
        logger.info(line)
    else:
        print(line, flush=True)


def fmt_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def left_pad(seqs: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, width]`` token ids left-padded with ``pad_id`` and their attention mask (1 on real tokens)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[row, width - len(s):] = 1
    return ids, mask


def common_prefix_length(seqs: Sequence[Sequence[int]], min_len: int = 8) -> int:
    """Length of the longest token prefix shared by every sequence, leaving each at least one token.

    Returns 0 when the shared prefix is shorter than ``min_len`` (not worth a cache).
    """
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs) - 1
    k = 0
    while k < n and all(s[k] == first[k] for s in seqs):
        k += 1
    return k if k >= min_len else 0


def cache_kwarg(model: Any) -> str:
    """Name of the KV-cache argument of ``model``'s forward and ``generate``.

    transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name warns and goes in
    5.40); earlier 5.x releases only know ``past_key_values``.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper passes it on
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


class TokenStatsRecorder:
    """A logits processor that records each decoding step's greedy log-probability and entropy.

    Placed after every other processor, it sees the scores greedy search takes the argmax of: the
    chosen token's log-probability is the maximum of their log-softmax. It returns the scores
    unchanged (the drafts are those of a plain greedy decode). ``steps`` holds one
    ``(logprob, entropy)`` pair of ``[batch]`` tensors per generated position; :meth:`row` cuts
    one sequence's values to its length.
    """

    def __init__(self) -> None:
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(scores.float(), dim=-1)
        finite = torch.where(torch.isfinite(logp), logp, torch.zeros_like(logp))
        entropy = -(logp.exp() * finite).sum(dim=-1)
        self.steps.append((logp.max(dim=-1).values.cpu(), entropy.cpu()))
        return scores

    def row(self, index: int, n_tokens: int) -> tuple[list[float], list[float]]:
        """Log-probabilities and entropies of the first ``n_tokens`` generated tokens of batch row ``index``."""
        steps = self.steps[:n_tokens]
        return ([round(float(lp[index]), 4) for lp, _ in steps], [round(float(h[index]), 4) for _, h in steps])


def _prefix_cache(model: Any, prefix: Sequence[int], device: torch.device) -> Any:
    """KV cache of ``prefix`` (batch 1)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([list(prefix)], device=device), use_cache=True, **{cache_kwarg(model): cache})
    return cache


def generate_impressions(
    model: Any,
    tokenizer: Any,
    records: Iterable[Mapping[str, Any]],
    cfg: GenerationStageConfig,
    *,
    model_name: str,
    model_config: Mapping[str, Any] | None = None,
    styles: Sequence[str | None] | None = None,
    out_path: str | Path | None = None,
    log: LogFn | None = None,
    token_stats: bool = False,
) -> GenerationResult:
    """Generate one impression per record.

    Args:
        model: a causal LM (a peft model with adapters works too), fp32 on CPU, or a
            :class:`radimpress_lib.llm.graph_encoder.GraphPrefixModel` (the findings' graph is
            extracted from each record and encoded as its soft prompt; no prefix cache).
        tokenizer: its tokenizer (chat template; pad token or eos used for padding).
        records: canonical records (``report_id``, ``findings``; ``impression`` becomes
            the ``reference`` when present).
        cfg: batch size, max new tokens, beams.
        model_name: written to every row (``model``).
        model_config: settings identifying the model (name, adapter path, ...), hashed
            with ``cfg`` into ``params_hash``; default ``{"model": model_name}``.
        styles: optional per-record style slot (see :func:`prompting.build_messages`).
        out_path: when given, the predictions are written there as JSONL.
        log: where progress lines go (default: ``radimpress.generation`` logger or stdout).
        token_stats: also record ``token_logprobs`` / ``token_entropies`` of every kept token in
            each row (:class:`TokenStatsRecorder`; greedy only, same drafts; ~free on CPU).

    Returns:
        :class:`GenerationResult` with the rows in input order.
    """
    log = log or default_log
    rows = list(records)
    if styles is not None and len(styles) != len(rows):
        raise ValueError(f"styles has {len(styles)} entries for {len(rows)} records")
    report_ids = [str(r.get("report_id", i)) for i, r in enumerate(rows)]
    if len(set(report_ids)) != len(report_ids):
        dupes = sorted({x for x in report_ids if report_ids.count(x) > 1})
        raise ValueError(f"duplicate report_id values {dupes[:5]}: predictions are keyed by report_id")
    device = next(model.parameters()).device
    if device.type == "cpu":
        low = {str(p.dtype) for p in model.parameters() if p.is_floating_point() and p.dtype != torch.float32}
        if low:
            raise ValueError(f"model has {sorted(low)} weights; generation on CPU is fp32 only")
    model_config = dict(model_config) if model_config is not None else {"model": model_name}
    phash = params_hash(cfg, model_config)

    end_ids = end_of_turn_token_ids(tokenizer)
    pad_id = pad_token_id(tokenizer, end_ids)
    prompts = [build_prompt(tokenizer, r, None if styles is None else styles[i]) for i, r in enumerate(rows)]
    # The chat template already holds any special tokens (BOS etc.).
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(rows)), key=lambda i: (-len(encoded[i]), i))

    # Graph soft prompts (notebook 09, gnn variant) come before the prompt and differ per report.
    graph_mode = isinstance(model, GraphPrefixModel)
    if token_stats and (cfg.num_beams != 1 or graph_mode):
        raise ValueError("token_stats needs greedy decoding (num_beams 1) of a plain causal LM")
    # The shared prefix is prefilled once (greedy only: beam search expands the batch itself).
    use_cache = cfg.prefix_cache and cfg.num_beams == 1 and not graph_mode
    n_prefix = common_prefix_length(encoded) if use_cache else 0
    batches = [order[i: i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]

    from transformers import GenerationConfig

    gen_config = GenerationConfig(
        max_new_tokens=cfg.max_new_tokens,
        num_beams=cfg.num_beams,
        do_sample=False,
        eos_token_id=end_ids,
        pad_token_id=pad_id,
        early_stopping=cfg.num_beams > 1,
    )
    results: list[dict[str, Any] | None] = [None] * len(rows)
    new_tokens = not_stopped = 0
    padded = real = 0
    was_training = model.training
    model.eval()
    log(
        f"gen: {len(rows)} reports in {len(batches)} batches of {cfg.batch_size}, "
        f"max_new_tokens={cfg.max_new_tokens}, beams={cfg.num_beams}, device={device.type}, "
        f"shared prefix cached: {n_prefix} tokens"
    )
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            prefix_cache = _prefix_cache(model, encoded[0][:n_prefix], device) if n_prefix else None
            for b, idx in enumerate(batches, start=1):
                # [prefix][left pads][suffix]: the pads sit after the cached prefix, masked out.
                ids, mask = left_pad([encoded[i][n_prefix:] for i in idx], pad_id)
                padded += ids.numel() + n_prefix * len(idx)
                real += int(mask.sum()) + n_prefix * len(idx)
                kwargs: dict[str, Any] = {}
                if prefix_cache is not None:
                    ids = torch.cat([torch.tensor([encoded[idx[0]][:n_prefix]]).expand(len(idx), -1), ids], dim=1)
                    mask = torch.cat([torch.ones(len(idx), n_prefix, dtype=mask.dtype), mask], dim=1)
                    cache = copy.deepcopy(prefix_cache)
                    cache.batch_repeat_interleave(len(idx))
                    kwargs[cache_kwarg(model)] = cache
                if graph_mode:

                    graphs = encode_graphs([extract_graph_cached(rows[i]["findings"]) for i in idx], tokenizer,
                                           max_nodes=model.max_nodes)
                    # generate() from embeddings returns the new tokens only
                    gen = model.generate(input_ids=ids.to(device), graphs=graphs, attention_mask=mask.to(device),
                                         generation_config=gen_config).cpu()
                else:
                    recorder = TokenStatsRecorder() if token_stats else None
                    if recorder is not None:
                        from transformers import LogitsProcessorList  # as GenerationConfig above: transformers on use

                        kwargs["logits_processor"] = LogitsProcessorList([recorder])
                    out = model.generate(
                        input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_config, **kwargs
                    )
                    gen = out[:, ids.shape[1]:].cpu()
                for row, i in enumerate(idx):
                    toks = gen[row].tolist()
                    kept, stopped = cut_at_end(toks, end_ids)
                    # Trailing pads after the stop token (other sequences still running) are dropped above.
                    text = tokenizer.decode(kept, skip_special_tokens=True).strip()
                    new_tokens += len(kept) + stopped
                    not_stopped += not stopped
                    record = rows[i]
                    results[i] = {
                        "report_id": report_ids[i],
                        "prediction": text,
                        "reference": record.get("impression"),
                        "model": model_name,
                        "params_hash": phash,
                        "n_prompt_tokens": len(encoded[i]),
                        "n_new_tokens": len(kept),
                        "stopped": stopped,
                    }
                    if token_stats:
                        lps, hs = recorder.row(row, len(kept))
                        results[i] |= {"token_logprobs": lps, "token_entropies": hs}
                if b % cfg.log_every == 0 or b == len(batches):
                    done = sum(len(x) for x in batches[:b])
                    elapsed = time.perf_counter() - t0
                    rate = done / elapsed if elapsed > 0 else math.inf
                    eta = (len(rows) - done) / rate if rate > 0 else 0.0
                    log(
                        f"gen batch {b}/{len(batches)} | {done}/{len(rows)} reports | {rate:.2f} reports/s | "
                        f"{fmt_seconds(elapsed)} elapsed" + (f", ~{fmt_seconds(eta)} left" if done < len(rows) else "")
                    )
    finally:
        if was_training:
            model.train()
    wall = time.perf_counter() - t0
    predictions = [r for r in results if r is not None]
    assert len(predictions) == len(rows)
    if not_stopped:
        log(f"gen: {not_stopped}/{len(rows)} outputs hit max_new_tokens={cfg.max_new_tokens} without an end token")
    result = GenerationResult(
        predictions=predictions,
        params_hash=phash,
        wall_time_s=wall,
        reports_per_s=len(rows) / wall if wall > 0 else math.inf,
        new_tokens=new_tokens,
        n_not_stopped=not_stopped,
        n_batches=len(batches),
        padding_ratio=1 - real / padded if padded else 0.0,
        prefix_tokens=n_prefix,
        settings={"generation": cfg.model_dump(), "model": model_config},
    )
    if out_path is not None:
        result.path = str(write_predictions_jsonl(predictions, out_path))
        log(f"gen: wrote {len(predictions)} predictions to {result.path}")
    return result


def decode_candidates(model: Any, tokenizer: Any, records: Sequence[Mapping[str, Any]], n: int, *,
                      max_new_tokens: int, mode: str = "sample", batch_size: int = 8, seed: int = 0,
                      temperature: float = 1.0, styles: Sequence[str | None] | None = None) -> list[list[str]]:
    """``n`` alternative impressions per record (batched), for the disagreement among candidates.

    ``mode="beam"``: the ``n`` best beams; ``"sample"``: ``n`` samples at ``temperature``
    (seeded with ``seed``). Each batch is left-padded as in :func:`generate_impressions`. This
    is an extra decode (about ``n`` times the greedy cost); it never changes the greedy drafts.
    """
    if n < 2:
        raise ValueError(f"n must be >= 2 candidates, got {n}")
    if mode not in ("beam", "sample"):
        raise ValueError(f"mode must be 'beam' or 'sample', got {mode!r}")
    from transformers import GenerationConfig  # as in generate_impressions: transformers on use

    end_ids = end_of_turn_token_ids(tokenizer)
    pad_id = pad_token_id(tokenizer, end_ids)
    device = next(model.parameters()).device
    encoded = [tokenizer(build_prompt(tokenizer, r, None if styles is None else styles[i]),
                         add_special_tokens=False)["input_ids"] for i, r in enumerate(records)]
    order = sorted(range(len(records)), key=lambda i: (-len(encoded[i]), i))
    gen_config = GenerationConfig(
        max_new_tokens=max_new_tokens, num_return_sequences=n, eos_token_id=end_ids, pad_token_id=pad_id,
        **({"num_beams": n, "do_sample": False, "early_stopping": True} if mode == "beam" else
           {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}))
    out: list[list[str]] = [[] for _ in records]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            torch.manual_seed(seed)
            for start in range(0, len(order), batch_size):
                idx = order[start: start + batch_size]
                ids, mask = left_pad([encoded[i] for i in idx], pad_id)
                seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                      generation_config=gen_config)[:, ids.shape[1]:].cpu().tolist()
                for row, i in enumerate(idx):
                    out[i] = [tokenizer.decode(cut_at_end(seq, end_ids)[0], skip_special_tokens=True).strip()
                              for seq in seqs[row * n: (row + 1) * n]]
    finally:
        if was_training:
            model.train()
    return out


def score_drafts(model: Any, tokenizer: Any, records: Sequence[Mapping[str, Any]], drafts: Sequence[str], *,
                 styles: Sequence[str | None] | None = None, batch_size: int = 8) -> list[dict[str, list[float]]]:
    """``token_logprobs`` / ``token_entropies`` of given drafts under ``model`` (teacher forcing).

    For drafts not decoded greedily (a factual-guard beam candidate, an edited draft): the draft's
    tokens follow the record's prompt, one forward pass per batch gives every position's
    next-token distribution. The same numbers as :class:`TokenStatsRecorder` for a greedy draft
    (up to re-tokenisation of the decoded text). Rows in input order; an empty draft gets empty lists.
    """
    if len(records) != len(drafts):
        raise ValueError(f"{len(drafts)} drafts for {len(records)} records")
    end_ids = end_of_turn_token_ids(tokenizer)
    pad_id = pad_token_id(tokenizer, end_ids)
    device = next(model.parameters()).device
    prompts = [tokenizer(build_prompt(tokenizer, r, None if styles is None else styles[i]),
                         add_special_tokens=False)["input_ids"] for i, r in enumerate(records)]
    completions = [tokenizer(d, add_special_tokens=False)["input_ids"] if d.strip() else [] for d in drafts]
    out: list[dict[str, list[float]]] = [{"token_logprobs": [], "token_entropies": []} for _ in drafts]
    todo = [i for i, c in enumerate(completions) if c]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(todo), batch_size):
                idx = todo[start: start + batch_size]
                ids, mask = left_pad([prompts[i] + completions[i] for i in idx], pad_id)
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
                logp = torch.log_softmax(logits, dim=-1)
                entropy = -(logp.exp() * torch.where(torch.isfinite(logp), logp, torch.zeros_like(logp))).sum(-1)
                for row, i in enumerate(idx):
                    n = len(completions[i])
                    # position p predicts token p + 1; the completion is the last n tokens of the row
                    pos = torch.arange(ids.shape[1] - n - 1, ids.shape[1] - 1)
                    toks = torch.tensor(completions[i])
                    out[i] = {"token_logprobs": [round(float(x), 4) for x in logp[row, pos, toks]],
                              "token_entropies": [round(float(x), 4) for x in entropy[row, pos]]}
    finally:
        if was_training:
            model.train()
    return out


def write_predictions_jsonl(predictions: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write prediction rows as JSONL (atomically: a temp file renamed into place)."""
    def rows() -> Iterator[dict[str, Any]]:
        for i, row in enumerate(predictions):
            missing = [k for k in PREDICTION_FIELDS if k not in row]
            if missing:
                raise ValueError(f"prediction row {i} lacks fields {missing}")
            yield dict(row)

    return write_jsonl_atomic(rows(), path)


def write_system_predictions(records: Sequence[Mapping[str, Any]], predictions: Sequence[str], name: str,
                             path: str | Path) -> Path:
    """Write a system's predictions that did not come from :func:`generate_impressions` (a baseline, a selection
    over drafts): one row per record with its reference; ``benchmark_idx`` when the records carry it."""
    if len(records) != len(predictions):
        raise ValueError(f"{name}: {len(predictions)} predictions for {len(records)} records")
    return write_predictions_jsonl(
        [{"report_id": r["report_id"], "prediction": p, "reference": r["impression"], "model": name, "params_hash": None,
          **({"benchmark_idx": r["benchmark_idx"]} if "benchmark_idx" in r else {})}
         for r, p in zip(records, predictions)], path)


def read_predictions_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a predictions JSONL file; a bad line is an error naming file and line."""
    return [row for _where, row in iter_jsonl_rows(path, PREDICTION_FIELDS)]
