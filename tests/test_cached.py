"""The cached-trunk trainer (radimpress_lib.llm.trunk, radimpress_lib.train.cached) on tiny random Llama models:
the cached trunk + top layers equal the full model, adapters round-trip, resume, caches are keyed and shared, and
SFT / reward model / DPO train through it and load with the usual loaders."""

from __future__ import annotations

import json
import time

import datasets
import pytest
import torch
from style_synth import records
from test_sft import _records, tiny_model
from transformers import AutoTokenizer

from radimpress_lib.clinical import style
from radimpress_lib.core import config
from radimpress_lib.core.config import DPOStageConfig, RewardStageConfig, SFTStageConfig
from radimpress_lib.llm import checkpoints, models, prompting, retrieval, trunk
from radimpress_lib.train import cached, reward, rlhf, sft


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir):
    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


@pytest.fixture(scope="module")
def examples(tokenizer):
    ds, _ = prompting.build_sft_dataset(tokenizer, _records(12), max_len=256)
    return ds


@pytest.fixture(scope="module")
def style_model():
    return style.fit_style_groups(records(90), k_min=3, k_max=3, seed=0, unseen=None)


def _deep(vocab: int, attn: str = "sdpa", layers: int = 4, seed: int = 0):
    """A 4-layer tiny Llama with a peaked init (attention leaks would show)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, attn_implementation=attn, initializer_range=0.2)
    return LlamaForCausalLM(cfg).float().eval()


def _settings(**over) -> cached.HeadSettings:
    base = dict(stage="sft", top_layers=2, lora_r=4, lora_alpha=8, learning_rate=1e-2, batch_size=4, max_steps=4,
                logging_steps=1, warmup_ratio=0.0, seed=3)
    base.update(over)
    return cached.HeadSettings(**base)


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cached_trunk_plus_head_equals_the_full_model(tokenizer, examples, attn):
    model = _deep(len(tokenizer), attn)
    rows = trunk.sft_rows(examples["input_ids"], examples["labels"])
    for upto in (0, 2, 3):
        out = trunk.check_equivalence(model, rows, upto, pad_id=tokenizer.pad_token_id,
                                      dtypes=(torch.float32, torch.float16))
        assert out["shared_prefix"] > 20  # the system prompt is computed once
        assert out["float32"] < 5e-5 * max(1.0, out["logit_absmax"]), out
        assert out["float16"] < 5e-2 * max(1.0, out["logit_absmax"])


def test_pair_rows_share_the_prompt_exactly(tokenizer, style_model):
    model = _deep(len(tokenizer))
    pairs, _ = reward.build_pairs(records(30), style_model, 6, 0, "train")
    rows = rlhf.dpo_rows(tokenizer, pairs)
    assert all(set(r.branch) == {0, 1, 2} for r in rows)
    # a pair costs ~1 sequence: prompt once, only the answers twice
    assert sum(len(r) for r in rows) < 0.6 * sum(2 * r.branch.count(0) for r in rows)
    out = trunk.check_equivalence(model, rows, 2, pad_id=tokenizer.pad_token_id)
    assert out["float32"] < 5e-5 * max(1.0, out["logit_absmax"])
    # DPO reference log-probs of the cache pass == whole-model log-probs of each answer on its own
    cache = trunk.build_trunk_cache(model, rows, 2, ref_logps=True, log=lambda s: None)
    plain = trunk.sequence_logps(model, rows)
    torch.testing.assert_close(cache.extras["ref_logps"], plain, rtol=0, atol=1e-4)
    for r, lp in zip(rows, plain):
        for br, got in ((1, lp[0]), (2, lp[1])):
            keep = [j for j, x in enumerate(r.branch) if x in (0, br)]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([[r.input_ids[j] for j in keep]])).logits[0], -1)
            pos = {j: k for k, j in enumerate(keep)}
            want = sum(float(logp[pos[s], t]) for s, t, b in zip(r.label_src, r.label_tgt, r.label_branch) if b == br)
            assert float(got) == pytest.approx(want, abs=1e-4)


def test_cache_rows_are_reused_keyed_and_stored(tokenizer, examples, tmp_path):
    model = _deep(len(tokenizer))
    rows = trunk.sft_rows(examples["input_ids"], examples["labels"])
    first = trunk.build_trunk_cache(model, rows[:8], 2, tokenizer=tokenizer, log=lambda s: None)
    second = trunk.build_trunk_cache(model, rows[4:], 2, tokenizer=tokenizer, reuse=[first], log=lambda s: None)
    assert second.n_reused == 4
    fresh = trunk.build_trunk_cache(model, rows[4:], 2, tokenizer=tokenizer, log=lambda s: None)
    torch.testing.assert_close(second.hidden, fresh.hidden, rtol=0, atol=1e-6)
    assert second.key == fresh.key
    # another trunk (other weights below the layer) is never reused, and has another key
    other = _deep(len(tokenizer), seed=1)
    third = trunk.build_trunk_cache(other, rows[4:], 2, tokenizer=tokenizer, reuse=[first], log=lambda s: None)
    assert third.n_reused == 0 and third.key != fresh.key
    # weights above the cache layer do not change the key (the trunk is what is cached)
    with torch.no_grad():
        model.model.layers[3].mlp.up_proj.weight.add_(1.0)
    assert trunk.build_trunk_cache(model, rows[4:], 2, tokenizer=tokenizer, log=lambda s: None).key == fresh.key
    # on disk: written under its key, read back instead of recomputed
    lines: list[str] = []
    trunk.build_trunk_cache(model, rows[:8], 2, tokenizer=tokenizer, cache_dir=tmp_path, log=lines.append)
    again = trunk.build_trunk_cache(model, rows[:8], 2, tokenizer=tokenizer, cache_dir=tmp_path, log=lines.append)
    assert (tmp_path / first.key / "meta.json").is_file() and "read from" in lines[-1]
    torch.testing.assert_close(torch.as_tensor(again.hidden), first.hidden)
    half = trunk.build_trunk_cache(model, rows[:8], 2, dtype=torch.float16, tokenizer=tokenizer, log=lambda s: None)
    assert half.key != first.key


# --------------------------------------------------------------------------- the loop


def test_plan_uses_transformers_length_grouping_and_caches_only_seen_rows():
    lengths = list(range(100, 140))
    s = _settings(batch_size=4, max_steps=-1, epochs=0.5, seed=1)
    plan = cached.plan_batches(lengths, s)
    assert len(plan) == 5 and all(e == 0 and len(b) == 4 for e, b in plan)
    needed, remapped = cached.needed_rows(plan)
    assert len(needed) == 20 and sorted(i for _, b in remapped for i in b) == list(range(20))
    two = cached.plan_batches(lengths, _settings(batch_size=4, max_steps=-1, epochs=2.0, seed=1))
    assert len(two) == 20 and {e for e, _ in two} == {0, 1} and two[:5] == plan
    assert [b for _, b in two[:10]] != [b for _, b in two[10:]]  # each epoch its own seeded order


def test_sft_trains_top_layers_and_the_adapter_round_trips(tokenizer, examples, tmp_path):
    model = _deep(len(tokenizer))
    base_ids = torch.tensor([examples[0]["input_ids"]])
    with torch.no_grad():
        before = model(input_ids=base_ids).logits
    run = cached.train_sft_cached(model, tokenizer, examples["input_ids"], examples["labels"],
                                  _settings(lora_targets="all-linear"), tmp_path,
                                  eval_input_ids=examples["input_ids"][:4], eval_labels=examples["labels"][:4],
                                  log=lambda s: None)
    r = run.result
    assert r.global_step == 4 and r.trunk_layer == 2 and r.final_eval_loss is not None
    assert run.eval_cache.n_reused == 4  # validation rows identical to train rows are copied
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["layers_to_transform"] == [2, 3] and len(cfg["target_modules"]) == 7
    assert not (tmp_path / "checkpoints").exists() and (tmp_path / "cached_result.json").is_file()
    trained = [n for n, p in run.model.named_parameters() if p.requires_grad]
    assert trained and all(".layers.2." in n or ".layers.3." in n for n in trained)
    merged = checkpoints.apply_adapter(_deep(len(tokenizer)), tmp_path / "adapter")
    with torch.no_grad():
        got = merged(input_ids=base_ids).logits
        torch.testing.assert_close(got, run.model(input_ids=base_ids).logits, rtol=1e-4, atol=1e-5)
    assert (got - before).abs().max() > 1e-3
    # the validation loss reported is the full model's loss on those examples
    with torch.no_grad():
        ref = []
        for ids, lab in zip(examples["input_ids"][:4], examples["labels"][:4]):
            logits = merged(input_ids=torch.tensor([ids])).logits[0, :-1]
            ref.append(torch.nn.functional.cross_entropy(logits, torch.tensor(lab[1:]), ignore_index=-100,
                                                         reduction="sum"))
    n = sum(sum(1 for x in lab[1:] if x != -100) for lab in examples["labels"][:4])
    assert r.final_eval_loss == pytest.approx(float(sum(ref)) / n, rel=1e-4)


def test_full_top_layers_and_time_budget(tokenizer, examples, tmp_path):
    model = _deep(len(tokenizer))
    frozen = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    top = model.model.layers[3].mlp.up_proj.weight.detach().clone()
    s = _settings(method="full", learning_rate=1e-3, max_steps=-1, epochs=50.0)
    run = cached.train_sft_cached(model, tokenizer, examples["input_ids"], examples["labels"], s, tmp_path,
                                  time_budget_s=1.5, log=lambda s: None)
    assert run.result.stopped_by_budget and run.result.global_step < 150
    assert torch.equal(frozen, model.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(top, model.model.layers[3].mlp.up_proj.weight)
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_resume_after_kill_matches_uninterrupted_run(tokenizer, examples, tmp_path):
    s = _settings(max_steps=6, save_steps=2, lora_targets="all-linear")
    full = cached.train_sft_cached(_deep(len(tokenizer)), tokenizer, examples["input_ids"], examples["labels"], s,
                                   tmp_path / "full", log=lambda s: None)

    def kill(step, _seconds):
        if step == 4:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        cached.train_sft_cached(_deep(len(tokenizer)), tokenizer, examples["input_ids"], examples["labels"], s,
                                tmp_path / "killed", on_step=kill, log=lambda s: None)
    assert (tmp_path / "killed" / "checkpoints" / "checkpoint-4").is_dir()
    lines: list[str] = []
    resumed = cached.train_sft_cached(_deep(len(tokenizer)), tokenizer, examples["input_ids"], examples["labels"], s,
                                      tmp_path / "killed", log=lines.append)
    assert resumed.result.resumed_from.endswith("checkpoint-4") and any("resuming" in x for x in lines)
    assert [h["loss"] for h in resumed.result.loss_history] == pytest.approx(
        [h["loss"] for h in full.result.loss_history], rel=1e-5)
    a = dict(resumed.model.named_parameters())
    for n, p in full.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(a[n], p, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the stages through their usual entry points


def test_train_sft_dispatches_to_the_cached_trainer(tokenizer, examples, tmp_path):
    cfg = SFTStageConfig(top_layers=1, max_steps=3, per_device_batch=4, logging_steps=1, learning_rate=1e-2,
                         lora_r=4, lora_alpha=8)
    assert cfg.trainer == "cached"
    res = sft.train_sft(tiny_model(len(tokenizer)), tokenizer, examples, examples.select(range(3)), cfg, tmp_path,
                        seed=0, log=lambda s: None)
    assert res.trainer == "cached" and res.global_step == 3 and res.cache["trunk_layer"] == 1
    assert res.final_eval_loss is not None and res.loss_history[-1]["step"] == 3
    assert json.loads((tmp_path / "sft_result.json").read_text())["trainer"] == "cached"
    merged = checkpoints.apply_adapter(tiny_model(len(tokenizer)), res.final_dir)
    assert merged is not None
    with pytest.raises(ValueError, match="trl trainer"):
        SFTStageConfig(method="qlora")
    assert SFTStageConfig(method="qlora", trainer="trl").method == "qlora"
    with pytest.raises(ValueError, match="must include deduplicated"):  # notebook 02 records it; 03-09 use it
        SFTStageConfig(protocols=["published"])


def test_two_protocols_share_trunk_rows(tmp_path, monkeypatch):
    params = config.load_params("ci-tiny", {"run": {"output_dir": str(tmp_path)},
                                            "sft": {"max_steps": 2, "num_threads": 1}})
    recs = _records(20)
    for i, r in enumerate(recs):
        r["report_id"] = f"r{i}"
    dsd = datasets.DatasetDict({"train": datasets.Dataset.from_list(recs[:12]),
                                "validate": datasets.Dataset.from_list(recs[12:16])})
    published = datasets.DatasetDict({"train": datasets.Dataset.from_list(recs[:14]),
                                      "validate": datasets.Dataset.from_list(recs[12:17])})
    from radimpress_lib.data import protocols

    monkeypatch.setattr(protocols, "published_training_data", lambda p: (published, {"leakage_guard": False}))
    runs = sft.train_protocols(params, dsd, log=lambda s: None)
    assert set(runs.results) == {"deduplicated", "published"}
    assert (tmp_path / "sft" / "adapter").is_dir() and (tmp_path / "sft_published" / "adapter").is_dir()
    pub = runs.results["published"].cache
    assert pub["reused_rows"] > 0 and pub["eval_reused_rows"] > 0
    assert set(runs.table().index) == {"deduplicated", "published"}

    def unavailable(p):
        raise protocols.ProtocolUnavailable("no benchmark split")

    monkeypatch.setattr(protocols, "published_training_data", unavailable)
    runs = sft.train_protocols(params.override({"run": {"output_dir": str(tmp_path / "b")}}), dsd,
                               log=lambda s: None)
    assert set(runs.results) == {"deduplicated"} and "no benchmark" in runs.skipped["published"]


def test_published_retrieval_may_show_identical_findings_but_never_the_report_itself():
    pool = [{"report_id": "a", "findings": "Lungs clear. Heart normal.", "impression": "Normal chest."},
            {"report_id": "b", "findings": "Lungs clear. Heart normal.", "impression": "No acute disease."},
            {"report_id": "c", "findings": "Right lower lobe opacity.", "impression": "Pneumonia."}]
    dedup = retrieval.with_similar_impressions(pool[:1], pool, 2)[0]["similar_impressions"]
    assert dedup == ["Pneumonia."]  # never a report with the query's findings
    pub = retrieval.with_similar_impressions(pool[:1], pool, 2, same_findings=True)[0]["similar_impressions"]
    assert pub == ["No acute disease.", "Pneumonia."]  # its twin first, never itself
    params = config.load_params("ci-tiny", {"sft": {"retrieval_k": 2}})
    assert retrieval.with_prompt_context(params, pool[:1], pool, protocol="published")[0]["similar_impressions"] == pub
    with pytest.raises(ValueError, match="protocol"):
        retrieval.with_prompt_context(params, pool[:1], pool, protocol="leaky")


def test_reward_model_cached_scores_as_the_plain_scorer_and_reloads(style_model, tmp_path):
    model, tok, _ = models.load_model_and_tokenizer("tiny-llama", seed=0)
    pairs, _ = reward.build_pairs(records(30), style_model, 8, 0, "train")
    cfg = RewardStageConfig(max_steps=2, per_device_batch=4, logging_steps=1, lora_last_layers=1, learning_rate=1e-2)
    assert cfg.trainer == "cached"
    rm, result = reward.train_reward_model(model, tok, pairs, cfg, tmp_path, seed=0, log=lambda s: None)
    assert result.global_step == 2 and result.settings["trunk_layer"] == 1
    assert {"loss", "accuracy", "margin"} <= set(result.loss_history[-1])
    trained = [n for n, p in rm.named_parameters() if p.requires_grad]
    assert any("score" in n for n in trained) and all("layers.0." not in n for n in trained)
    rows = reward.score_pairs_rows(rm, tok, pairs)
    plain = reward.score_pairs(reward.RewardScorer(rm, tok, batch_size=3), pairs)
    for col in ("reward_chosen", "reward_rejected", "margin"):
        assert (rows[col] - plain[col]).abs().max() < 1e-4
    reloaded = reward.load_reward_model(model, tmp_path / "adapter", seed=0)
    again = reward.score_held_out(reloaded, tok, pairs, cfg)
    assert (again["margin"] - rows["margin"]).abs().max() < 1e-4
    long = [dict(p, record=dict(p["record"], findings="The heart is normal in size. " * 60)) for p in pairs]
    with pytest.raises(ValueError, match="fit_pairs_to_length"):
        reward.train_reward_model(model, tok, long, cfg.model_copy(update={"max_length": 64}), tmp_path / "x", 0,
                                  log=lambda s: None)


def test_dpo_cached_moves_the_policy_and_loads_as_a_policy(style_model, tmp_path):
    model, tok, _ = models.load_model_and_tokenizer("tiny-llama", seed=0)
    pairs, _ = reward.build_pairs(records(40), style_model, 8, 0, "train")
    rows = rlhf.dpo_rows(tok, pairs)
    ref = trunk.sequence_logps(model, rows)
    cfg = DPOStageConfig(epochs=3.0, per_device_batch=4, lora_last_layers=1, learning_rate=5e-2, logging_steps=1)
    policy, result = rlhf.train_dpo(model, tok, pairs, cfg, tmp_path, 0, log=lambda s: None)
    assert result.stage == "dpo" and result.global_step == 6
    assert {"rewards/accuracies", "rewards/margins"} <= set(result.log_history[-1])
    assert json.loads((tmp_path / "result.json").read_text())["stage"] == "dpo"
    acc = rlhf.dpo_implicit_accuracy(policy, ref, rows, cfg.beta)
    assert acc["implicit_acc"] > 0.5 and acc["mean_margin"] > 0  # the policy moved towards the chosen answers
    fresh, _, _ = models.load_model_and_tokenizer("tiny-llama", seed=0)
    merged = checkpoints.apply_adapter(fresh, tmp_path / "adapter")
    assert rlhf.dpo_implicit_accuracy(merged, ref, rows, cfg.beta) == pytest.approx(acc, abs=1e-6)


def test_gpu_smoke_writes_a_skip_note_without_cuda(tmp_path):
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the real smoke test")
    out = tmp_path / "gpu_smoke.json"
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "bench/gpu_smoke.py", "--out", str(out)], capture_output=True, text=True,
                          cwd=config.PROJECT_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["cuda"] is False and "no CUDA" in doc["skipped"] and time.perf_counter() - t < 300
