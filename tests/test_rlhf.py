"""DPO, online RL (GRPO/RLOO), rewards, guards and fine-stage evaluation on a tiny random model (radimpress_lib.train.rlhf)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from peft import PeftModel
from style_synth import records

from radimpress_lib.clinical import style
from radimpress_lib.core.config import DPOStageConfig, RewardStageConfig, RLStageConfig
from radimpress_lib.evaluation import metrics, style_eval
from radimpress_lib.llm import models
from radimpress_lib.train import reward, rlhf


@pytest.fixture(scope="module")
def style_model():
    return style.fit_style_groups(records(90), k_min=3, k_max=3, seed=0, unseen=None)


def _tiny():
    model, tokenizer, _ = models.load_model_and_tokenizer("tiny-llama", seed=0)
    return model, tokenizer


def test_factual_consistency():
    findings = "There is a small right pleural effusion. No pneumothorax."
    assert rlhf.factual_consistency(findings, "Small right pleural effusion.") == 1.0
    assert rlhf.factual_consistency(findings, "Right pleural effusion and pneumothorax.") == pytest.approx(2 / 3)
    assert rlhf.factual_consistency(findings, "No acute cardiopulmonary abnormality.") == 0.0
    assert rlhf.factual_consistency("Lungs are clear.", "No acute disease.") == 1.0
    assert rlhf.factual_consistency(findings, "  ") == 0.0


def test_reward_functions_and_guards():
    cfg = RLStageConfig()
    funcs = rlhf.RewardFunctions(None, cfg)
    logged = {}
    completions = [[{"role": "assistant", "content": "No acute disease."}], [{"role": "assistant", "content": "x " * 30}]]
    length = funcs.length(None, completions, reference=["No active disease.", "Clear lungs."],
                          log_metric=lambda k, v: logged.__setitem__(k, v))
    assert length[0] == 0.0 and length[1] < -2
    assert logged["guard/distinct_ratio"] == 1.0 and logged["guard/length_ratio"] > 5
    assert funcs.factual(None, ["Right lower lobe pneumonia."], findings=["Right lower lobe pneumonia."]) == [1.0]
    assert funcs.reward_model(None, ["a", "b"]) == [0.0, 0.0]
    assert [f.__name__ for f in funcs.functions] == ["reward_model", "factual", "length"]
    assert funcs.weights == [cfg.w_reward_model, cfg.w_factual, cfg.w_length]
    g = rlhf.guards(["No acute disease."] * 4, ["No acute disease.", "Clear.", "Effusion.", "Normal chest."], cfg)
    assert g["distinct_ratio"] == 0.25 and not g["distinct_ok"] and g["length_ok"]
    with pytest.raises(ValueError):
        RLStageConfig(guard_length_ratio=[2.0, 1.0])


def test_compact_lm_head_gives_the_same_log_probs():
    from trl.trainer.utils import add_fused_lm_head

    model, _ = _tiny()
    add_fused_lm_head(model)
    ids = torch.randint(0, 1000, (2, 12))
    labels = ids.clone()
    labels[:, :8] = -100
    full = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
    with rlhf.compact_lm_head_on_cpu():
        compact = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
    assert torch.allclose(full, compact, atol=1e-5) and (compact[:, :7] == 0).all()


def test_rl_prompts_are_train_only_and_fit(style_model):
    _, tokenizer = _tiny()
    train = records(20)
    train[0]["findings"] = "The heart is normal in size. " * 60
    ds, stats = rlhf.rl_prompt_dataset(train, style_model, 20, 0, tokenizer, 200)
    assert len(ds) == 20 and stats["truncated"] == 1
    assert set(ds.column_names) == {"prompt", "findings", "reference", "group", "report_id"}
    assert all(p[0]["content"].count("Radiologist ") == 1 for p in ds["prompt"])
    with pytest.raises(ValueError, match="test"):
        rlhf.rl_prompt_dataset(records(4, split="test"), style_model, 4, 0, tokenizer, 200)


def test_dpo_then_grpo_then_loading(style_model, tmp_path, monkeypatch):
    """DPO (2 steps) and GRPO (2 steps) on the tiny model; KL reference = SFT; adapters reload for evaluation."""
    train = records(40)
    model, tokenizer = _tiny()
    pairs, _ = reward.build_pairs(train, style_model, 8, 0, "train")
    dpo_cfg = DPOStageConfig(trainer="trl", max_steps=2, per_device_batch=4, lora_last_layers=1, learning_rate=1e-2)
    _, dpo_result = rlhf.train_dpo(model, tokenizer, pairs, dpo_cfg, tmp_path / "dpo", 0, log=lambda s: None)
    assert dpo_result.global_step == 2 and any("rewards/margins" in h for h in dpo_result.log_history)
    assert (tmp_path / "dpo" / "adapter" / "adapter_config.json").is_file()
    assert json.loads((tmp_path / "dpo" / "result.json").read_text())["stage"] == "dpo"

    # reward model, then RL continuing the DPO adapter
    base, tokenizer = _tiny()
    rm_cfg = RewardStageConfig(trainer="trl", max_steps=1, per_device_batch=4, lora_last_layers=1)
    rm, _ = reward.train_reward_model(base, tokenizer, pairs, rm_cfg, tmp_path / "rm", 0, log=lambda s: None)
    policy_base, tokenizer = _tiny()
    sft_state = {k: v.clone() for k, v in policy_base.state_dict().items()}
    policy = PeftModel.from_pretrained(policy_base, str(tmp_path / "dpo" / "adapter"), is_trainable=True)
    rl_cfg = RLStageConfig(trainer="trl", prompts=4, max_steps=2, num_generations=2, prompts_per_step=2,
                           max_new_tokens=6, learning_rate=1e-2)
    prompts, _ = rlhf.rl_prompt_dataset(train, style_model, 4, 0, tokenizer, 320)
    funcs = rlhf.RewardFunctions(reward.RewardScorer(rm, tokenizer), rl_cfg)
    rl_model, rl_result = rlhf.train_rl(policy, tokenizer, prompts, funcs, rl_cfg, tmp_path / "rl", 0, log=lambda s: None)
    assert rl_result.global_step == 2 and rl_result.settings["kl_reference"].startswith("SFT model")
    steps = [h for h in rl_result.log_history if "reward" in h]
    assert len(steps) == 2 and all("kl" in h and "rewards/factual/mean" in h and "guard/length_ratio" in h for h in steps)
    assert len(funcs.steps) == 2
    # the KL reference adapter is the identity: reference log-probs are the SFT model's
    ref_b = [p for n, p in rl_model.named_parameters() if ".ref." in n and "lora_B" in n]
    assert ref_b and all(torch.count_nonzero(p) == 0 for p in ref_b)
    saved = (tmp_path / "rl" / "adapter")
    assert (saved / "adapter_config.json").is_file() and not (saved / "ref").exists()
    # the base weights were not touched
    assert all(torch.equal(sft_state[k], v) for k, v in rl_model.get_base_model().state_dict().items()
               if k in sft_state and "lora" not in k)
    fig = rlhf.plot_rl_curves(rl_result.log_history)
    assert len(fig.axes) == 3
    assert len(rlhf.plot_dpo_curves(dpo_result.log_history).axes) == 2


def test_style_evaluation_and_tables(style_model):
    test = records(12, seed=3, split="test")
    targets, slots, unseen = style_eval.test_style_slots(style_model, test, records(30), 2, 0)
    assert targets == style_model.assign(test) and not any(unseen)
    assert all(s.startswith(f"Radiologist {t}.") for s, t in zip(slots, targets))
    clf = style.fit_style_classifier([r["impression"] for r in records(60)], style_model.assign(records(60)))
    refs = [r["impression"] for r in test]
    systems = {"reference": refs, "wrong": ["No acute disease."] * len(refs)}
    scores = style_eval.style_evaluation(clf, systems, targets, refs, n_boot=50, seed=0)
    assert scores["reference"]["style_accuracy"] == 1.0 and scores["reference"]["length_ratio"] == 1.0
    assert scores["wrong"]["style_accuracy"] < 0.5
    lo, hi = scores["wrong"]["style_accuracy_ci"]
    assert lo <= scores["wrong"]["style_accuracy"] <= hi
    # every synthetic impression carries its reader's normal phrase: nothing to add, all template
    assert scores["reference"]["normal_statement_rate"] == 100.0
    assert scores["reference"]["normal_statement_added_rate"] is None
    assert scores["reference"]["style_accuracy_template"] == 1.0 and scores["reference"]["style_accuracy_no_template"] is None
    table = style_eval.per_radiologist_table(clf, systems, targets, refs, unseen)
    assert set(table["radiologist"]) == set(targets) and len(table) == 2 * len(set(targets))
    per = {name: metrics.compute_per_example(p, refs, [r["findings"] for r in test], embed_model=False)
           for name, p in systems.items()}
    content = style_eval.content_by_radiologist(per, list(systems), targets, unseen, n_boot=30, seed=0)
    ref_rows = content[content["system"] == "reference"]
    assert np.allclose(ref_rows["rougeL"], 100.0) and (ref_rows["n"].sum() == len(test))


def test_template_insertion_counts_normal_phrases_added_to_abnormal_studies():
    refs = ["Right lower lobe pneumonia.", "Cardiomegaly.", "No acute disease.", "Small left effusion."]
    drafts = ["Right lower lobe pneumonia. No acute disease.", "Cardiomegaly.", "No acute disease.",
              "No acute cardiopulmonary abnormality."]
    got = style_eval.template_insertion(drafts, refs)
    assert got["n_references_without_normal_statement"] == 3
    assert got["normal_statement_added_rate"] == pytest.approx(200 / 3)  # reports 1 and 4
    assert got["normal_statement_rate"] == 75.0
    assert style_eval.template_insertion(refs, refs)["normal_statement_added_rate"] == 0.0
    with pytest.raises(ValueError, match="3 predictions for 4"):
        style_eval.template_insertion(drafts[:3], refs)


def test_unseen_radiologist_gets_fewshot_slot():
    train = records(90)
    model = style.fit_style_groups(train, k_min=3, k_max=3, seed=0, unseen="R2")
    test = records(9, seed=4, split="test")
    targets, slots, unseen = style_eval.test_style_slots(model, test, train, 2, 0)
    for t, s, u in zip(targets, slots, unseen):
        assert u == (t == "R2")
        assert ("Example impressions" in s) == u


def test_graph_consistency_penalises_errors():
    findings = "There is a small right pleural effusion. No pneumothorax."
    good = rlhf.graph_consistency(findings, "Small right pleural effusion.")
    bad = rlhf.graph_consistency(findings, "Pneumothorax. No pleural effusion.")
    assert good == 1.0 and 0 < bad < good
    funcs = rlhf.RewardFunctions(None, RLStageConfig())
    both = funcs.factual(None, ["Pneumothorax. No pleural effusion."], findings=[findings])[0]
    assert both == pytest.approx(0.5 * (rlhf.factual_consistency(findings, "Pneumothorax. No pleural effusion.") + bad))


def test_review_pairs_follow_the_review_stage_switch(tmp_path):
    from radimpress_lib.core import config

    params = config.load_params("ci-tiny", {"run": {"output_dir": str(tmp_path)}, "review": {"pairs_to_dpo": False}})
    pairs, info = rlhf.review_pairs(params)
    assert pairs == [] and "false" in info["reason"]
    params = params.override({"review": {"pairs_to_dpo": True}})
    pairs, info = rlhf.review_pairs(params)
    assert pairs == [] and "no review database" in info["reason"]


def test_rloo_runs_one_step(style_model, tmp_path):
    train = records(20)
    base, tokenizer = _tiny()
    from peft import get_peft_model

    policy = get_peft_model(base, rlhf._lora(4, 8, None))
    rl_cfg = RLStageConfig(trainer="trl", algorithm="rloo", prompts=2, max_steps=1, num_generations=2,
                           prompts_per_step=2, max_new_tokens=4)
    prompts, _ = rlhf.rl_prompt_dataset(train, style_model, 2, 0, tokenizer, 320)
    _, result = rlhf.train_rl(policy, tokenizer, prompts, rlhf.RewardFunctions(None, rl_cfg), rl_cfg, tmp_path, 0,
                              log=lambda s: None)
    assert result.stage == "rloo" and result.global_step == 1 and any("reward" in h for h in result.log_history)


def _tiny_policy(layers):
    from peft import get_peft_model

    base, tokenizer = _tiny()
    return get_peft_model(base, rlhf._lora(4, 8, layers)), tokenizer


def test_group_rows_score_each_completion_like_its_own_sequence():
    """The cached GRPO log-probs: prompt once + G completions as branches equals each completion scored alone."""
    from radimpress_lib.llm import trunk
    from radimpress_lib.train import rl_cached

    policy, _ = _tiny_policy([1])
    with torch.no_grad():  # a non-identity adapter, so policy and reference differ
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    prompts = [[5, 6, 7, 8, 9], [5, 6, 11, 12]]
    comps = [[[20, 21, 2], [22], [20, 23, 24]], [[30, 31], [32, 33, 34], [30]]]
    rows = trunk.group_rows(prompts, comps)
    assert [r.label_branch.count(2) for r in rows] == [1, 3] and rows[0].last == [7, 8, 11]
    P = trunk.shared_prefix_length(rows)
    assert P == 2
    batch = trunk.collate([r.shifted(P) for r in rows], [0, 1])
    upto = rl_cached.adapted_from(policy)
    assert upto == 1
    with torch.no_grad():
        prefix0 = trunk.embed(policy, torch.tensor([rows[0].input_ids[:P]]))
        h, prefix = trunk.run_layers(policy, trunk.embed(policy, batch.input_ids), 0, upto, batch.mask,
                                     batch.position_ids, prefix0)
        got = rl_cached._token_logps(policy, h, prefix, batch, upto, 1.0)
        with policy.disable_adapter():
            got_ref = rl_cached._token_logps(policy, h, prefix, batch, upto, 1.0)
        want, want_ref = [], []
        for p, group in zip(prompts, comps):
            for c in group:
                ids = torch.tensor([p + c])
                for m, out in ((policy, want), (None, want_ref)):
                    if m is None:
                        with policy.disable_adapter():
                            logits = policy(input_ids=ids).logits[0]
                    else:
                        logits = policy(input_ids=ids).logits[0]
                    lp = torch.log_softmax(logits.float(), -1)
                    out += [float(lp[len(p) - 1 + j, t]) for j, t in enumerate(c)]
    assert torch.allclose(got.double(), torch.tensor(want, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(got_ref.double(), torch.tensor(want_ref, dtype=torch.float64), atol=1e-4)
    assert not torch.allclose(got, got_ref, atol=1e-3)
    # the trainer's path: trunk.layer_passes puts every row in one (longest-first) batch
    with torch.no_grad():
        (b2, h2, p2), = trunk.layer_passes(policy, rows, upto, 2 * max(len(r) for r in rows), 0)
        got2 = rl_cached._token_logps(policy, h2, p2, b2, upto, 1.0)
    per_row = [sum(len(c) for c in g) for g in comps]
    starts = [0, per_row[0]]
    order = torch.cat([torch.arange(starts[i], starts[i] + per_row[i]) for i in b2.index])
    assert sorted(b2.index) == [0, 1]
    assert torch.allclose(got2.double(), torch.tensor(want, dtype=torch.float64)[order], atol=1e-4)


def test_group_advantages():
    from radimpress_lib.train import rl_cached

    adv, std = rl_cached.group_advantages(torch.tensor([1.0, 3.0, 2.0, 2.0], dtype=torch.float64), 2)
    half = 1 / (math.sqrt(2) + 1e-4)
    assert adv.tolist() == pytest.approx([-half, half, 0.0, 0.0])
    assert std.tolist() == pytest.approx([math.sqrt(2), 0.0])


def test_cached_grpo_trains_the_adapter_and_logs_trl_keys(style_model, tmp_path):
    train = records(20)
    policy, tokenizer = _tiny_policy([1])
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    rl_cfg = RLStageConfig(trainer="cached", prompts=4, max_steps=2, num_generations=3, prompts_per_step=2,
                           max_new_tokens=5, learning_rate=1e-2)
    prompts, _ = rlhf.rl_prompt_dataset(train, style_model, 4, 0, tokenizer, 320)
    funcs = rlhf.RewardFunctions(None, rl_cfg)
    model, result = rlhf.train_rl(policy, tokenizer, prompts, funcs, rl_cfg, tmp_path / "rl", 0, log=lambda s: None)
    assert result.stage == "grpo" and result.global_step == 2
    assert result.settings["trainer"] == "cached" and result.settings["kl_reference"].startswith("SFT model")
    steps = [h for h in result.log_history if "reward" in h]
    assert len(steps) == 2 and len(funcs.steps) == 2
    for key in ("kl", "reward_std", "rewards/reward_model/mean", "rewards/factual/mean", "rewards/length/mean",
                "completions/mean_length", "guard/length_ratio", "guard/distinct_ratio"):
        assert all(key in h for h in steps), key
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and all("lora_" in n and ".layers.1." in n for n in changed)
    assert (tmp_path / "rl" / "adapter" / "adapter_config.json").is_file()
    assert json.loads((tmp_path / "rl" / "result.json").read_text())["global_step"] == 2
    assert len(rlhf.plot_rl_curves(result.log_history).axes) == 3


def test_rl_start_sft_is_a_fresh_adapter_that_leaves_the_sft_model_unchanged(tmp_path):
    """rl.start: sft puts a fresh adapter (the DPO stage's LoRA settings) on the SFT model: same logits, trainable
    LoRA only on the DPO stage's last layers, no DPO adapter needed."""
    from radimpress_lib.core import config

    params = config.load_params("ci-tiny", {"rl": {"start": "sft"}, "dpo": {"lora_r": 4, "lora_last_layers": 1}})
    base, tokenizer = _tiny()
    ids = torch.tensor([tokenizer("no acute disease", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
    policy = rlhf.load_trainable_dpo(base, params)
    with torch.no_grad():
        assert torch.allclose(policy(input_ids=ids).logits, before)
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    last = base.config.num_hidden_layers - 1
    assert trainable and all("lora_" in n and f".layers.{last}." in n for n in trainable)
    assert policy.peft_config["default"].r == 4
    with pytest.raises(FileNotFoundError, match="no DPO adapter"):
        rlhf.load_trainable_dpo(_tiny()[0], config.load_params("ci-tiny", {"run": {"output_dir": str(tmp_path)}}))


def test_cached_rl_refuses_rloo_and_a_policy_without_adapter():
    from radimpress_lib.train import rl_cached

    with pytest.raises(ValueError, match="GRPO only"):
        RLStageConfig(trainer="cached", algorithm="rloo")
    base, _ = _tiny()
    for p in base.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        rl_cached.adapted_from(base)


def test_sample_groups_matches_plain_generation():
    """Prefilling each prompt once, sharing its cache and dropping finished rows decodes what generate() decodes
    (near-zero temperature: the argmax path), left padding and positions included."""
    from transformers import GenerationConfig

    from radimpress_lib.train import rl_cached

    policy, _ = _tiny_policy([1])
    prompts = [[5, 6, 7, 8, 9, 10], [5, 6, 11]]
    ids = torch.tensor([prompts[0], [0, 0, 0] + prompts[1]])
    mask = (torch.arange(6)[None] >= torch.tensor([[0], [3]])).long()

    def greedy(end):
        gen = GenerationConfig(do_sample=False, max_new_tokens=12, pad_token_id=0, eos_token_id=end)
        with torch.no_grad():
            out = policy.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
        rows = []
        for row in out[:, 6:].tolist():
            cut = next((j for j, t in enumerate(row) if t in end), len(row) - 1)
            rows.append(row[: cut + 1])
        return rows

    free = greedy([999])
    # an end token prompt 0 meets first at step k >= 1 and prompt 1 not before it: prompt 1 then decodes on alone
    k, tok = next((k, t) for k, t in enumerate(free[0]) if k >= 1 and t not in free[0][:k]
                  and t not in free[1][: k + 1])
    want = greedy([tok])
    end = [tok]
    assert len(want[0]) == k + 1 < len(want[1])
    cfg = RLStageConfig(max_new_tokens=12, temperature=1e-6)
    got = rl_cached.sample_groups(policy, prompts, 3, cfg, pad_id=0, end_ids=end)
    assert got == [[want[0]] * 3, [want[1]] * 3]
    torch.manual_seed(0)
    sampled = rl_cached.sample_groups(policy, prompts, 4, RLStageConfig(max_new_tokens=5), pad_id=0, end_ids=[999])
    assert all(len(c) == 5 for g in sampled for c in g) and len({tuple(c) for c in sampled[0]}) > 1
