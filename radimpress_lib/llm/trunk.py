"""Cached frozen trunk: hidden states of the untrained layers, computed once; rows with shared parts.

With only the top ``L`` decoder layers of an ``N``-layer LLaMA-type model trained (LoRA or full
weights), the hidden states entering layer ``N - L`` are a fixed function of the token ids (and
the frozen weights). :func:`build_trunk_cache` computes them once under ``no_grad``; training
(:mod:`radimpress_lib.train.cached`) then runs only layers ``N-L .. N-1`` + final norm + head,
forward and backward, from the cache. LLaMA does not scale ``inputs_embeds`` and applies RoPE
inside attention, so feeding the cached states with the right ``position_ids`` reproduces the
full model exactly (max |logit difference| ~5e-5 in fp32 on SmolLM2-135M; :func:`check_equivalence`,
``tests/test_cached.py``).

Rows
----
Every training item is one *row* of tokens with a ``branch`` id per token (:class:`Row`):
branch 0 is shared, branches 1 and 2 are alternatives that both continue the shared part (a
preference pair: prompt + common answer prefix shared, then chosen / rejected). Token ``q``
attends to token ``k`` iff ``k <= q`` in the row and ``k`` is shared or on ``q``'s branch;
position ids restart at the branch point. A pair therefore costs ~1.1 sequences instead of 2,
in the trunk *and* in the trained head, and is exact (causal attention: the shared part's
states do not depend on what follows). SFT rows have one branch. Rows never attend to each
other; batches are right-padded, length-grouped rows.

The prefix *every* row shares (system prompt + chat template: 38-47 tokens, ~20-25% of an
example here) is computed once: the cache stores it once, and every layer call first runs the
prefix (one row), records its keys/values (:class:`SharedPrefixKV`, a duck-typed HF cache) and
lets the batch's rows attend to them. In a trained head the prefix is recomputed with the
current weights at every step (gradients flow through its keys/values), so this is exact too.

Models stay standard: the decoder layers of the *full* model are called by hand
(:func:`run_layers`), so the trainable part is an ordinary peft adapter on the full model
(:func:`attach_top_lora`: ``layers_to_transform = [N-L .. N-1]``) that
:func:`radimpress_lib.llm.checkpoints.apply_adapter` and the reward-model / policy loaders load
unchanged.

Cache identity: a cache kept on disk (``cache_dir``) is stored under a key made of a digest of the
trunk weights (embeddings + layers below the cache layer), the tokenizer, every row's tokens /
positions / branches, the layer and the storage dtype, so a stale cache is never read.
Within a process, :func:`build_trunk_cache` can take rows from other caches of the same trunk
(``reuse``): identical token rows are copied, only new rows are computed (notebook 02's two
protocols share most of their rows).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from radimpress_lib.core.jsonio import write_json
from radimpress_lib.llm.callbacks import default_log
from radimpress_lib.llm.prompting import IGNORE_INDEX

__all__ = [
    "Batch",
    "Row",
    "SharedPrefixKV",
    "TrunkCache",
    "advance_cache",
    "attach_top_lora",
    "branch_sums",
    "build_trunk_cache",
    "cache_key",
    "check_equivalence",
    "check_supported",
    "collate",
    "decoder_of",
    "head_forward",
    "layer_passes",
    "lm_head_of",
    "n_layers",
    "group_rows",
    "pair_rows",
    "branch_scores",
    "pair_score_rows",
    "row_key",
    "row_mask",
    "run_layers",
    "sequence_logps",
    "sft_rows",
    "shared_prefix_length",
    "token_batches",
    "token_logps",
    "train_top_layers_in_full",
    "trunk_digest",
]

logger = logging.getLogger("radimpress.trunk")
LogFn = Callable[[str], None]


# --------------------------------------------------------------------------- model plumbing


def decoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The inner decoder (``LlamaModel``: embed_tokens, layers, norm, rotary_emb) of a causal-LM,
    sequence-classification or peft-wrapped model."""
    m = model
    if hasattr(m, "get_base_model"):  # peft
        m = m.get_base_model()
    inner = getattr(m, "model", None)
    if inner is not None and hasattr(inner, "layers"):
        return inner
    if hasattr(m, "layers"):
        return m
    raise TypeError(f"{type(model).__name__}: no decoder with .layers found")


def n_layers(model: torch.nn.Module) -> int:
    """Number of decoder layers."""
    return len(decoder_of(model).layers)


def _text_config(model: torch.nn.Module) -> Any:
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def check_supported(model: torch.nn.Module) -> None:
    """Raise unless ``model`` is a LLaMA-type decoder the row machinery reproduces exactly
    (unscaled embeddings, RoPE inside attention, full causal attention)."""
    cfg = _text_config(model)
    kind = getattr(cfg, "model_type", None)
    if kind not in ("llama", "mistral", "qwen2"):
        raise ValueError(f"the cached trunk supports LLaMA-type decoders (unscaled embeddings, RoPE in attention); "
                         f"got model_type={kind!r}; use the trl trainer")
    if kind == "mistral" and getattr(cfg, "sliding_window", None):
        raise ValueError("sliding-window attention is not supported by the row masks; use the trl trainer")


def _attn_mask(model: torch.nn.Module, allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The 4D mask the model's attention implementation expects from a bool ``[B,1,T,S]`` (True = attend)."""
    impl = getattr(model.config, "_attn_implementation", "sdpa")
    if impl in ("sdpa", "flex_attention", None):
        return allowed
    out = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)  # eager: additive float mask
    return out.masked_fill(~allowed, torch.finfo(dtype).min)


def row_mask(branch: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[B,1,T,T]`` bool attention mask of padded rows (see the module docstring).

    ``q`` attends ``k`` iff ``k <= q``, ``k`` valid and (``branch[k] == 0`` or ``branch[k] == branch[q]``).
    Every query attends at least to itself, so padded positions never produce NaNs.
    """
    T = branch.shape[1]
    idx = torch.arange(T, device=branch.device)
    causal = idx[None, :] <= idx[:, None]  # [q, k]
    same = (branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None])  # [B, q, k]
    allowed = causal[None] & same & valid[:, None, :].bool()
    allowed |= torch.eye(T, dtype=torch.bool, device=branch.device)[None]
    return allowed[:, None]


class SharedPrefixKV:
    """Duck-typed HF cache (``update(k, v, layer_idx, ...)``) for a prefix shared by every row of a batch.

    While ``recording`` it stores the prefix's keys/values of each layer and returns them unchanged;
    otherwise it prepends the stored prefix keys/values (expanded over the batch) to the rows' own.
    Gradients flow through both (a trained head recomputes the prefix with its current weights).
    """

    def __init__(self) -> None:
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.recording = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self.recording:
            self.kv[layer_idx] = (key_states, value_states)
            return key_states, value_states
        pk, pv = self.kv[layer_idx]
        B = key_states.shape[0]
        return (torch.cat([pk.expand(B, -1, -1, -1), key_states], dim=2),
                torch.cat([pv.expand(B, -1, -1, -1), value_states], dim=2))


def _call_layer(layer: torch.nn.Module, hidden: torch.Tensor, mask: torch.Tensor, pos_emb: Any,
                position_ids: torch.Tensor, kv: SharedPrefixKV | None) -> torch.Tensor:
    out = layer(hidden, attention_mask=mask, position_embeddings=pos_emb, position_ids=position_ids,
                use_cache=False, cache=kv)
    return out[0] if isinstance(out, tuple) else out


def run_layers(model: torch.nn.Module, hidden: torch.Tensor, start: int, stop: int, mask: torch.Tensor,
               position_ids: torch.Tensor, prefix_hidden: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply decoder layers ``start .. stop-1`` of ``model`` (no final norm).

    Args:
        hidden: ``[B,T,H]`` states of the rows (without the shared prefix when one is given).
        mask: :func:`row_mask` bool mask ``[B,1,T,T]`` of the rows.
        position_ids: ``[B,T]`` (absolute: a row after a shared prefix of ``P`` tokens starts at ``P``).
        prefix_hidden: ``[1,P,H]`` states of a prefix shared by every row (positions ``0..P-1``),
            or None. Every row attends to all of it; it is computed once per call.

    Returns:
        ``(hidden, prefix_hidden)`` at layer ``stop`` (``prefix_hidden`` None without a prefix).
        peft LoRA layers inside the decoder layers are used as they are (this is how a head trains).
    """
    dec = decoder_of(model)
    pos_emb = dec.rotary_emb(hidden, position_ids=position_ids)
    kv = None
    if prefix_hidden is not None:
        P = prefix_hidden.shape[1]
        dev = hidden.device
        ppos = torch.arange(P, device=dev)[None]
        ppos_emb = dec.rotary_emb(prefix_hidden, position_ids=ppos)
        pmask = _attn_mask(model, torch.ones((P, P), dtype=torch.bool, device=dev).tril()[None, None], hidden.dtype)
        B, _, T, _ = mask.shape
        mask = torch.cat([torch.ones((B, 1, T, P), dtype=torch.bool, device=dev), mask], dim=-1)
        kv = SharedPrefixKV()
    attn = _attn_mask(model, mask, hidden.dtype)
    for layer in dec.layers[start:stop]:
        if kv is not None:
            kv.recording = True
            prefix_hidden = _call_layer(layer, prefix_hidden, pmask, ppos_emb, ppos, kv)
            kv.recording = False
        hidden = _call_layer(layer, hidden, attn, pos_emb, position_ids, kv)
    return hidden, prefix_hidden


def embed(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Token embeddings (LLaMA: not scaled)."""
    return decoder_of(model).embed_tokens(input_ids)


def final_norm(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The decoder's final RMSNorm."""
    return decoder_of(model).norm(hidden)


def lm_head_of(model: torch.nn.Module) -> torch.nn.Module:
    """Output projection of a causal LM (peft-wrapped or not)."""
    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    return m.get_output_embeddings()


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _dtype(model: torch.nn.Module) -> torch.dtype:
    return next(p for p in model.parameters() if p.is_floating_point()).dtype


# --------------------------------------------------------------------------- rows


@dataclass
class Row:
    """One training item as a row of tokens (see the module docstring).

    Attributes:
        input_ids: token ids of the row (shared part first, then branch 1, then branch 2).
        position_ids: RoPE positions (restart at the branch point for branch 2).
        branch: 0 shared, 1 / 2 the alternatives (1 .. G: the completions of an RL group, :func:`group_rows`).
        label_src: row indices whose hidden state predicts a scored token.
        label_tgt: the scored token ids (aligned with ``label_src``).
        label_branch: branch of each scored token (0 for SFT).
        last: row index of the last token of branch 1 and branch 2 (reward-model score positions).
        meta: free-form (report id, pair type, ...).
    """

    input_ids: list[int]
    position_ids: list[int]
    branch: list[int]
    label_src: list[int] = field(default_factory=list)
    label_tgt: list[int] = field(default_factory=list)
    label_branch: list[int] = field(default_factory=list)
    last: list[int] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)

    def shifted(self, p: int) -> Row:
        """The row without its first ``p`` (shared-prefix) tokens; indices shifted, positions kept."""
        return Row(self.input_ids[p:], self.position_ids[p:], self.branch[p:], [i - p for i in self.label_src],
                   list(self.label_tgt), list(self.label_branch), [i - p for i in self.last], dict(self.meta))


def row_key(row: Row) -> str:
    """Identity of a row's trunk states: its tokens, positions and branches."""
    h = hashlib.sha1()
    h.update(np.asarray(row.input_ids, dtype=np.int64).tobytes())
    h.update(np.asarray(row.position_ids, dtype=np.int64).tobytes())
    h.update(np.asarray(row.branch, dtype=np.int8).tobytes())
    return h.hexdigest()


def shared_prefix_length(rows: Sequence[Row]) -> int:
    """Length of the token prefix every row shares (on branch 0, plain positions), leaving each row at
    least its scored positions (``label_src``, ``last``) and one token outside it."""
    if not rows:
        return 0
    first = rows[0].input_ids
    p = len(first)
    for r in rows:
        k = 0
        lim = min(p, len(r) - 1)
        while k < lim and r.input_ids[k] == first[k] and r.branch[k] == 0 and r.position_ids[k] == k:
            k += 1
        p = min(k, min(r.label_src, default=k), min(r.last, default=k))
    return max(0, p)


def sft_rows(input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]],
             metas: Sequence[Mapping[str, Any]] | None = None) -> list[Row]:
    """Rows of completion-only SFT examples (``prompting.build_sft_dataset``'s ``input_ids`` / ``labels``).

    Position ``t`` predicts token ``t+1`` where ``labels[t+1] != -100``.
    """
    rows = []
    for i, (ids, lab) in enumerate(zip(input_ids, labels)):
        ids, lab = [int(x) for x in ids], [int(x) for x in lab]
        src = [t for t in range(len(ids) - 1) if lab[t + 1] != IGNORE_INDEX]
        rows.append(Row(ids, list(range(len(ids))), [0] * len(ids), src, [lab[t + 1] for t in src], [0] * len(src),
                        [], dict(metas[i]) if metas else {}))
    return rows


def pair_rows(prompt_ids: Sequence[Sequence[int]], chosen_ids: Sequence[Sequence[int]],
              rejected_ids: Sequence[Sequence[int]], metas: Sequence[Mapping[str, Any]] | None = None) -> list[Row]:
    """Prefix-shared rows of preference pairs: prompt + common answer prefix once, then both answers.

    Only answer tokens after the common answer prefix are scored (``label_*``: the log-prob of the
    shared answer tokens is the same for both answers and cancels in DPO). ``last`` holds the index of
    each branch's last token (where the reward model reads its score).
    """
    rows = []
    for i, (p, c, r) in enumerate(zip(prompt_ids, chosen_ids, rejected_ids)):
        p, c, r = list(p), list(c), list(r)
        if c == r:
            raise ValueError(f"pair {i}: chosen and rejected tokenize identically")
        k = 0
        while k < min(len(c), len(r)) - 1 and c[k] == r[k]:
            k += 1
        shared = p + c[:k]
        b1, b2 = c[k:], r[k:]
        s = len(shared)
        ids = shared + b1 + b2
        pos = list(range(s)) + list(range(s, s + len(b1))) + list(range(s, s + len(b2)))
        br = [0] * s + [1] * len(b1) + [2] * len(b2)
        src, tgt, lb = [], [], []
        for j, tok in enumerate(b1):  # predicted from the previous token of the same sequence
            src.append(s - 1 + j)
            tgt.append(tok)
            lb.append(1)
        for j, tok in enumerate(b2):
            src.append(s - 1 if j == 0 else s + len(b1) + j - 1)
            tgt.append(tok)
            lb.append(2)
        last = [s + len(b1) - 1, s + len(b1) + len(b2) - 1]
        rows.append(Row(ids, pos, br, src, tgt, lb, last, dict(metas[i]) if metas else {}))
    return rows


def group_rows(prompt_ids: Sequence[Sequence[int]], completions: Sequence[Sequence[Sequence[int]]],
               metas: Sequence[Mapping[str, Any]] | None = None) -> list[Row]:
    """Rows of prompts with several completions each (RL groups): the prompt once, then completion ``g`` as
    branch ``g + 1`` (positions restart after the prompt). Every completion token is scored
    (``label_branch`` = its branch), predicted from the previous token of its own sequence; ``last`` holds
    each branch's last token."""
    rows = []
    for i, (p, group) in enumerate(zip(prompt_ids, completions)):
        p = [int(t) for t in p]
        s = len(p)
        if s == 0 or not group or any(len(c) == 0 for c in group):
            raise ValueError(f"group {i}: the prompt and every completion need at least one token")
        ids, pos, br = list(p), list(range(s)), [0] * s
        src, tgt, lb, last = [], [], [], []
        for g, comp in enumerate(group, start=1):
            start = len(ids)
            for j, tok in enumerate(comp):
                src.append(s - 1 if j == 0 else start + j - 1)
                tgt.append(int(tok))
                lb.append(g)
            ids += [int(t) for t in comp]
            pos += list(range(s, s + len(comp)))
            br += [g] * len(comp)
            last.append(len(ids) - 1)
        rows.append(Row(ids, pos, br, src, tgt, lb, last, dict(metas[i]) if metas else {}))
    return rows


@dataclass
class Batch:
    """Padded tensors of a list of rows."""

    index: list[int]
    input_ids: torch.Tensor  # [B,T]
    position_ids: torch.Tensor  # [B,T]
    branch: torch.Tensor  # [B,T]
    valid: torch.Tensor  # [B,T] bool
    mask: torch.Tensor  # [B,1,T,T] bool
    label_b: torch.Tensor  # [n] batch row of each scored token
    label_src: torch.Tensor  # [n] position in the row
    label_tgt: torch.Tensor  # [n]
    label_branch: torch.Tensor  # [n]
    last: torch.Tensor  # [B, 2] (width 0 for SFT)

    @property
    def n_tokens(self) -> int:
        """Real (non-pad) tokens of the batch."""
        return int(self.valid.sum())


def collate(rows: Sequence[Row], index: Sequence[int], pad_id: int = 0, device: torch.device | str = "cpu") -> Batch:
    """Right-pad ``rows[index]`` into a :class:`Batch` on ``device``."""
    sel = [rows[i] for i in index]
    T = max(len(r) for r in sel)
    B = len(sel)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    br = torch.zeros((B, T), dtype=torch.long)
    valid = torch.zeros((B, T), dtype=torch.bool)
    lb, ls, lt, lbr, last = [], [], [], [], []
    for b, r in enumerate(sel):
        n = len(r)
        ids[b, :n] = torch.tensor(r.input_ids)
        pos[b, :n] = torch.tensor(r.position_ids)
        if n < T:
            pos[b, n:] = torch.arange(n, T)
        br[b, :n] = torch.tensor(r.branch)
        br[b, n:] = 99  # pads: their own branch, attend only themselves
        valid[b, :n] = True
        lb += [b] * len(r.label_src)
        ls += r.label_src
        lt += r.label_tgt
        lbr += r.label_branch
        last.append(r.last)
    last_t = torch.tensor(last, dtype=torch.long) if last and last[0] else torch.zeros((B, 0), dtype=torch.long)
    dev = torch.device(device)
    return Batch(list(index), ids.to(dev), pos.to(dev), br.to(dev), valid.to(dev), row_mask(br, valid).to(dev),
                 torch.tensor(lb, dtype=torch.long, device=dev), torch.tensor(ls, dtype=torch.long, device=dev),
                 torch.tensor(lt, dtype=torch.long, device=dev), torch.tensor(lbr, dtype=torch.long, device=dev),
                 last_t.to(dev))


def token_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Longest-first batches of at most ``max_tokens`` padded positions (no-grad passes)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * lengths[cur[0]] > max_tokens:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


# --------------------------------------------------------------------------- trunk cache


def trunk_digest(model: torch.nn.Module, upto: int) -> str:
    """sha256 (16 hex) of the weights rows pass through below layer ``upto``: embeddings + layers ``< upto``."""
    dec = decoder_of(model)
    h = hashlib.sha256()
    for name, t in [("embed", dec.embed_tokens.weight)] + [
            (f"layer{i}.{n}", p) for i in range(upto) for n, p in dec.layers[i].named_parameters()]:
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def cache_key(digest: str, tokenizer: Any, rows: Sequence[Row], upto: int, dtype: torch.dtype, *,
              share_prefix: bool = True, ref_logps: bool = False) -> str:
    """Identity of a trunk cache: trunk weights digest, tokenizer, rows, layer, dtype, options."""
    h = hashlib.sha256()
    h.update(f"{digest}|{getattr(tokenizer, 'name_or_path', '')}|{len(tokenizer) if tokenizer is not None else 0}|"
             f"{upto}|{dtype}|{share_prefix}|{ref_logps}".encode())
    for r in rows:
        h.update(row_key(r).encode())
    return h.hexdigest()[:24]


@dataclass
class TrunkCache:
    """Hidden states entering layer ``layer`` for a list of rows.

    The prefix every row shares (``prefix_ids``, e.g. the system prompt) is stored once
    (``prefix``: ``[P,H]``) and the rows without it (``rows``: :meth:`Row.shifted`) flat in
    ``hidden`` (``[total_tokens, H]``, row ``i`` at ``offsets[i]:offsets[i+1]``). ``extras`` holds
    per-row precomputed values (``ref_logps`` ``[n_rows, 2]`` for DPO). ``digest`` identifies the
    trunk weights (:func:`trunk_digest`); ``build_s`` is the time spent computing it.
    """

    layer: int
    rows: list[Row]
    hidden: torch.Tensor
    offsets: list[int]
    prefix_ids: list[int]
    prefix: torch.Tensor
    digest: str = ""
    key: str = ""
    build_s: float = 0.0
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    n_reused: int = 0

    def get(self, i: int) -> torch.Tensor:
        """Cached states of row ``i`` (``[len, H]``, storage dtype)."""
        return self.hidden[self.offsets[i]:self.offsets[i + 1]]

    def batch(self, index: Sequence[int], pad_id: int = 0, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> tuple[Batch, torch.Tensor, torch.Tensor | None]:
        """``(batch, hidden [B,T,H] in dtype (zeros on pads), prefix [1,P,H] or None)`` of rows ``index``."""
        batch = collate(self.rows, index, pad_id, device)
        B, T = batch.input_ids.shape
        out = torch.zeros((B, T, self.hidden.shape[1]), dtype=dtype)
        for b, i in enumerate(index):
            h = torch.as_tensor(self.get(i))
            out[b, : h.shape[0]] = h.to(dtype)
        prefix = self.prefix.to(dtype)[None].to(device) if len(self.prefix_ids) else None
        return batch, out.to(device), prefix

    def subset(self, index: Sequence[int]) -> TrunkCache:
        """The rows ``index`` as a new cache; ``build_s`` pro-rated by their share of the tokens."""
        parts = [torch.as_tensor(self.get(i)) for i in index]
        offsets = [0]
        for part in parts:
            offsets.append(offsets[-1] + part.shape[0])
        hidden = torch.cat(parts) if parts else self.hidden[:0]
        share = offsets[-1] / max(1, self.offsets[-1])
        extras = {k: v[list(index)] for k, v in self.extras.items()}
        return TrunkCache(self.layer, [self.rows[i] for i in index], hidden, offsets, self.prefix_ids, self.prefix,
                          self.digest, "", self.build_s * share, extras)

    @property
    def nbytes(self) -> int:
        """Bytes of the cached states."""
        return self.hidden.numel() * self.hidden.element_size() + self.prefix.numel() * self.prefix.element_size()

    def lookup(self) -> dict[str, int]:
        """``{row_key of the full row (prefix included): row index}`` (for reuse by another cache)."""
        out = {}
        for i, r in enumerate(self.rows):
            full = Row(self.prefix_ids + r.input_ids, list(range(len(self.prefix_ids))) + r.position_ids,
                       [0] * len(self.prefix_ids) + r.branch)
            out.setdefault(row_key(full), i)
        return out

    def save(self, folder: str | Path) -> Path:
        """Write ``hidden.npy`` (memory-mappable), ``prefix.npy``, rows and ``meta.json`` under ``folder/<key>``."""
        path = Path(folder) / self.key
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / "hidden.npy", torch.as_tensor(self.hidden).float().numpy() if self.hidden.dtype ==
                torch.bfloat16 else torch.as_tensor(self.hidden).numpy())
        np.save(path / "prefix.npy", self.prefix.float().numpy())
        for k, v in self.extras.items():
            np.save(path / f"extra_{k}.npy", v.numpy())
        (path / "rows.json").write_text(json.dumps([asdict(r) for r in self.rows]))
        write_json(path / "meta.json", {"layer": self.layer, "offsets": self.offsets, "key": self.key,
                                        "digest": self.digest, "prefix_ids": self.prefix_ids,
                                        "build_s": self.build_s, "extras": sorted(self.extras),
                                        "dtype": str(self.hidden.dtype)})
        return path

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True) -> TrunkCache:
        """Read a saved cache (``hidden`` memory-mapped by default)."""
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        with warnings.catch_warnings():  # a read-only memory map: the cache is only ever read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            hidden = torch.from_numpy(np.load(path / "hidden.npy", mmap_mode="r" if mmap else None))
        if meta.get("dtype") == "torch.bfloat16":
            hidden = hidden.to(torch.bfloat16)
        rows = [Row(**r) for r in json.loads((path / "rows.json").read_text())]
        extras = {k: torch.from_numpy(np.load(path / f"extra_{k}.npy")) for k in meta["extras"]}
        prefix = torch.from_numpy(np.load(path / "prefix.npy")).to(hidden.dtype)
        return cls(meta["layer"], rows, hidden, meta["offsets"], meta["prefix_ids"], prefix, meta["digest"],
                   meta["key"], meta["build_s"], extras)


@torch.no_grad()
def build_trunk_cache(model: torch.nn.Module, rows: Sequence[Row], upto: int, *, dtype: torch.dtype = torch.float32,
                      max_batch_tokens: int = 4096, pad_id: int = 0, ref_logps: bool = False,
                      share_prefix: bool = True, tokenizer: Any = None, cache_dir: str | Path | None = None,
                      reuse: Iterable[TrunkCache] = (), clock: Callable[[], float] = time.perf_counter,
                      log: LogFn | None = None) -> TrunkCache:
    """Run embeddings + layers ``0 .. upto-1`` once over ``rows`` (no grad) and keep the result.

    Args:
        model: the model whose trunk stays frozen during training (adapters, if any, must not touch
            layers below ``upto``).
        rows: training rows (:func:`sft_rows`, :func:`pair_rows`).
        upto: first trained layer (``N - L``).
        dtype: storage dtype (fp32 exact; fp16 halves memory, max logit error ~1e-2 on SmolLM2,
            see :func:`check_equivalence`).
        max_batch_tokens: padded positions per no-grad batch.
        ref_logps: also run the rest of the model (layers ``upto..N-1``, norm, LM head) and store
            the summed log-prob of each branch's scored tokens: the DPO reference, once.
        share_prefix: compute the prefix all rows share (system prompt and chat template) once;
            rows attend to its keys/values.
        tokenizer / cache_dir: when both are given the cache is stored under ``cache_dir/<key>``
            (:func:`cache_key`) and read back when the same key is asked for again.
        reuse: caches of the same trunk (same weights digest, layer, prefix and dtype) whose identical
            rows are copied instead of computed (not with ``ref_logps``).
        clock: what ``build_s`` measures (wall time by default; process time in benchmarks).
    """
    log = log or default_log
    reuse = list(reuse)
    was_training = model.training
    model.eval()
    t0 = clock()
    device, mdtype = _device(model), _dtype(model)
    digest = trunk_digest(model, upto)
    key = cache_key(digest, tokenizer, rows, upto, dtype, share_prefix=share_prefix, ref_logps=ref_logps) \
        if tokenizer is not None else ""
    if cache_dir is not None and key and (Path(cache_dir) / key / "meta.json").is_file():
        log(f"trunk cache {key} read from {cache_dir}")
        model.train(was_training)
        return TrunkCache.load(Path(cache_dir) / key)
    P = shared_prefix_length(rows) if share_prefix else 0
    reuse = [c for c in reuse if c.digest == digest and c.layer == upto and c.hidden.dtype == dtype]
    for other in reuse:  # take another cache's shared prefix when every row starts with it, so rows can be copied
        p = len(other.prefix_ids)
        if 0 < p <= P and list(rows[0].input_ids[:p]) == other.prefix_ids:
            P = p
            break
    prefix_ids = list(rows[0].input_ids[:P]) if P else []
    srows = [r.shifted(P) for r in rows] if P else list(rows)
    H = decoder_of(model).embed_tokens.weight.shape[1]
    N = n_layers(model)
    prefix0 = embed(model, torch.tensor([prefix_ids], device=device)) if P else None
    prefix_up = None
    if P:
        pmask = torch.ones((P, P), dtype=torch.bool, device=device).tril()[None, None]
        prefix_up, _ = run_layers(model, prefix0, 0, upto, pmask, torch.arange(P, device=device)[None])
    lengths = [len(r) for r in srows]
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    hidden = torch.empty((offsets[-1], H), dtype=dtype)
    # rows another cache of the same trunk already holds are copied
    todo = list(range(len(rows)))
    n_reused = 0
    if not ref_logps:
        for other in reuse:
            if other.prefix_ids != prefix_ids:
                continue
            found = other.lookup()
            left = []
            for i in todo:
                j = found.get(row_key(rows[i]))
                if j is None:
                    left.append(i)
                else:
                    hidden[offsets[i]:offsets[i + 1]] = torch.as_tensor(other.get(j))
            n_reused += len(todo) - len(left)
            todo = left
    refs = torch.zeros((len(rows), 2), dtype=torch.float64) if ref_logps else None
    for part in token_batches([lengths[i] for i in todo], max_batch_tokens):
        idx = [todo[j] for j in part]
        batch = collate(srows, idx, pad_id, device)
        h, _ = run_layers(model, embed(model, batch.input_ids), 0, upto, batch.mask, batch.position_ids, prefix0)
        for b, i in enumerate(idx):
            hidden[offsets[i]:offsets[i + 1]] = h[b, : lengths[i]].to("cpu", dtype)
        if refs is not None:
            top, _ = run_layers(model, h, upto, N, batch.mask, batch.position_ids, prefix_up)
            lp = token_logps(lm_head_of(model), final_norm(model, top), batch)
            refs[idx] = branch_sums(lp.double(), batch).cpu()
    model.train(was_training)
    prefix_store = prefix_up[0].to("cpu", dtype) if P else torch.zeros((0, H), dtype=dtype)
    cache = TrunkCache(upto, srows, hidden, offsets, prefix_ids, prefix_store, digest, key, clock() - t0,
                       {"ref_logps": refs} if refs is not None else {}, n_reused)
    reused = f", {n_reused} rows reused" if n_reused else ""
    log(f"trunk cache: {len(rows)} rows ({offsets[-1]:,} tokens + a shared prefix of {P}) at layer {upto}/{N}, "
        f"{str(dtype).replace('torch.', '')}, {cache.nbytes / 2**20:.0f} MiB, built in {cache.build_s:.1f}s{reused}")
    if mdtype != torch.float32 and device.type == "cpu":
        logger.warning("trunk cache built with %s weights on CPU", mdtype)
    if cache_dir is not None and key:
        cache.save(cache_dir)
    return cache


@torch.no_grad()
def advance_cache(model: torch.nn.Module, cache: TrunkCache, upto: int, max_batch_tokens: int = 4096,
                  clock: Callable[[], float] = time.perf_counter, log: LogFn | None = None) -> TrunkCache:
    """A cache at layer ``upto`` from one at a lower layer (runs layers ``cache.layer .. upto-1`` only)."""
    if upto == cache.layer:
        return cache
    if upto < cache.layer:
        raise ValueError(f"cannot go down from layer {cache.layer} to {upto}")
    t0 = clock()
    was = model.training
    model.eval()
    device, mdtype = _device(model), _dtype(model)
    hidden = torch.empty(tuple(cache.hidden.shape), dtype=cache.hidden.dtype)
    lengths = [len(r) for r in cache.rows]
    prefix_up = None
    for idx in token_batches(lengths, max_batch_tokens):
        batch, h, prefix = cache.batch(idx, device=device, dtype=mdtype)
        h, prefix_up = run_layers(model, h, cache.layer, upto, batch.mask, batch.position_ids, prefix)
        for b, i in enumerate(idx):
            hidden[cache.offsets[i]:cache.offsets[i + 1]] = h[b, : lengths[i]].to("cpu", hidden.dtype)
    model.train(was)
    dt = clock() - t0
    (log or default_log)(f"trunk cache advanced from layer {cache.layer} to {upto} in {dt:.1f}s")
    prefix = prefix_up[0].to("cpu", cache.prefix.dtype) if prefix_up is not None else cache.prefix
    return TrunkCache(upto, cache.rows, hidden, cache.offsets, cache.prefix_ids, prefix,
                      trunk_digest(model, upto), "", cache.build_s + dt, dict(cache.extras))


def token_logps(head: torch.nn.Module, top: torch.Tensor, batch: Batch, temperature: float = 1.0) -> torch.Tensor:
    """Log-prob of each scored token (``label_*``) from final hidden states ``top`` ``[B,T,H]`` (logits divided by
    ``temperature``, as a sampler at that temperature draws them)."""
    logits = head(top[batch.label_b, batch.label_src]).float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(1, batch.label_tgt[:, None])[:, 0]


def branch_sums(lp: torch.Tensor, batch: Batch) -> torch.Tensor:
    """``[B, 2]`` sums of ``lp`` over the scored tokens of branch 1 and branch 2 of each row."""
    sums = torch.zeros((len(batch.index), 3), dtype=lp.dtype, device=lp.device)
    sums = sums.index_put((batch.label_b, batch.label_branch), lp, accumulate=True)
    return sums[:, 1:]


def head_forward(model: torch.nn.Module, cache: TrunkCache, batch: Batch, hidden: torch.Tensor,
                 prefix: torch.Tensor | None) -> torch.Tensor:
    """Final normed hidden states ``[B,T,H]`` of the rows: layers ``cache.layer .. N-1`` + norm from the cache."""
    top, _ = run_layers(model, hidden, cache.layer, n_layers(model), batch.mask, batch.position_ids, prefix)
    return final_norm(model, top)


# --------------------------------------------------------------------------- whole-model passes over rows


def layer_passes(model: torch.nn.Module, rows: Sequence[Row], stop: int, max_batch_tokens: int, pad_id: int):
    """``(batch, states, prefix states)`` of every row after layers ``0 .. stop-1`` (no final norm), in
    longest-first batches (``batch.index``: the rows it holds); the prefix all rows share is computed once
    (its states at ``stop``, or None without one)."""
    device = _device(model)
    P = shared_prefix_length(rows)
    srows = [r.shifted(P) for r in rows] if P else list(rows)
    prefix = embed(model, torch.tensor([rows[0].input_ids[:P]], device=device)) if P else None
    for idx in token_batches([len(r) for r in srows], max_batch_tokens):
        batch = collate(srows, idx, pad_id, device)
        h, prefix_at_stop = run_layers(model, embed(model, batch.input_ids), 0, stop, batch.mask, batch.position_ids,
                                       prefix)
        yield batch, h, prefix_at_stop


def _full_passes(model: torch.nn.Module, rows: Sequence[Row], max_batch_tokens: int, pad_id: int):
    """``(batch, final normed states)`` of every row through the whole model, shared prefix computed once."""
    for batch, h, _ in layer_passes(model, rows, n_layers(model), max_batch_tokens, pad_id):
        yield batch, final_norm(model, h)


@torch.no_grad()
def sequence_logps(model: torch.nn.Module, rows: Sequence[Row], max_batch_tokens: int = 4096, pad_id: int = 0
                   ) -> torch.Tensor:
    """``[n_rows, 2]`` summed log-prob of each branch's scored tokens with the whole model (any causal LM,
    e.g. a merged adapter), from the token ids: path-independent DPO evaluation (no cache)."""
    was = model.training
    model.eval()
    head = lm_head_of(model)
    out = torch.zeros((len(rows), 2), dtype=torch.float64)
    for batch, top in _full_passes(model, rows, max_batch_tokens, pad_id):
        out[batch.index] = branch_sums(token_logps(head, top, batch).double(), batch).cpu()
    model.train(was)
    return out


@torch.no_grad()
def branch_scores(model: torch.nn.Module, rows: Sequence[Row], max_batch_tokens: int = 4096, pad_id: int = 0
                  ) -> list[torch.Tensor]:
    """Reward-model scores (``score`` head at the last token of each branch, ``Row.last``) of rows with the whole
    sequence-classification model: what scoring each branch as its own sequence gives, with the shared part
    computed once per row and the shared prefix once per batch. One ``float64`` tensor per row."""
    was = model.training
    model.eval()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out: list[torch.Tensor] = [torch.zeros(0, dtype=torch.float64)] * len(rows)
    by_width: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_width.setdefault(len(r.last), []).append(i)
    for index in by_width.values():  # rows of one batch need the same number of branches
        for batch, top in _full_passes(model, [rows[i] for i in index], max_batch_tokens, pad_id):
            b = torch.arange(top.shape[0], device=top.device)
            scores = torch.stack([base.score(top[b, batch.last[:, k]])[:, 0] for k in range(batch.last.shape[1])],
                                 dim=1).double().cpu()
            for j, s in zip(batch.index, scores):
                out[index[j]] = s
    model.train(was)
    return out


def pair_score_rows(model: torch.nn.Module, rows: Sequence[Row], max_batch_tokens: int = 4096, pad_id: int = 0
                    ) -> torch.Tensor:
    """``[n_rows, 2]`` reward-model scores of pair rows (:func:`branch_scores`): what scoring chosen and rejected
    one by one gives, with the prompt computed once per pair and the shared prefix once per batch."""
    scores = branch_scores(model, rows, max_batch_tokens, pad_id)
    return torch.stack(scores) if scores else torch.zeros((0, 2), dtype=torch.float64)


@torch.no_grad()
def check_equivalence(model: torch.nn.Module, rows: Sequence[Row], upto: int, *, pad_id: int = 0,
                      dtypes: Sequence[torch.dtype] = (torch.float32,)) -> dict[str, float]:
    """Max abs difference of the scored-token logits: the plain HF model on each branch as its own sequence
    vs cached trunk (each storage dtype in ``dtypes``, shared prefix) + head on the packed rows."""
    model.eval()
    head = lm_head_of(model)
    ref_rows = []
    for r in rows:  # reference: each branch as its own plain sequence through the full HF model
        for br in sorted(set(r.branch) - {0}) or [0]:
            keep = [j for j, x in enumerate(r.branch) if x in (0, br)]
            logits = model(input_ids=torch.tensor([[r.input_ids[j] for j in keep]], device=_device(model))).logits[0]
            pos_of = {j: k for k, j in enumerate(keep)}
            ref_rows += [logits[pos_of[s]] for s, lb in zip(r.label_src, r.label_branch) if lb == br]
    ref = torch.stack(ref_rows).float()
    out = {"logit_absmax": float(ref.abs().max())}
    for dtype in dtypes:
        cache = build_trunk_cache(model, rows, upto, dtype=dtype, pad_id=pad_id, log=lambda s: None)
        batch, hidden, prefix = cache.batch(list(range(len(rows))), pad_id, _device(model), _dtype(model))
        top = head_forward(model, cache, batch, hidden, prefix)
        got = head(top[batch.label_b, batch.label_src]).float()
        out[str(dtype).replace("torch.", "")] = float((got - ref).abs().max())
        out["shared_prefix"] = len(cache.prefix_ids)
    return out


# --------------------------------------------------------------------------- trainable top layers


def attach_top_lora(model: torch.nn.Module, top_layers: int, r: int, alpha: int,
                    targets: Sequence[str] | str = ("q_proj", "k_proj", "v_proj", "o_proj"),
                    task_type: str = "CAUSAL_LM", modules_to_save: list[str] | None = None, seed: int = 0) -> Any:
    """A peft model with LoRA on layers ``N-top_layers .. N-1`` only (a standard, saveable adapter)."""
    from peft import LoraConfig, get_peft_model

    N = n_layers(model)
    cfg = LoraConfig(task_type=task_type, r=r, lora_alpha=alpha, lora_dropout=0.0,
                     target_modules=targets if isinstance(targets, str) else list(targets),
                     layers_to_transform=list(range(N - top_layers, N)), modules_to_save=modules_to_save, bias="none")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return get_peft_model(model, cfg)


def train_top_layers_in_full(model: torch.nn.Module, top_layers: int,
                             extra_modules: Sequence[str] = ()) -> list[torch.nn.Parameter]:
    """Make layers ``N-top_layers..N-1``, the final norm and ``extra_modules`` trainable in full (everything else
    frozen); returns the trainable parameters."""
    N = n_layers(model)
    dec = decoder_of(model)
    for p in model.parameters():
        p.requires_grad_(False)
    modules = list(dec.layers[N - top_layers:]) + [dec.norm] + [getattr(model, name) for name in extra_modules]
    params = []
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(True)
            params.append(p)
    return params
