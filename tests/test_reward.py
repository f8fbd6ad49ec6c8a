"""Preference pairs, corruptions and the reward model on a tiny random model (radimpress_lib.train.reward)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from style_synth import records

from radimpress_lib.clinical import style
from radimpress_lib.core import jsonio
from radimpress_lib.core.config import RewardStageConfig
from radimpress_lib.llm import models, prompting
from radimpress_lib.train import reward


@pytest.fixture(scope="module")
def style_model():
    return style.fit_style_groups(records(90), k_min=3, k_max=3, seed=0, unseen=None)


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer, _ = models.load_model_and_tokenizer("tiny-llama", seed=0)
    return model, tokenizer


def test_build_pairs_style_and_factual(style_model):
    train = records(60)
    pairs, info = reward.build_pairs(train, style_model, 20, 0, "train")
    assert len(pairs) == 20 and info["style"] == 10 and info["factual"] == 10
    groups = dict(zip((r["impression"] for r in train), style_model.assign(train)))
    for p in pairs:
        target = p["style"].split()[1].rstrip(".")
        if p["pair_type"].startswith("style:"):
            # chosen is the target reader's impression, rejected another reader's with the same content
            assert groups[p["chosen"]] == target
            if p["pair_type"] == "style:swap":
                assert groups[p["rejected"]] != target
                assert reward.label_signature(p["chosen"]) == reward.label_signature(p["rejected"])
        else:
            assert p["pair_type"].startswith("factual:") and groups[p["chosen"]] == target
    assert pairs == reward.build_pairs(train, style_model, 20, 0, "train")[0]
    with pytest.raises(ValueError, match="never the test split"):
        reward.build_pairs(records(6, split="test"), style_model, 4, 0, "test")


def test_balanced_factual_mix_takes_rare_types_where_they_apply(style_model):
    train = records(90)
    groups = style_model.assign(train)
    natural, n_info = reward.build_factual_pairs(train, groups, style_model, 30, 0)
    balanced, b_info = reward.build_factual_pairs(train, groups, style_model, 30, 0, mix="balanced")
    for pairs, info in ((natural, n_info), (balanced, b_info)):
        kinds = [p["pair_type"].removeprefix("factual:") for p in pairs]
        assert info["types"] == {k: kinds.count(k) for k in info["types"]} and sum(info["types"].values()) == 30
    # balanced: no fewer types used, and the counts closer together than the natural draw's
    spread = lambda counts: max(counts.values()) - min(v for v in counts.values() if v)  # noqa: E731
    used = lambda counts: sum(v > 0 for v in counts.values())  # noqa: E731
    assert used(b_info["types"]) >= used(n_info["types"])
    assert spread(b_info["types"]) < spread(n_info["types"])
    assert natural == reward.build_factual_pairs(train, groups, style_model, 30, 0)[0]  # natural: as before
    assert reward.build_pairs(train, style_model, 20, 0, "train", factual_mix="balanced")[1]["factual_info"]["mix"] \
        == "balanced"
    with pytest.raises(ValueError, match="factual pair mix"):
        reward.build_factual_pairs(train, groups, style_model, 4, 0, mix="uniform")


def test_unseen_group_is_left_out_of_pairs():
    train = records(90)
    model = style.fit_style_groups(train, k_min=3, k_max=3, seed=0, unseen="R3")
    pairs, _ = reward.build_pairs(train, model, 40, 0, "train")
    unseen_texts = {r["impression"] for r, g in zip(train, model.assign(train)) if g == "R3"}
    assert pairs and all("R3" not in p["style"] and p["chosen"] not in unseen_texts for p in pairs)


def test_restyle_fallback_when_no_same_content_partner(style_model):
    # only one reader reports a mass: no same-label partner, so the pair is a rewrite
    train = records(30, styles="A") + records(30, seed=1, styles="B")
    for r in train:
        if "effusion" in r["impression"] and r["impression"].startswith("1."):
            r["impression"] = "1. Large left upper lobe mass. 2. No active disease."
    pairs, info = reward.build_style_pairs(train, style_model.assign(train), style_model, 60, 0)
    assert info["restyle"] > 0 and any(p["pair_type"] == "style:restyle" for p in pairs)


def test_restyle_share_makes_restyles_where_swaps_exist(style_model):
    train = records(90)
    groups = style_model.assign(train)
    default, d_info = reward.build_style_pairs(train, groups, style_model, 30, 0)
    assert default == reward.build_style_pairs(train, groups, style_model, 30, 0, restyle_share=0.0)[0]
    assert d_info["swap"] > 0
    for share in (0.5, 1.0):
        pairs, info = reward.build_style_pairs(train, groups, style_model, 30, 0, restyle_share=share)
        kinds = [p["pair_type"] for p in pairs]
        assert len(pairs) == 30 and info["restyle"] == kinds.count("style:restyle") >= share * 30 - 1
        texts = dict(zip((r["impression"].strip() for r in train), groups))
        for p in pairs:
            assert p["chosen"] != p["rejected"] and texts[p["chosen"]] == p["style"].split()[1].rstrip(".")
    assert reward.build_pairs(train, style_model, 20, 0, "train", restyle_share=1.0)[1]["style_info"]["swap"] == 0
    with pytest.raises(ValueError, match="restyle_share"):
        reward.build_style_pairs(train, groups, style_model, 4, 0, restyle_share=1.5)


def test_fit_pairs_to_length_truncates_and_counts(style_model, tiny):
    _, tokenizer = tiny
    pairs, _ = reward.build_pairs(records(20), style_model, 6, 0, "train")
    pairs[0]["record"]["findings"] = "The heart is normal in size. " * 80
    fitted, stats = reward.fit_pairs_to_length(pairs, tokenizer, 256)
    assert stats == {"truncated": 1, "dropped": 0} and fitted[0]["record"]["findings"].endswith("[...]")
    assert pairs[0]["record"]["findings"].startswith("The heart")  # input not modified
    _, stats = reward.fit_pairs_to_length(pairs, tokenizer, 40)
    assert stats["dropped"] == len(pairs)


def test_reward_model_trains_saves_head_and_reloads(style_model, tiny, tmp_path):
    model, tokenizer = tiny
    pairs, _ = reward.build_pairs(records(30), style_model, 8, 0, "train")
    cfg = RewardStageConfig(trainer="trl", max_steps=2, per_device_batch=4, logging_steps=1, lora_last_layers=1,
                            learning_rate=1e-2)
    init = reward.reward_model_from_causal_lm(model, seed=0).score.weight.detach().clone()
    rm, result = reward.train_reward_model(model, tokenizer, pairs, cfg, tmp_path, seed=0, log=lambda s: None)
    assert result.global_step == 2 and result.loss_history and (tmp_path / "reward_result.json").is_file()
    assert result.n_trainable_params < result.n_params / 10
    trained_names = [n for n, p in rm.named_parameters() if p.requires_grad]
    assert any("score" in n for n in trained_names) and all("layers.0." not in n for n in trained_names)
    scorer = reward.RewardScorer(rm, tokenizer, batch_size=3)
    scores = reward.score_pairs(scorer, pairs)
    # length-sorted batches give each text its own score back, in input order (one at a time: no padding)
    singles = reward.score_pairs(reward.RewardScorer(rm, tokenizer, batch_size=1), pairs)
    for col in ("reward_chosen", "reward_rejected"):
        assert (singles[col] - scores[col]).abs().max() < 1e-4
    assert scores["reward_chosen"].nunique() > 1
    # RL groups: completions of one prompt scored as branches of one row give the same scores
    prompts = [prompting.build_messages(p["record"], p["style"]) for p in pairs[:3] for _ in range(3)]
    answers = [a for p in pairs[:3] for a in (p["chosen"], p["rejected"], p["chosen"] + " Stable.")]
    one_by_one = scorer(prompts, answers)
    shared = scorer(prompts, answers, share_prompts=True)
    assert max(abs(a - b) for a, b in zip(one_by_one, shared)) < 1e-4 and len(set(shared)) > 3
    reloaded = reward.load_reward_model(model, tmp_path / "adapter", seed=0)
    assert not torch.allclose(reloaded.score.weight, init)  # the trained head was saved (modules_to_save)
    again = reward.score_pairs(reward.RewardScorer(reloaded, tokenizer, batch_size=8), pairs)
    assert (again["margin"] - scores["margin"]).abs().max() < 1e-4
    with pytest.raises(FileNotFoundError):
        reward.load_reward_model(model, tmp_path / "missing")


def test_reward_model_can_leave_out_the_retrieval_context(style_model, tiny, tmp_path, monkeypatch):
    import trl

    model, tokenizer = tiny
    pairs, _ = reward.build_pairs(records(30), style_model, 4, 0, "train")
    with_context = [dict(p, record=dict(p["record"], similar_impressions=["Other reader: no acute disease."]))
                    for p in pairs]
    seen_prompts = []

    samplers = []

    class Spy(trl.RewardTrainer):
        def __init__(self, *a, train_dataset=None, **kw):
            seen_prompts.extend(train_dataset["prompt"])
            super().__init__(*a, train_dataset=train_dataset, **kw)
            samplers.append(self._get_train_sampler(self.train_dataset))

    monkeypatch.setattr(trl, "RewardTrainer", Spy)
    cfg = RewardStageConfig(trainer="trl", max_steps=1, per_device_batch=4, lora_last_layers=1, prompt_similar=False)
    rm, _ = reward.train_reward_model(model, tokenizer, with_context, cfg, tmp_path, seed=0, log=lambda s: None)
    from transformers.trainer_pt_utils import LengthGroupedSampler

    assert isinstance(samplers[0], LengthGroupedSampler)  # batches grouped by the precomputed lengths
    assert len(seen_prompts) == 4 and not any(prompting.SIMILAR_HEADING in m["content"]
                                              for prompt in seen_prompts for m in prompt)
    # the scorer reads the same view: a context-carrying prompt scores as the prompt without it
    blind = reward.score_pairs(reward.RewardScorer(rm, tokenizer, show_similar=False), with_context)
    plain = reward.score_pairs(reward.RewardScorer(rm, tokenizer), pairs)
    assert (blind["margin"] - plain["margin"]).abs().max() < 1e-5
    seeing = reward.score_pairs(reward.RewardScorer(rm, tokenizer), with_context)
    assert (seeing["reward_chosen"] - plain["reward_chosen"]).abs().max() > 1e-6
    # lengths are measured on the view the reward model reads
    long = [dict(p, record=dict(p["record"], similar_impressions=["word " * 200])) for p in pairs]
    assert reward.fit_pairs_to_length(long, tokenizer, 256, show_similar=False)[1] == {"truncated": 0, "dropped": 0}
    assert reward.fit_pairs_to_length(long, tokenizer, 256)[1] != {"truncated": 0, "dropped": 0}


def test_pairwise_accuracy_tables(tmp_path):
    scores = pd.DataFrame({"pair_type": ["style:swap", "style:swap", "factual:negation", "factual:laterality"],
                           "family": ["style", "style", "factual", "factual"], "margin": [1.0, -0.5, 2.0, 0.1]})
    table = reward.pairwise_accuracy(scores).set_index(["level", "name"])
    assert table.loc[("family", "style"), "accuracy"] == 0.5 and table.loc[("all", "all"), "accuracy"] == 0.75
    assert reward.accuracy_summary(scores) == {"factual_pair_acc": 1.0, "n_factual": 2, "style_pair_acc": 0.5,
                                               "n_style": 2}
    path = tmp_path / "metrics.json"
    path.write_text('{"sft": {"rougeL": 1.0}, "n": 3}')
    merged = jsonio.merge_json(path, {"reward_model": {"style_pair_acc": 0.5}})
    assert merged == {"sft": {"rougeL": 1.0}, "n": 3, "reward_model": {"style_pair_acc": 0.5}}
