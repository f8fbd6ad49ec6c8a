"""Batched generation on tiny models (radimpress_lib.llm.generation)."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from radimpress_lib.llm import generation
from radimpress_lib.llm.generation import GenerationStageConfig
from radimpress_lib.train import sft


@pytest.fixture(scope="session")
def tokenizer(smollm2_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    tok.pad_token = "<|endoftext|>"  # distinct from eos, as radimpress_lib.llm.models sets it
    return tok


def tiny_model(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, initializer_range=0.2,
    )
    return LlamaForCausalLM(config).float().eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(len(tokenizer))


def _records() -> list[dict]:
    findings = [
        "Lungs are clear.",
        "Heart size is normal. Mediastinal contours are unremarkable. No focal consolidation, effusion "
        "or pneumothorax. Degenerative changes of the thoracic spine.",
        "Small left pleural effusion.",
        "Stable cardiomegaly. Pulmonary vascular congestion. Bibasilar opacities, likely atelectasis.",
        "No acute osseous abnormality.",
        "Right upper lobe nodule measuring 8 mm. Otherwise clear.",
        "Endotracheal tube terminates 4 cm above the carina. Lines and tubes in standard position.",
    ]
    return [
        {"report_id": f"g{i}", "findings": f, "impression": f"Impression {i}.", "indication": "Pain" if i % 2 else ""}
        for i, f in enumerate(findings)
    ]


def _log_sink(lines):
    return lines.append


def test_batched_greedy_equals_one_by_one_in_input_order(model, tokenizer):
    recs = _records()
    lines: list[str] = []
    batched = generation.generate_impressions(
        model, tokenizer, recs, GenerationStageConfig(batch_size=3, max_new_tokens=12),
        model_name="tiny", log=_log_sink(lines),
    )
    single = generation.generate_impressions(
        model, tokenizer, recs, GenerationStageConfig(batch_size=1, max_new_tokens=12),
        model_name="tiny", log=lambda s: None,
    )
    assert [p["report_id"] for p in batched.predictions] == [r["report_id"] for r in recs]
    assert [p["prediction"] for p in batched.predictions] == [p["prediction"] for p in single.predictions]
    assert [p["n_new_tokens"] for p in batched.predictions] == [p["n_new_tokens"] for p in single.predictions]
    assert all(p["prediction"] for p in batched.predictions)
    # The batches really were padded (prompts of different lengths), and sorting kept padding low.
    assert batched.n_batches == 3 and 0 < batched.padding_ratio < 0.3
    assert single.padding_ratio == 0
    assert [p["reference"] for p in batched.predictions] == [r["impression"] for r in recs]
    assert any(line.startswith("gen batch 3/3 | 7/7 reports") for line in lines)


def test_common_prefix_length():
    assert generation.common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]], min_len=2) == 3
    assert generation.common_prefix_length([[1, 2, 3], [1, 2, 3, 4]], min_len=1) == 2  # each keeps a token
    assert generation.common_prefix_length([[1, 2, 3], [9, 2, 3]], min_len=1) == 0
    assert generation.common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5]], min_len=8) == 0  # too short to cache
    assert generation.common_prefix_length([]) == 0


def test_prefix_cache_gives_the_same_tokens_and_logs_it(model, tokenizer):
    recs = _records()
    runs = {}
    for cached in (True, False):
        lines: list[str] = []
        runs[cached] = generation.generate_impressions(
            model, tokenizer, recs,
            GenerationStageConfig(batch_size=3, max_new_tokens=12, prefix_cache=cached),
            model_name="tiny", log=_log_sink(lines),
        )
        runs[cached].lines = lines
    on, off = runs[True], runs[False]
    # system prompt + template + user header are shared by every prompt
    assert on.prefix_tokens > 20 and off.prefix_tokens == 0
    assert any(f"shared prefix cached: {on.prefix_tokens} tokens" in x for x in on.lines)
    assert [p["prediction"] for p in on.predictions] == [p["prediction"] for p in off.predictions]
    assert [p["n_new_tokens"] for p in on.predictions] == [p["n_new_tokens"] for p in off.predictions]
    assert on.params_hash == off.params_hash  # same outputs, same hash
    # beam search does not use the cache (it expands the batch itself)
    beams = generation.generate_impressions(
        model, tokenizer, recs[:2], GenerationStageConfig(batch_size=2, max_new_tokens=4, num_beams=2),
        model_name="tiny", log=lambda s: None,
    )
    assert beams.prefix_tokens == 0


def test_prefix_cache_uses_the_current_cache_argument_without_deprecation_warnings(model, tokenizer):
    import inspect
    import warnings

    name = generation.cache_kwarg(model)
    assert name in inspect.signature(model.forward).parameters
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecated 'past_key_values' would raise here
        generation.generate_impressions(
            model, tokenizer, _records()[:2], GenerationStageConfig(batch_size=2, max_new_tokens=3),
            model_name="tiny", log=lambda s: None,
        )


def test_beam_search_batched_equals_one_by_one(model, tokenizer):
    recs = _records()[:4]
    cfgs = [GenerationStageConfig(batch_size=b, max_new_tokens=6, num_beams=3) for b in (4, 1)]
    batched, single = (
        generation.generate_impressions(model, tokenizer, recs, c, model_name="tiny", log=lambda s: None)
        for c in cfgs
    )
    assert [p["prediction"] for p in batched.predictions] == [p["prediction"] for p in single.predictions]
    assert batched.params_hash != generation.params_hash(
        GenerationStageConfig(batch_size=4, max_new_tokens=6), {"model": "tiny"}
    )


def test_stops_at_end_of_turn_token(tokenizer, tmp_path):
    """A tiny model overfitted on two reports reproduces their impressions and stops at <|im_end|>."""
    recs = _records()[:2]
    recs[0]["impression"] = "No acute disease."
    recs[1]["impression"] = "Degenerative spine."
    model = tiny_model(len(tokenizer), seed=1)
    cfg = sft.SFTStageConfig(
        method="full", max_steps=15, per_device_batch=2, learning_rate=2e-2, warmup_ratio=0.0,
        lr_scheduler="constant_with_warmup", save_steps=1000, logging_steps=15,
    )
    sft.train_sft(model, tokenizer, datasets.Dataset.from_list(recs), None, cfg, tmp_path / "sft", seed=0,
                  log=lambda s: None)
    res = generation.generate_impressions(
        model, tokenizer, recs, GenerationStageConfig(batch_size=2, max_new_tokens=30),
        model_name="tiny", log=lambda s: None,
    )
    for pred, rec in zip(res.predictions, recs):
        assert pred["prediction"] == rec["impression"]
        assert pred["stopped"] is True
        n_imp = len(tokenizer(rec["impression"], add_special_tokens=False)["input_ids"])
        assert pred["n_new_tokens"] == n_imp  # stopped right after the impression, end token excluded
    assert res.n_not_stopped == 0


def test_jsonl_rows_and_params_hash(model, tokenizer, tmp_path):
    recs = _records()[:3]
    cfg = GenerationStageConfig(batch_size=2, max_new_tokens=4)
    model_cfg = {"model_name": "tiny-llama", "adapter": None}
    out = tmp_path / "preds" / "validate.jsonl"
    res = generation.generate_impressions(
        model, tokenizer, recs, cfg, model_name="tiny-llama", model_config=model_cfg, out_path=out,
        log=lambda s: None,
    )
    rows = generation.read_predictions_jsonl(out)
    assert res.path == str(out) and len(rows) == 3
    assert [r["report_id"] for r in rows] == ["g0", "g1", "g2"]
    expected = generation.params_hash(cfg, model_cfg)
    assert len(expected) == 64
    for row, pred in zip(rows, res.predictions):
        assert set(generation.PREDICTION_FIELDS) <= set(row)
        assert row == pred and row["model"] == "tiny-llama" and row["params_hash"] == expected
        assert row["stopped"] is False and row["n_new_tokens"] == 4  # random model: ran to max_new_tokens
    assert res.n_not_stopped == 3
    # The hash covers generation and model settings, not the logging cadence.
    assert generation.params_hash(cfg.model_copy(update={"log_every": 5}), model_cfg) == expected
    assert generation.params_hash(cfg.model_copy(update={"max_new_tokens": 5}), model_cfg) != expected
    assert generation.params_hash(cfg, {**model_cfg, "adapter": "x"}) != expected
    summary = res.summary()
    assert summary["n_reports"] == 3 and "predictions" not in summary
    json.dumps(summary)


def test_bad_inputs(model, tokenizer, tmp_path):
    cfg = GenerationStageConfig(batch_size=2, max_new_tokens=2)
    with pytest.raises(ValueError, match="styles has 1 entries for 2 records"):
        generation.generate_impressions(model, tokenizer, _records()[:2], cfg, model_name="t", styles=["a"])
    dup = _records()[:2]
    dup[1]["report_id"] = dup[0]["report_id"]
    with pytest.raises(ValueError, match=r"duplicate report_id values \['g0'\]"):
        generation.generate_impressions(model, tokenizer, dup, cfg, model_name="t")
    if not torch.cuda.is_available():
        half = tiny_model(len(tokenizer)).to(torch.bfloat16)
        with pytest.raises(ValueError, match="fp32 only"):
            generation.generate_impressions(half, tokenizer, _records()[:1], cfg, model_name="t")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"report_id": "a", "prediction": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing fields \['reference', 'model', 'params_hash'\]"):
        generation.read_predictions_jsonl(bad)
