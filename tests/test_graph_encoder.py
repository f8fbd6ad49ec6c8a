"""Graph encoder (GNN soft prompts) trained jointly with LoRA on a tiny LLaMA for a few SFT steps."""

from __future__ import annotations

import pytest
import torch
from graph_fixtures import RECORDS
from graph_fixtures import tiny_llama as _tiny
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer

from radimpress_lib.clinical.graph import EntityGraph, extract_graph
from radimpress_lib.llm import prompting
from radimpress_lib.llm.graph_encoder import GraphEncoder, GraphPrefixModel, encode_graphs


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir):
    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


def test_encode_graphs_dedups_and_handles_empty(tokenizer) -> None:
    g = extract_graph("Small left pleural effusion. Small left pleural effusion.")
    batch = encode_graphs([g, EntityGraph()], tokenizer)
    assert batch.n_graphs == 2
    assert int((batch.node_graph == 0).sum()) == 3  # small, pleura, effusion (deduplicated)
    assert int((batch.node_graph == 1).sum()) == 1  # the "no findings" node
    assert batch.edge_index.shape == (2, 4)  # modify + located_at, each with its reverse
    with pytest.raises(TypeError, match="graph #0"):
        encode_graphs(["text"], tokenizer)  # type: ignore[list-item]


def test_prefix_depends_on_graph(tokenizer) -> None:
    model = _tiny(len(tokenizer))
    enc = GraphEncoder(64, d_node=32, n_layers=2, n_prefix=3)
    graphs = [extract_graph(r["findings"]) for r in RECORDS[:2]]
    out = enc(encode_graphs(graphs, tokenizer), model.get_input_embeddings())
    assert out.shape == (2, 3, 64)
    assert not torch.allclose(out[0], out[1])
    flipped = extract_graph("No left pleural effusion. The heart is normal in size.")
    out2 = enc(encode_graphs([flipped], tokenizer), model.get_input_embeddings())
    assert not torch.allclose(out[0], out2[0])  # status is part of the node


def test_joint_training_with_lora_and_generation(tokenizer) -> None:
    torch.manual_seed(0)
    lm = get_peft_model(_tiny(len(tokenizer)), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                          lora_dropout=0.0))
    model = GraphPrefixModel(lm, GraphEncoder(64, d_node=32, n_layers=2, n_prefix=4))
    ds, _ = prompting.build_sft_dataset(tokenizer, RECORDS, max_len=128)
    width = max(len(x) for x in ds["input_ids"])
    pad = tokenizer.pad_token_id or 0
    ids = torch.tensor([x + [pad] * (width - len(x)) for x in ds["input_ids"]])
    labels = torch.tensor([x + [-100] * (width - len(x)) for x in ds["labels"]])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ds["input_ids"]])
    graphs = encode_graphs([extract_graph(r["findings"]) for r in RECORDS], tokenizer)

    params = model.trainable_parameters()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in names) and any(n.startswith("encoder.") for n in names)
    assert not any("embed_tokens" in n for n in names)  # the LLM itself stays frozen
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(8):
        out = model(ids, graphs, attention_mask=mask, labels=labels)
        opt.zero_grad()
        out.loss.backward()
        assert model.encoder.out_proj.weight.grad is not None and model.encoder.out_proj.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert any(n.startswith("encoder.layers.") for n in changed)  # the GNN learned
    assert any("lora_B" in n for n in changed)
    assert not any("embed_tokens" in n or ("base_layer" in n) for n in changed)

    prompt = prompting.build_prompt(tokenizer, RECORDS[0])
    enc = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
    new = model.generate(enc["input_ids"], encode_graphs([extract_graph(RECORDS[0]["findings"])], tokenizer),
                         attention_mask=enc["attention_mask"], max_new_tokens=5, do_sample=False,
                         pad_token_id=pad)
    assert new.shape[0] == 1 and 1 <= new.shape[1] <= 5
