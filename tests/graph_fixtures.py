"""Shared fixtures of the graph-encoder tests: a few synthetic reports and a tiny random LLaMA."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

RECORDS = [
    {"report_id": "a", "findings": "Small left pleural effusion. The heart is normal in size.",
     "impression": "Small left pleural effusion."},
    {"report_id": "b", "findings": "Right lower lobe opacity, likely pneumonia. No pneumothorax.",
     "impression": "Right lower lobe pneumonia."},
    {"report_id": "c", "findings": "The lungs are clear. No pleural effusion or pneumothorax.",
     "impression": "No acute cardiopulmonary abnormality."},
    {"report_id": "d", "findings": "Mild cardiomegaly. Lungs are clear. Stable left basilar atelectasis.",
     "impression": "Mild cardiomegaly."},
]


def tiny_llama(vocab: int) -> LlamaForCausalLM:
    """A 2-layer, 64-wide LLaMA with seeded random weights (same weights on every call), fp32, eval mode."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).float().eval()
