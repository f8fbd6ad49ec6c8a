"""Graph variants of the SFT model: graph-as-text prompts, GNN prefix training, batched graph generation."""

from __future__ import annotations

import json
import random

import pytest
import torch
from graph_fixtures import RECORDS
from graph_fixtures import tiny_llama as _tiny
from transformers import AutoTokenizer

from radimpress_lib.clinical.graph import extract_graph, linearize_graph, with_findings_graph
from radimpress_lib.core import config, jsonio
from radimpress_lib.core.config import GenerationStageConfig, GraphStageConfig, SFTStageConfig
from radimpress_lib.llm import prompting, retrieval
from radimpress_lib.llm.generation import generate_impressions
from radimpress_lib.llm.graph_encoder import GraphEncoder, GraphPrefixModel
from radimpress_lib.train.graph_sft import length_grouped_batches, load_graph_prefix_model, train_graph_prefix_sft


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    tok.padding_side = "left"
    return tok


def test_graph_text_slot_in_prompt(tokenizer) -> None:
    rows = with_findings_graph(RECORDS[:2], max_items=5)
    assert rows[0]["findings_graph"] == linearize_graph(extract_graph(RECORDS[0]["findings"]), max_items=5)
    assert "effusion [present; left" in rows[0]["findings_graph"]
    assert "pneumothorax [absent]" in rows[1]["findings_graph"]
    assert "findings_graph" not in RECORDS[0]  # copies, the input is untouched
    prompt = prompting.build_prompt(tokenizer, rows[0])
    after_findings = prompt.split("Findings: ")[1]
    assert after_findings.index(prompting.GRAPH_HEADING) < after_findings.index("effusion [present")
    assert prompting.GRAPH_HEADING not in prompting.build_prompt(tokenizer, RECORDS[0])
    with pytest.raises(prompting.PromptError, match="report_id='a'.*findings_graph"):
        prompting.build_prompt(tokenizer, dict(RECORDS[0], findings_graph=["x"]))
    with pytest.raises(ValueError, match="report_id='z'.*findings"):
        with_findings_graph([{"report_id": "z", "findings": None}])


def test_with_prompt_context_graph_variants() -> None:
    params = config.load_params(config.params_path("ci-tiny"))
    pool = [dict(r, split="train") for r in RECORDS]
    plain = retrieval.with_prompt_context(params, RECORDS[:1], pool)
    assert "findings_graph" not in plain[0] and len(plain[0]["similar_impressions"]) == params.sft.retrieval_k
    text = retrieval.with_prompt_context(params, RECORDS[:1], pool, graph_variant="text")
    assert text[0]["findings_graph"].startswith("effusion [present; left")
    assert text[0]["similar_impressions"] == plain[0]["similar_impressions"]
    assert "findings_graph" not in retrieval.with_prompt_context(params, RECORDS[:1], pool, graph_variant="gnn")[0]
    with pytest.raises(ValueError, match="graph variant"):
        retrieval.with_prompt_context(params, RECORDS[:1], pool, graph_variant="nodes")
    with pytest.raises(ValueError, match="test-split"):
        retrieval.with_prompt_context(params, RECORDS[:1], [dict(RECORDS[0], split="test")])
    with pytest.raises(ValueError, match="repeats a variant"):
        GraphStageConfig(ablation_variants=["gnn", "gnn"])


def test_length_grouped_batches_cover_each_example_once() -> None:
    lengths = [random.Random(1).randint(5, 50) for _ in range(37)]
    batches = length_grouped_batches(lengths, 4, random.Random(0), mega=3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(37)) and all(len(b) <= 4 for b in batches)
    for start in range(0, 37, 12):  # sorted (longest first) within each mega-batch of 3 x 4
        chunk = flat[start: start + 12]
        assert [lengths[i] for i in chunk] == sorted((lengths[i] for i in chunk), reverse=True)
    plain = length_grouped_batches(lengths, 4, random.Random(0), mega=1)
    assert sorted(i for b in plain for i in b) == list(range(37))


def test_graph_prefix_generation_batched_equals_one_by_one(tokenizer) -> None:
    """Left-padded batches put each soft prompt after the pads: same greedy output as unbatched."""
    model = GraphPrefixModel(_tiny(len(tokenizer)), GraphEncoder(64, d_node=32, n_layers=2, n_prefix=3), max_nodes=16)
    with torch.no_grad():
        model.encoder.gain.fill_(1.0)  # a prefix that matters
    batched = generate_impressions(model, tokenizer, RECORDS, GenerationStageConfig(batch_size=4, max_new_tokens=6),
                                   model_name="tiny")
    single = generate_impressions(model, tokenizer, RECORDS, GenerationStageConfig(batch_size=1, max_new_tokens=6),
                                  model_name="tiny")
    assert batched.prefix_tokens == 0  # no shared KV prefix: the soft prompt comes first and differs per report
    assert [p["prediction"] for p in batched.predictions] == [p["prediction"] for p in single.predictions]
    assert {p["n_new_tokens"] for p in batched.predictions} != {0}
    # The graph changes what is generated: same prompts, graphs of other findings.
    swapped = [dict(r, findings=RECORDS[(i + 1) % 4]["findings"]) for i, r in enumerate(RECORDS)]
    ids = torch.tensor([[1, 2, 3, 4]])
    g = [extract_graph(r["findings"]) for r in (RECORDS[0], swapped[0])]
    from radimpress_lib.llm.graph_encoder import encode_graphs

    a = model.lm(**model._inputs(ids, None, encode_graphs(g[:1], tokenizer))).logits
    b = model.lm(**model._inputs(ids, None, encode_graphs(g[1:], tokenizer))).logits
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="left padding"):
        model.generate(torch.tensor([[5, 6, 0]]), encode_graphs(g[:1], tokenizer),
                       attention_mask=torch.tensor([[1, 1, 0]]), max_new_tokens=2)


def test_train_graph_prefix_sft_saves_and_reloads(tokenizer, tmp_path) -> None:
    sft_cfg = SFTStageConfig(max_steps=8, per_device_batch=2, grad_accum=2, learning_rate=5e-3,
                             lora_r=4, lora_alpha=8, lora_targets=["q_proj", "v_proj"],
                             logging_steps=2, warmup_ratio=0.0, lr_scheduler="constant_with_warmup",
                             max_seq_len=256, num_threads=1)
    graph_cfg = GraphStageConfig(n_prefix=3, d_node=32, n_layers=2, max_nodes=16,
                                 encoder_lr=5e-3)
    lines: list[str] = []
    result = train_graph_prefix_sft(_tiny(len(tokenizer)), tokenizer, RECORDS, RECORDS[:2], sft_cfg, graph_cfg,
                                    tmp_path / "gnn", seed=0, log=lines.append)
    assert result.method == "lora+gnn" and result.global_step == 8
    assert [h["step"] for h in result.loss_history] == [1.0, 2.0, 4.0, 6.0, 8.0]
    assert result.loss_history[-1]["loss"] < result.loss_history[0]["loss"]
    assert result.final_eval_loss is not None and result.train_tokens > 0 and result.completion_tokens > 0
    assert any("graph-sft step 8/8" in line for line in lines)
    saved = json.loads((tmp_path / "gnn" / "graph_encoder.json").read_text())
    assert saved == {"d_model": 64, "d_node": 32, "n_layers": 2, "n_prefix": 3, "max_nodes": 16}
    assert json.loads((tmp_path / "gnn" / "sft_result.json").read_text())["global_step"] == 8

    state = torch.load(tmp_path / "gnn" / "graph_encoder.pt", weights_only=True)
    fresh = GraphEncoder(64, d_node=32, n_layers=2, n_prefix=3)
    assert not torch.equal(state["layers.0.self_lin.weight"], fresh.state_dict()["layers.0.self_lin.weight"])

    model = load_graph_prefix_model(_tiny(len(tokenizer)), tmp_path / "gnn")
    assert model.max_nodes == 16 and not model.training
    out = generate_impressions(model, tokenizer, RECORDS, GenerationStageConfig(batch_size=2, max_new_tokens=8),
                               model_name="tiny")
    assert len(out.predictions) == 4
    # the trained model fits its training impressions better than the untrained one
    trained_nll = _nll(model, tokenizer, graph_cfg)
    untrained = GraphPrefixModel(_tiny(len(tokenizer)), GraphEncoder(64, d_node=32, n_layers=2, n_prefix=3))
    assert trained_nll < _nll(untrained, tokenizer, graph_cfg)

    with pytest.raises(FileNotFoundError, match="no trained graph-prefix model"):
        load_graph_prefix_model(_tiny(len(tokenizer)), tmp_path / "missing")
    with pytest.raises(ValueError, match="LoRA adapter"):
        train_graph_prefix_sft(_tiny(len(tokenizer)), tokenizer, RECORDS, None,
                               sft_cfg.model_copy(update={"method": "full"}), graph_cfg, tmp_path / "x", seed=0)


def _nll(model: GraphPrefixModel, tokenizer, graph_cfg: GraphStageConfig) -> float:
    from radimpress_lib.train.graph_sft import _batch_loss, _graphs

    ex = prompting.build_sft_dataset(tokenizer, RECORDS, 250)[0].to_dict()
    with torch.no_grad():
        loss, _, _ = _batch_loss(model, ex, _graphs(RECORDS), range(4), tokenizer, graph_cfg.max_nodes, 0, None)
    return float(loss)


def _params_in(tmp_path):
    params = config.load_params(config.params_path("ci-tiny"))
    return params.model_copy(update={"run": params.run.model_copy(update={"output_dir": str(tmp_path)})})


def test_load_sft_baseline_checks_predictions(tmp_path) -> None:
    from radimpress_lib.llm import generation
    from radimpress_lib.notebook import graph_ablation

    params = _params_in(tmp_path)
    test = [{"report_id": r["report_id"], "impression": r["impression"]} for r in RECORDS]
    with pytest.raises(FileNotFoundError, match="sft.json: missing; run notebook 02"):
        graph_ablation.load_sft_baseline(params, test)
    (tmp_path / "sft.json").write_text(json.dumps({"wall_time_s": 10.0, "tokens_per_s": 100.0}))
    with pytest.raises(FileNotFoundError, match="sft.jsonl: missing; run notebook 05"):
        graph_ablation.load_sft_baseline(params, test)
    good = generation.params_hash(params.gen, {"model": params.model.name, "adapter": "sft/adapter",
                                               "sft": params.params_hash("sft")})
    rows = [{"report_id": r["report_id"], "prediction": f"pred {r['report_id']}", "reference": r["impression"],
             "model": "m", "params_hash": good} for r in reversed(test)]
    generation.write_predictions_jsonl(rows[1:], tmp_path / "predictions" / "sft.jsonl")
    with pytest.raises(ValueError, match="no prediction for 1 of 4 test reports"):
        graph_ablation.load_sft_baseline(params, test)
    generation.write_predictions_jsonl(rows, tmp_path / "predictions" / "sft.jsonl")
    base = graph_ablation.load_sft_baseline(params, test)
    assert base["predictions"] == ["pred a", "pred b", "pred c", "pred d"]  # test order, not file order
    stale = [dict(r, params_hash="0" * 64) if r["report_id"] == "b" else r for r in rows]
    generation.write_predictions_jsonl(stale, tmp_path / "predictions" / "sft.jsonl")
    with pytest.raises(ValueError, match="other settings"):
        graph_ablation.load_sft_baseline(params, test)
    read_back = params.model_copy(update={"graph": params.graph.model_copy(update={"ablation_max_steps": None})})
    with pytest.raises(ValueError, match="must be one of"):
        graph_ablation.variant_dir(read_back, "none")  # read back as 'sft', never trained here
    with pytest.raises(ValueError, match="other settings"):
        graph_ablation.load_baseline(read_back, test)


def test_equal_budget_arms_and_settings(tmp_path) -> None:
    from radimpress_lib.notebook import graph_ablation

    params = _params_in(tmp_path)
    params = params.model_copy(update={"graph": params.graph.model_copy(update={"ablation_max_steps": 7})})
    assert graph_ablation.arms(params) == ["none", "text", "gnn"]
    assert graph_ablation.baseline_system(params) == "sft_graph_none"
    assert graph_ablation.load_baseline(params, []) is None  # nothing read back: the no-graph arm is trained
    settings = graph_ablation.sft_settings(params)
    assert settings.max_steps == 7 and settings.trainer == "trl"
    assert settings.learning_rate == params.sft.learning_rate and settings.lora_targets == params.sft.lora_targets
    assert graph_ablation.variant_dir(params, "none") == tmp_path / "sft_graph_none"
    read_back = params.model_copy(update={"graph": params.graph.model_copy(update={"ablation_max_steps": None})})
    assert graph_ablation.arms(read_back) == ["text", "gnn"] and graph_ablation.baseline_system(read_back) == "sft"
    assert graph_ablation.sft_settings(read_back) == read_back.sft


def test_ablation_table_deltas_and_times() -> None:
    import pandas as pd

    from radimpress_lib.notebook.graph_ablation import ablation_table

    scores = {"sft": {"rougeL": 50.0, "rougeL_ci": [45.0, 55.0]}, "sft_graph_text": {"rougeL": 53.0, "rougeL_ci": [48.0, 58.0]}}
    deltas = pd.DataFrame([{"system": "sft", "vs": "sft_graph_text", "metric": "rougeL", "delta": -3.0,
                            "ci_low": -5.0, "ci_high": -1.0, "p_value": 0.01}])
    table = ablation_table(scores, deltas, {"sft": {"wall_time_s": 100.0}, "sft_graph_text": {"wall_time_s": 130.0}},
                           {"sft_graph_text": {"wall_time_s": 9.0}}, metrics=("rougeL",))
    row = table.loc["sft_graph_text"]
    assert row["rougeL_delta"] == 3.0 and row["rougeL_delta_ci"] == "[1.0, 5.0]" and row["rougeL_p"] == 0.01
    assert row["extra_train_s"] == 30.0 and row["decode_wall_s"] == 9.0
    assert table.loc["sft", "extra_train_s"] == 0.0 and table.loc["sft", "rougeL_ci"] == "[45.0, 55.0]"
    assert not row["resumed"]
    # an arm resumed from an earlier run's checkpoint timed only its last steps: flagged, no extra-time figure
    resumed = ablation_table(scores, deltas, {"sft": {"wall_time_s": 100.0},
                                              "sft_graph_text": {"wall_time_s": 6.0, "resumed_from": "checkpoint-30"}},
                             {}, metrics=("rougeL",))
    assert resumed.loc["sft_graph_text", "resumed"] and pd.isna(resumed.loc["sft_graph_text", "extra_train_s"])
    base_resumed = ablation_table(scores, deltas, {"sft": {"wall_time_s": 6.0, "resumed_from": "checkpoint-30"},
                                                   "sft_graph_text": {"wall_time_s": 130.0}}, {}, metrics=("rougeL",))
    assert pd.isna(base_resumed.loc["sft_graph_text", "extra_train_s"])


def test_frame_records_turns_missing_values_into_none() -> None:
    import pandas as pd

    frame = pd.DataFrame({"system": ["sft", "text"], "delta": [float("nan"), 1.5], "ci": [None, "[0.1, 2.0]"]})
    assert jsonio.frame_records(frame) == [{"system": "sft", "delta": None, "ci": None},
                                            {"system": "text", "delta": 1.5, "ci": "[0.1, 2.0]"}]
    json.dumps(jsonio.frame_records(frame), allow_nan=False)
