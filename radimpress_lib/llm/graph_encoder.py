"""Graph-conditioned generation: a GNN over the findings' entity graph -> k soft-prompt vectors.

The entity graph of the findings (:mod:`radimpress_lib.clinical.graph`) is encoded as follows:

1. **Node text encoder.** Each distinct entity (by key: type, name, status, laterality)
   is a node; its canonical name ("effusion", "lower lobe") is tokenised with the LLM's
   tokenizer and embedded with the LLM's own (frozen) input-embedding table, mean-pooled
   over tokens, then projected to ``d_node``. Learned embeddings of the entity type,
   status and laterality are added.
2. **Message passing** (a small relational GNN written in torch; torch_geometric is not
   needed for graphs of a few dozen nodes): ``n_layers`` layers of
   ``h_i <- LayerNorm(h_i + GELU(W_0 h_i + sum_r mean_{j in N_r(i)} W_r h_j))`` with one
   weight matrix per relation and direction (located_at, modify, suggestive_of, each
   forward and reverse).
3. **Pooling to k vectors.** ``n_prefix`` learned queries attend over the node states of
   each graph; a linear layer maps them to the LLM's hidden size. The output projection
   starts at zero scale times a learned gain, so an untrained encoder barely perturbs the
   LLM.

:class:`GraphPrefixModel` prepends the k vectors to the token embeddings of the prompt
(attention mask 1, labels -100) for training and for ``generate``; the encoder is trained
jointly with the LoRA adapter (:func:`trainable_parameters`). An empty graph is one
"no findings" node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from radimpress_lib.clinical import graph as G

__all__ = ["EDGE_TYPES", "GraphBatch", "GraphEncoder", "GraphPrefixModel", "encode_graphs"]

_TYPES = ("none", "anatomy", "observation", "modifier")
_STATUSES = (None, G.PRESENT, G.ABSENT, G.UNCERTAIN_STATUS)
_LATERALITIES = (None, "left", "right", "bilateral")
#: Edge types: each relation forward and reverse.
EDGE_TYPES = tuple(f"{r}{d}" for r in G.RELATIONS for d in ("", "^-1"))


@dataclass
class GraphBatch:
    """Several graphs as flat tensors (nodes of graph ``b`` have ``node_graph == b``)."""

    token_ids: torch.Tensor  # (N, T) node-name tokens, 0-padded
    token_mask: torch.Tensor  # (N, T) bool
    attrs: torch.Tensor  # (N, 3): type, status, laterality indices
    edge_index: torch.Tensor  # (2, E): source, target node
    edge_type: torch.Tensor  # (E,)
    node_graph: torch.Tensor  # (N,)
    n_graphs: int

    def to(self, device: torch.device | str) -> GraphBatch:
        return GraphBatch(self.token_ids.to(device), self.token_mask.to(device), self.attrs.to(device),
                          self.edge_index.to(device), self.edge_type.to(device), self.node_graph.to(device),
                          self.n_graphs)


def encode_graphs(graphs: Sequence[G.EntityGraph], tokenizer: Any, *, max_nodes: int = 48,
                  max_tokens: int = 8) -> GraphBatch:
    """Tensorise entity graphs for :class:`GraphEncoder` (nodes deduplicated by entity key).

    At most ``max_nodes`` nodes per graph are kept (in text order; relations to dropped
    nodes are dropped with them); node names are cut to ``max_tokens`` tokens.
    """
    if max_nodes < 1 or max_tokens < 1:
        raise ValueError("max_nodes and max_tokens must be >= 1")
    tok_rows: list[list[int]] = []
    attrs: list[tuple[int, int, int]] = []
    edges: list[tuple[int, int, int]] = []
    node_graph: list[int] = []
    name_cache: dict[str, list[int]] = {}

    def tokens(name: str) -> list[int]:
        if name not in name_cache:
            ids = tokenizer(name, add_special_tokens=False)["input_ids"][:max_tokens]
            name_cache[name] = ids or [0]
        return name_cache[name]

    for b, g in enumerate(graphs):
        if not isinstance(g, G.EntityGraph):
            raise TypeError(f"graph #{b}: expected EntityGraph, got {type(g).__name__}")
        key_to_node: dict[tuple, int] = {}
        id_to_node: dict[int, int] = {}
        for e in g.entities:
            k = e.key()
            if k not in key_to_node:
                if len(key_to_node) >= max_nodes:
                    continue
                key_to_node[k] = len(tok_rows)
                tok_rows.append(tokens(e.name))
                attrs.append((_TYPES.index(e.type), _STATUSES.index(e.status if e.type == "observation" else None),
                              _LATERALITIES.index(e.laterality if e.laterality in _LATERALITIES else None)))
                node_graph.append(b)
            id_to_node[e.id] = key_to_node[k]
        if not key_to_node:
            tok_rows.append(tokens("no findings"))
            attrs.append((0, 0, 0))
            node_graph.append(b)
        for r in g.relations:
            if r.src in id_to_node and r.dst in id_to_node:
                s, d = id_to_node[r.src], id_to_node[r.dst]
                t = 2 * G.RELATIONS.index(r.rel)
                edges.append((s, d, t))
                edges.append((d, s, t + 1))
    width = max(len(t) for t in tok_rows)
    ids = torch.zeros((len(tok_rows), width), dtype=torch.long)
    mask = torch.zeros((len(tok_rows), width), dtype=torch.bool)
    for i, t in enumerate(tok_rows):
        ids[i, : len(t)] = torch.tensor(t)
        mask[i, : len(t)] = True
    edges = sorted(set(edges))
    edge_index = torch.tensor([[s for s, _, _ in edges], [d for _, d, _ in edges]], dtype=torch.long).reshape(2, -1)
    return GraphBatch(ids, mask, torch.tensor(attrs, dtype=torch.long), edge_index,
                      torch.tensor([t for _, _, t in edges], dtype=torch.long), torch.tensor(node_graph),
                      len(graphs))


class _RelationalLayer(nn.Module):
    def __init__(self, d: int, n_edge_types: int, dropout: float) -> None:
        super().__init__()
        self.self_lin = nn.Linear(d, d)
        self.rel_lin = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(n_edge_types))
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, edge_type: torch.Tensor) -> torch.Tensor:
        msg = self.self_lin(h)
        src, dst = edge_index
        for t, lin in enumerate(self.rel_lin):
            sel = edge_type == t
            if not bool(sel.any()):
                continue
            s, d = src[sel], dst[sel]
            agg = torch.zeros_like(h).index_add(0, d, lin(h[s]))
            deg = torch.zeros(h.shape[0], device=h.device, dtype=h.dtype).index_add(
                0, d, torch.ones_like(d, dtype=h.dtype))
            msg = msg + agg / deg.clamp(min=1).unsqueeze(-1)
        return self.norm(h + self.drop(nn.functional.gelu(msg)))


class GraphEncoder(nn.Module):
    """Entity graph -> ``n_prefix`` vectors of size ``d_model`` (see module docstring)."""

    def __init__(self, d_model: int, *, d_node: int = 128, n_layers: int = 2, n_prefix: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if n_prefix < 1 or n_layers < 0:
            raise ValueError("n_prefix must be >= 1 and n_layers >= 0")
        self.n_prefix = n_prefix
        self.in_proj = nn.Linear(d_model, d_node)
        self.type_emb = nn.Embedding(len(_TYPES), d_node)
        self.status_emb = nn.Embedding(len(_STATUSES), d_node)
        self.lat_emb = nn.Embedding(len(_LATERALITIES), d_node)
        self.layers = nn.ModuleList(_RelationalLayer(d_node, len(EDGE_TYPES), dropout) for _ in range(n_layers))
        self.queries = nn.Parameter(torch.randn(n_prefix, d_node) / d_node**0.5)
        self.out_proj = nn.Linear(d_node, d_model)
        self.gain = nn.Parameter(torch.tensor(0.1))

    def forward(self, batch: GraphBatch, embed_tokens: nn.Module) -> torch.Tensor:
        """``(n_graphs, n_prefix, d_model)`` soft-prompt vectors; ``embed_tokens``: the LLM's input embeddings."""
        with torch.no_grad():
            tok = embed_tokens(batch.token_ids).float()  # (N, T, d_model), frozen table
        m = batch.token_mask.unsqueeze(-1).float()
        h = self.in_proj((tok * m).sum(1) / m.sum(1).clamp(min=1))
        h = h + self.type_emb(batch.attrs[:, 0]) + self.status_emb(batch.attrs[:, 1]) + self.lat_emb(batch.attrs[:, 2])
        for layer in self.layers:
            h = layer(h, batch.edge_index, batch.edge_type)
        scores = h @ self.queries.T / h.shape[-1] ** 0.5  # (N, k)
        onehot = nn.functional.one_hot(batch.node_graph, batch.n_graphs).bool()  # (N, B)
        scores = scores.unsqueeze(1).masked_fill(~onehot.unsqueeze(-1), float("-inf"))  # (N, B, k)
        weights = torch.softmax(scores, dim=0)
        pooled = torch.einsum("nbk,nd->bkd", weights, h)
        return self.gain * self.out_proj(pooled)


class GraphPrefixModel(nn.Module):
    """A causal LM (plain or PEFT-wrapped) with graph soft prompts prepended to its input."""

    def __init__(self, lm: nn.Module, encoder: GraphEncoder, *, max_nodes: int = 48) -> None:
        super().__init__()
        self.lm = lm
        self.encoder = encoder
        self.max_nodes = max_nodes

    def _inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, graphs: GraphBatch,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if graphs.n_graphs != input_ids.shape[0]:
            raise ValueError(f"{graphs.n_graphs} graphs for a batch of {input_ids.shape[0]} sequences")
        embed = self.lm.get_input_embeddings()
        tok = embed(input_ids)
        prefix = self.encoder(graphs.to(input_ids.device), embed).to(tok.dtype)
        b, k = input_ids.shape[0], prefix.shape[1]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = {"inputs_embeds": torch.cat([prefix, tok], 1),
               "attention_mask": torch.cat([attention_mask.new_ones((b, k)), attention_mask], 1)}
        if labels is not None:
            out["labels"] = torch.cat([labels.new_full((b, k), -100), labels], 1)
        return out

    def forward(self, input_ids: torch.Tensor, graphs: GraphBatch, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs: Any) -> Any:
        return self.lm(**self._inputs(input_ids, attention_mask, graphs, labels), **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, graphs: GraphBatch, attention_mask: torch.Tensor | None = None,
                 **kwargs: Any) -> torch.Tensor:
        """New tokens only (``generate`` with ``inputs_embeds`` returns no prompt tokens).

        ``input_ids`` may be left-padded: each row's soft prompt goes after its pads, right
        before its first real token, so every row sees ``[prefix][prompt]`` at the positions
        it was trained with.
        """
        inputs = self._inputs(input_ids, attention_mask, graphs)
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask.bool()
            n_pad = (~mask).sum(1)
            if not torch.equal(mask, torch.arange(mask.shape[1], device=mask.device)[None, :] >= n_pad[:, None]):
                raise ValueError("GraphPrefixModel.generate needs left padding (pads before the prompt only)")
            k = self.encoder.n_prefix
            embeds, full_mask = inputs["inputs_embeds"], inputs["attention_mask"]
            rows = []
            for b, p in enumerate(n_pad.tolist()):
                # [prefix][pads][prompt] -> [pads][prefix][prompt]
                order = torch.cat([torch.arange(k, k + p), torch.arange(0, k), torch.arange(k + p, embeds.shape[1])])
                rows.append(order)
            order = torch.stack(rows).to(embeds.device)
            inputs = {"inputs_embeds": torch.gather(embeds, 1, order[..., None].expand(-1, -1, embeds.shape[-1])),
                      "attention_mask": torch.gather(full_mask, 1, order)}
        return self.lm.generate(**inputs, **kwargs)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Encoder parameters plus the LM's trainable ones (the LoRA adapter under PEFT)."""
        return [p for p in self.parameters() if p.requires_grad]
