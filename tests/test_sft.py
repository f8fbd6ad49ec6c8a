"""SFT on tiny random Llama models (radimpress_lib.train.sft): loss masking, padding-free, resume."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from peft import get_peft_model_state_dict
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, TrainerCallback
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from radimpress_lib.llm import checkpoints, prompting
from radimpress_lib.train import sft
from radimpress_lib.train.sft import SFTRunMismatchError, SFTStageConfig


@pytest.fixture(scope="session")
def tokenizer(smollm2_tokenizer_dir):
    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


def tiny_model(vocab_size: int, seed: int = 0, attn: str = "sdpa", init_std: float = 0.02) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, attn_implementation=attn, initializer_range=init_std,
    )
    return LlamaForCausalLM(config).float()


def _records(n: int) -> list[dict]:
    sites = ["right lower lobe", "left apex", "lingula", "retrocardiac region"]
    return [
        {
            "report_id": f"s{i}",
            "indication": "Shortness of breath." if i % 2 else "",
            "comparison": "",
            "findings": f"Opacity in the {sites[i % 4]}. " + "Heart size is normal. " * (1 + i % 5),
            "impression": f"Findings suggest pneumonia in the {sites[i % 4]}." if i % 3 else "No acute disease.",
        }
        for i in range(n)
    ]


def _cfg(**over) -> SFTStageConfig:
    base = dict(
        trainer="trl", max_steps=6, per_device_batch=2, logging_steps=1, save_steps=2,
        lora_r=4, lora_alpha=8, lora_dropout=0.1, learning_rate=5e-3, max_seq_len=256,
    )
    base.update(over)
    return SFTStageConfig(**base)


@pytest.fixture(scope="module")
def train_ds(tokenizer):
    ds, _ = prompting.build_sft_dataset(tokenizer, _records(12), max_len=256)
    return ds


# --------------------------------------------------------------------------- config


def test_config_validation_and_fingerprint():
    with pytest.raises(ValueError, match="max_steps"):
        SFTStageConfig(max_steps=0)
    with pytest.raises(ValueError, match="padding_free"):
        SFTStageConfig(padding_free=True, group_by_length=True)
    with pytest.raises(ValueError):
        SFTStageConfig(method="prefix")
    with pytest.raises(ValueError):
        SFTStageConfig(sft_unknown=1)
    a = SFTStageConfig()
    assert a.fingerprint() == SFTStageConfig(logging_steps=99, num_threads=1).fingerprint()
    assert a.fingerprint() != SFTStageConfig(learning_rate=a.learning_rate / 2).fingerprint()
    assert SFTStageConfig(lora_targets=["q_proj", "v_proj"]).lora_targets == ["q_proj", "v_proj"]
    assert not any(n.startswith("sft_") for n in SFTStageConfig.model_fields)  # cfg.sft.learning_rate, not .sft_*


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error path")
def test_cuda_only_methods_fail_clearly_on_cpu(tokenizer, train_ds, tmp_path):
    with pytest.raises(RuntimeError, match="CUDA"):
        sft.qlora_quantization_config()
    with pytest.raises(RuntimeError, match="CUDA"):
        sft.load_unsloth_model("any", _cfg(), seed=0)
    with pytest.raises(RuntimeError, match="CUDA"):
        sft.train_sft(tiny_model(len(tokenizer)), tokenizer, train_ds, None, _cfg(method="qlora"), tmp_path, 0)
    with pytest.raises(RuntimeError, match="CUDA"):
        sft.train_sft(tiny_model(len(tokenizer)), tokenizer, train_ds, None, _cfg(use_unsloth=True), tmp_path, 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error path")
def test_low_precision_refused_on_cpu(tokenizer, train_ds, tmp_path):
    model = tiny_model(len(tokenizer)).to(torch.bfloat16)
    with pytest.raises(ValueError, match="fp32 only"):
        sft.train_sft(model, tokenizer, train_ds, None, _cfg(), tmp_path, 0)


# --------------------------------------------------------------------------- loss


def _per_example_losses(model, examples):
    """Reference: each example alone, no padding, standard HF shifted cross-entropy (summed)."""
    out = []
    with torch.no_grad():
        for ex in examples:
            ids = torch.tensor([ex["input_ids"]])
            labels = torch.tensor([ex["labels"]])
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
            out.append(torch.nn.functional.cross_entropy(logits, labels[0, 1:], ignore_index=-100, reduction="sum"))
    return torch.stack(out)


def _split_token_losses(model, batch):
    """Per-example summed loss from one batched forward (padded or padding-free)."""
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        # use_cache=False as in training: with a cache, transformers does not derive the
        # block-diagonal mask from position_ids and packed examples attend to each other.
        logits = model(**inputs, use_cache=False).logits[:, :-1]
        tgt = batch["labels"][:, 1:]
        tok = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), tgt, ignore_index=-100, reduction="none"
        )
    return tok, tgt


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_has_no_cross_example_attention(tokenizer, train_ds, attn):
    # A larger init than usual makes attention peaked, so any cross-example leak shows in the loss.
    model = tiny_model(len(tokenizer), attn=attn, init_std=0.2).eval()
    examples, seen = [], set()
    for row in train_ds:  # three examples of different lengths: padding / flattening matter
        if len(row["input_ids"]) not in seen and len(examples) < 3:
            seen.add(len(row["input_ids"]))
            examples.append({"input_ids": row["input_ids"], "labels": row["labels"]})
    assert len(examples) == 3
    ref = _per_example_losses(model, examples)
    pad_id = tokenizer.pad_token_id

    # Padded (right padding + attention mask), as TRL's default collator builds it.
    padded = DataCollatorForLanguageModeling(pad_token_id=pad_id)(examples)
    tok, _ = _split_token_losses(model, padded)
    torch.testing.assert_close(tok.sum(1), ref, rtol=5e-5, atol=1e-4)

    # Padding-free: one flattened row with restarting position_ids, no attention mask.
    flat = DataCollatorForLanguageModeling(pad_token_id=pad_id, padding_free=True)(examples)
    assert flat["input_ids"].shape[0] == 1 and "attention_mask" not in flat
    keep = {k: flat[k] for k in ("input_ids", "position_ids", "labels")}
    tok, _ = _split_token_losses(model, keep)
    bounds = torch.tensor([0] + [len(e["input_ids"]) for e in examples]).cumsum(0)
    per_ex = torch.stack([tok[0, bounds[i]: bounds[i + 1]].sum() for i in range(3)])
    torch.testing.assert_close(per_ex, ref, rtol=5e-5, atol=1e-4)
    # The training loss on the flattened batch is the token-mean of the isolated examples.
    with torch.no_grad():
        loss, _, tgt = sft.completion_loss(model, {k: keep[k] for k in ("input_ids", "position_ids")}, keep["labels"])
    torch.testing.assert_close(loss, ref.sum() / tgt.numel(), rtol=1e-5, atol=1e-5)

    # Control: without restarting positions the examples see each other and the losses change.
    leaky = dict(keep, position_ids=torch.arange(keep["input_ids"].shape[1])[None])
    tok, _ = _split_token_losses(model, leaky)
    leaky_ex = torch.stack([tok[0, bounds[i]: bounds[i + 1]].sum() for i in range(3)])
    assert torch.allclose(leaky_ex[0], ref[0], rtol=1e-4, atol=1e-4)
    assert (leaky_ex[1:] - ref[1:]).abs().min() > 0.1


def test_sparse_lm_head_loss_equals_full_loss(tokenizer, train_ds):
    model = tiny_model(len(tokenizer))
    examples = [{"input_ids": train_ds[i]["input_ids"], "labels": train_ds[i]["labels"]} for i in (1, 2)]
    for padding_free in (False, True):
        batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=padding_free)(
            examples
        )
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
        full = model(**inputs, labels=batch["labels"], use_cache=False).loss
        loss, logits, tgt = sft.completion_loss(model, inputs, batch["labels"])
        torch.testing.assert_close(loss, full, rtol=1e-5, atol=1e-5)
        n_completion = sum(sum(1 for t in e["labels"] if t != -100) for e in examples)
        assert logits.shape == (n_completion, len(tokenizer)) and tgt.shape == (n_completion,)
        # Gradients agree too.
        model.zero_grad()
        full.backward()
        g_full = model.model.layers[0].mlp.up_proj.weight.grad.clone()
        model.zero_grad()
        sft.completion_loss(model, inputs, batch["labels"])[0].backward()
        torch.testing.assert_close(model.model.layers[0].mlp.up_proj.weight.grad, g_full, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- training runs


class _KillAt(TrainerCallback):
    """Simulates a killed process right after the checkpoint of ``step`` was written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"simulated kill at step {self.step}")


def _adapter(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


@pytest.mark.parametrize("layout", ["padding_free", "group_by_length"])
def test_resume_after_kill_matches_uninterrupted_run(tokenizer, train_ds, tmp_path, layout):
    cfg = _cfg(padding_free=layout == "padding_free", group_by_length=layout == "group_by_length")
    lines: list[str] = []

    full_model = tiny_model(len(tokenizer))
    full = sft.train_sft(full_model, tokenizer, train_ds, None, cfg, tmp_path / "full", seed=3, log=lines.append)
    assert full.global_step == 6 and full.resumed_from is None

    with pytest.raises(KeyboardInterrupt):
        sft.train_sft(tiny_model(len(tokenizer)), tokenizer, train_ds, None, cfg, tmp_path / "killed", seed=3,
                      callbacks=[_KillAt(4)], log=lines.append)
    assert (tmp_path / "killed" / "checkpoints" / "checkpoint-4").is_dir()
    assert not (tmp_path / "killed" / "adapter").exists()

    resumed_model = tiny_model(len(tokenizer))  # a fresh process would rebuild the base model the same way
    resumed = sft.train_sft(resumed_model, tokenizer, train_ds, None, cfg, tmp_path / "killed", seed=3,
                            log=lines.append)
    assert resumed.resumed_from is not None and resumed.resumed_from.endswith("checkpoint-4")
    assert resumed.global_step == full.global_step == 6
    # Same losses at every logged step (history before the kill comes from the checkpoint) ...
    assert [h["step"] for h in resumed.loss_history] == [h["step"] for h in full.loss_history]
    for a, b in zip(resumed.loss_history, full.loss_history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), (a, b)
    # ... and the same final weights.
    wa, wb = _adapter(resumed_model), _adapter(full_model)
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    # Training moved the weights (LoRA B starts at zero).
    assert any(v.abs().sum() > 0 for k, v in wa.items() if "lora_B" in k)
    # The resumed run only counted the tokens it processed itself (steps 5-6).
    assert 0 < resumed.train_tokens < full.train_tokens
    assert any("resuming from" in line for line in lines)
    assert any(line.startswith("sft step 6/6") for line in lines)

    # A different run in the same folder is refused instead of silently mixing checkpoints.
    with pytest.raises(SFTRunMismatchError, match="sft_fingerprint"):
        sft.train_sft(tiny_model(len(tokenizer)), tokenizer, train_ds, None, _cfg(learning_rate=1e-3),
                      tmp_path / "killed", seed=3, log=lines.append)
    with pytest.raises(SFTRunMismatchError, match="resume=False"):
        sft.train_sft(tiny_model(len(tokenizer)), tokenizer, train_ds, None, cfg, tmp_path / "killed", seed=3,
                      resume=False, log=lines.append)


def test_records_in_full_finetuning_out(tokenizer, tmp_path):
    """Canonical records are tokenized (truncations counted); full FT trains and saves every weight."""
    records = _records(6)
    records[0]["findings"] = "Innumerable small nodules in both lungs. " * 40
    ds = datasets.Dataset.from_list(records)
    model = tiny_model(len(tokenizer))
    before = model.model.layers[1].mlp.down_proj.weight.detach().clone()
    cfg = _cfg(method="full", max_steps=-1, epochs=1, per_device_batch=3, max_seq_len=160,
               learning_rate=1e-3, save_steps=100)
    res = sft.train_sft(model, tokenizer, ds, ds.select(range(2)), cfg, tmp_path, seed=0, log=lambda s: None)
    assert res.method == "full" and res.global_step == 2 and res.n_trainable_params == res.n_params
    assert res.dataset_stats["n_truncated"] == 1 and res.dataset_stats["truncated_report_ids"] == ["s0"]
    # One epoch: every useful token is seen exactly once.
    assert res.train_tokens == res.dataset_stats["total_tokens"]
    assert res.completion_tokens == res.dataset_stats["completion_tokens"]
    assert res.tokens_per_s > 0 and res.wall_time_s > 0
    assert res.final_eval_loss is not None and len(res.loss_history) == 2
    assert not torch.equal(before, model.model.layers[1].mlp.down_proj.weight)
    final = Path(res.final_dir)
    assert final.name == "model" and (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
    saved = json.loads((tmp_path / "sft_result.json").read_text())
    assert saved["global_step"] == 2 and saved["dataset_stats"]["n_truncated"] == 1


def test_lora_targets_and_adapter_saved(tokenizer, train_ds, tmp_path):
    model = tiny_model(len(tokenizer))
    cfg = _cfg(max_steps=2, warmup_ratio=0.0, lora_targets=["q_proj", "v_proj"], save_steps=100)
    res = sft.train_sft(model, tokenizer, train_ds, None, cfg, tmp_path, seed=0, log=lambda s: None)
    # r=4 on q (64->64) and v (64->32) in 2 layers: A (4x64) + B (64x4) + A (4x64) + B (32x4) per layer.
    assert res.n_trainable_params == 2 * (4 * 64 + 64 * 4 + 4 * 64 + 32 * 4)
    adapter_cfg = json.loads((Path(res.final_dir) / "adapter_config.json").read_text())
    assert sorted(adapter_cfg["target_modules"]) == ["q_proj", "v_proj"]
    assert (Path(res.final_dir) / "adapter_model.safetensors").is_file()
    # The saved adapter, merged into a fresh base model, reproduces the trained model.
    merged = checkpoints.apply_adapter(tiny_model(len(tokenizer)), res.final_dir)
    model.eval()  # no LoRA dropout
    ids = torch.tensor([train_ds[0]["input_ids"]])
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
        torch.testing.assert_close(merged_logits, model(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(merged_logits, tiny_model(len(tokenizer))(input_ids=ids).logits, atol=1e-4)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        checkpoints.apply_adapter(tiny_model(len(tokenizer)), tmp_path)
