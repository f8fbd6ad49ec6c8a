"""Review triage (radimpress_lib.evaluation.triage): error label, drafting-time signals, risk model, evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from graph_fixtures import tiny_llama
from transformers import AutoTokenizer

from radimpress_lib.clinical import checks
from radimpress_lib.core import artifacts
from radimpress_lib.core.config import GenerationStageConfig
from radimpress_lib.evaluation import triage
from radimpress_lib.llm import generation

# --------------------------------------------------------------------------- the error label


@pytest.mark.parametrize("reference, draft, missed, negated, unsupported, significant, missed_abnormal", [
    ("Small left pleural effusion.", "No acute cardiopulmonary abnormality.", ["Pleural Effusion"], [], [], True, True),
    ("Left pleural effusion.", "No pleural effusion.", [], ["Pleural Effusion"], [], True, True),
    ("No acute disease.", "Mild cardiomegaly.", [], [], ["Cardiomegaly"], True, False),
    ("Mild cardiomegaly.", "Cardiomegaly.", [], [], [], False, False),
    # uncertain on either side is neither missed nor unsupported
    ("Possible pneumonia.", "No acute disease.", [], [], [], False, False),
    ("No acute disease.", "Possible pneumonia.", [], [], [], False, False),
    # a missed device is a significant error but not a missed abnormality
    ("Stable sternotomy wires.", "No acute disease.", ["Support Devices"], [], [], True, False),
    ("Right lower lobe pneumonia.", "Cardiomegaly.", ["Pneumonia"], [], ["Cardiomegaly"], True, True),
])
def test_error_label_on_hand_made_pairs(reference, draft, missed, negated, unsupported, significant, missed_abnormal):
    lab = triage.error_label(reference, draft)
    assert (lab["missed"], lab["negated"], lab["unsupported"]) == (missed, negated, unsupported)
    assert lab["significant"] is significant and lab["missed_abnormal"] is missed_abnormal


def test_error_labels_table():
    t = triage.error_labels(["Left pleural effusion.", "Cardiomegaly."], ["No effusion.", "Cardiomegaly."])
    assert t["significant"].tolist() == [True, False] and t["missed_abnormal"].tolist() == [True, False]
    with pytest.raises(ValueError):
        triage.error_labels(["a"], [])


# --------------------------------------------------------------------------- signals

EFFUSION = {"findings": "Heart size is normal. Small left pleural effusion. No pneumothorax."}


def test_check_signals_see_an_omitted_finding_and_a_flip():
    left_out = checks.draft_signals(EFFUSION, "No acute cardiopulmonary abnormality.")
    kept = checks.draft_signals(EFFUSION, "Small left pleural effusion.")
    flipped = checks.draft_signals(EFFUSION, "No pleural effusion.")
    assert left_out["omitted:Pleural Effusion"] == 1 and kept["omitted:Pleural Effusion"] == 0
    assert left_out["normal_draft_abnormal_findings"] == 1 and kept["normal_draft_abnormal_findings"] == 0
    assert flipped["negation_flip"] >= 1 and kept["negation_flip"] == 0
    assert set(checks.CHECK_SIGNALS) <= set(left_out) and set(checks.COMPLEXITY_SIGNALS) <= set(left_out)


def test_neighbour_signals_measure_disagreement_with_the_retrieved_impressions():
    rec = EFFUSION | {"similar_impressions": ["Small left pleural effusion.", "Left effusion.", "No acute disease."]}
    normal = checks.draft_signals(rec, "No acute disease.")
    effusion = checks.draft_signals(rec, "Small left pleural effusion.")
    assert normal["nb_missing"] > effusion["nb_missing"] and normal["nb_missing_max"] == pytest.approx(2 / 3)
    assert effusion["nb_text_distance"] == 0.0
    # without retrieval context the group is zero
    assert all(checks.draft_signals(EFFUSION, "x")[k] == 0 for k in checks.NEIGHBOUR_SIGNALS)


def test_triage_flags_include_omissions_and_reasons_are_ordered_by_severity():
    flags = checks.triage_flags(EFFUSION, "No acute cardiopulmonary abnormality.")
    assert any(f["kind"] == "omitted" and f["finding"] == "Pleural Effusion" for f in flags)
    reasons = checks.order_reasons([{"kind": "review_risk", "message": "r"}, {"kind": "truncated", "message": "t"},
                                    {"kind": "not_in_findings", "message": "n"}, {"kind": "omitted", "message": "o"},
                                    {"kind": "negation_flip", "message": "f"}, {"kind": "out_of_scope", "message": "s"}])
    assert [r["kind"] for r in reasons] == ["out_of_scope", "negation_flip", "omitted", "not_in_findings",
                                           "truncated", "review_risk"]
    assert reasons[0]["severity"] == "critical" and reasons[-1]["severity"] == "low"


def _train_reports(n: int = 60) -> list[dict]:
    """Effusions always reach the impression, granulomas never."""
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append({"findings": f"Small {'left' if i % 2 else 'right'} pleural effusion. Heart size normal.",
                        "impression": "Small pleural effusion."})
        elif i % 3 == 1:
            out.append({"findings": "Calcified granuloma. Lungs clear. No effusion.", "impression": "No acute disease."})
        else:
            out.append({"findings": "Cardiomegaly. No effusion.", "impression": "Cardiomegaly."})
    return out


def test_reference_prior_knows_which_findings_reach_the_impression():
    prior = triage.ReferencePrior(min_df=1).fit(_train_reports())
    p = prior.predict(["Small left pleural effusion.", "Calcified granuloma. No effusion."])
    assert p.loc[0, "Pleural Effusion"] > 0.5 > p.loc[1, "Pleural Effusion"]
    from radimpress_lib.clinical import labeler

    missing = triage.prior_signals(p.iloc[0], labeler.label_report("No acute disease."))
    kept = triage.prior_signals(p.iloc[0], labeler.label_report("Small left pleural effusion."))
    assert missing["prior_missing"] > kept["prior_missing"] and missing["prior_any_error"] > kept["prior_any_error"]


def test_uncertainty_signals_from_token_statistics():
    row = {"token_logprobs": [-0.1, -2.0, -0.05], "token_entropies": [0.3, 2.5, 0.1], "stopped": False}
    sig = triage.uncertainty_signals(row)
    assert sig["logprob_min"] == -2.0 and sig["logprob_sum"] == pytest.approx(-2.15)
    assert sig["low_confidence_tokens"] == 1 and sig["entropy_max"] == 2.5 and sig["truncated"] == 1
    assert all(v == 0 for v in triage.uncertainty_signals(None).values())


def test_candidate_signals_measure_disagreement():
    from radimpress_lib.clinical import labeler

    lab = labeler.label_report("Small left pleural effusion.")
    same = triage.candidate_signals(lab, "Small left pleural effusion.", ["Small left pleural effusion."] * 3)
    other = triage.candidate_signals(lab, "Small left pleural effusion.", ["No acute disease.", "Cardiomegaly."])
    assert same == {"candidates_label_disagreement": 0.0, "candidates_text_distance": 0.0}
    assert other["candidates_label_disagreement"] >= 1 and other["candidates_text_distance"] > 0.5


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    tok.pad_token = "<|endoftext|>"
    return tok


def test_token_stats_leave_the_greedy_drafts_unchanged(tokenizer):
    model = tiny_llama(len(tokenizer))
    recs = [{"report_id": str(i), "findings": f} for i, f in enumerate(
        ["Lungs are clear.", "Small left pleural effusion. Heart size normal.", "Cardiomegaly.",
         "Right upper lobe nodule measuring 8 mm. Otherwise clear.", "No acute osseous abnormality."])]
    cfg = GenerationStageConfig(batch_size=2, max_new_tokens=10)
    plain = generation.generate_impressions(model, tokenizer, recs, cfg, model_name="t", log=lambda _l: None)
    stats = generation.generate_impressions(model, tokenizer, recs, cfg, model_name="t", log=lambda _l: None,
                                            token_stats=True)
    assert [p["prediction"] for p in stats.predictions] == [p["prediction"] for p in plain.predictions]
    assert [p["n_new_tokens"] for p in stats.predictions] == [p["n_new_tokens"] for p in plain.predictions]
    assert plain.params_hash == stats.params_hash
    for p in stats.predictions:
        assert len(p["token_logprobs"]) == len(p["token_entropies"]) == p["n_new_tokens"]
        assert all(lp <= 0 for lp in p["token_logprobs"]) and all(h >= 0 for h in p["token_entropies"])
        assert "token_logprobs" not in plain.predictions[0]
    # teacher forcing gives the same next-token distribution at the first draft position
    scored = generation.score_drafts(model, tokenizer, recs, [p["prediction"] for p in stats.predictions])
    for s, p in zip(scored, stats.predictions):
        if p["token_entropies"] and s["token_entropies"]:
            assert s["token_entropies"][0] == pytest.approx(p["token_entropies"][0], abs=1e-3)
    with pytest.raises(ValueError, match="greedy"):
        generation.generate_impressions(model, tokenizer, recs, GenerationStageConfig(num_beams=2), model_name="t",
                                        token_stats=True)
    cands = generation.decode_candidates(model, tokenizer, recs[:2], 3, max_new_tokens=6, mode="sample", seed=1)
    assert [len(c) for c in cands] == [3, 3]


# --------------------------------------------------------------------------- risk model and evaluation


def _synthetic(n: int = 240, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Signals where an omitted effusion and low confidence make an error likely."""
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(0.0, index=range(n), columns=triage.all_features())
    x["omitted:Pleural Effusion"] = rng.random(n) < 0.25
    x["logprob_mean"] = rng.normal(-0.5, 0.3, n)
    x["findings_words"] = rng.normal(3.0, 0.5, n)
    z = -2.5 + 3.5 * x["omitted:Pleural Effusion"] - 2.0 * (x["logprob_mean"] + 0.5) + rng.normal(0, 0.5, n)
    y = rng.random(n) < 1 / (1 + np.exp(-z))
    missed = y & x["omitted:Pleural Effusion"].to_numpy(dtype=bool)
    return x.astype(float), y, missed


def test_risk_model_ranks_errors_saves_as_json_and_round_trips(tmp_path):
    x, y, missed = _synthetic()
    model, report = triage.fit_risk_model(x, y, missed, recall=0.8, missed_recall=0.9, max_flag_rate=0.6,
                                          n_folds=4, repeats=1)
    assert report.cv_auc[str(report.c)] > 0.75
    w = dict(zip(model.features, model.coef))
    assert w["omitted:Pleural Effusion"] > 0 and w["logprob_mean"] < 0 and w["nb_missing"] == 0  # constant: 0
    # an omitted abnormal finding raises the risk, all else equal
    a, b = x.iloc[[0]].copy(), x.iloc[[0]].copy()
    a["omitted:Pleural Effusion"], b["omitted:Pleural Effusion"] = 1.0, 0.0
    assert model.predict(a)[0] > model.predict(b)[0]
    path = model.save(tmp_path / "triage" / "risk_model.json")
    text = path.read_text()
    assert json.loads(text)["format"] == triage.RISK_MODEL_FORMAT and "omitted:Pleural Effusion" in text
    again = triage.RiskModel.load(path)
    assert np.allclose(again.predict(x), model.predict(x)) and again.threshold == model.threshold
    assert again.operating_point["flag_rate"] <= 0.6
    (tmp_path / "bad.json").write_text('{"format": "pickle"}')
    with pytest.raises(ValueError, match="bad.json"):
        triage.RiskModel.load(tmp_path / "bad.json")


def test_threshold_for_a_review_budget_flags_that_share():
    x, y, missed = _synthetic(seed=1)
    model, _ = triage.fit_risk_model(x, y, missed, n_folds=4, repeats=1)
    risk = model.predict(x)
    for budget in (0.1, 0.25, 0.5):
        assert np.mean(risk >= model.threshold_for_budget(budget)) == pytest.approx(budget, abs=0.02)
    assert model.threshold_for_budget(0.1) > model.threshold_for_budget(0.5)
    with pytest.raises(ValueError):
        model.threshold_for_budget(0.0)
    assert 0 <= model.expected_recall(0.25) <= 1


def test_recalibrated_threshold_flags_the_same_share_of_another_systems_drafts(tmp_path):
    x, y, missed = _synthetic(seed=2)
    model, _ = triage.fit_risk_model(x, y, missed, n_folds=4, repeats=1, max_flag_rate=0.3)
    # a second system whose drafts omit the effusion less often: lower risks under the same weights
    other, y2 = x.copy(), y.copy()
    fixed = other["omitted:Pleural Effusion"].to_numpy(dtype=bool) & (np.arange(len(x)) % 2 == 0)
    other.loc[fixed, "omitted:Pleural Effusion"] = 0.0
    y2[fixed] = False
    share = model.operating_point["flag_rate"]
    assert np.mean(model.predict(other) >= model.threshold) < share - 0.03  # the fitted threshold under-flags it
    own = triage.recalibrated(model, other, y2, y2 & missed, system="other")
    assert own.coef == model.coef and own.threshold < model.threshold
    assert np.mean(model.predict(other) >= own.threshold) == pytest.approx(share, abs=0.02)
    assert own.operating_point["recall"] == pytest.approx(np.mean(model.predict(other)[y2] >= own.threshold))
    assert own.meta["recalibrated_on"] == "validate drafts of other" and own.meta["n_errors"] == int(y2.sum())
    again = triage.RiskModel.load(own.save(tmp_path / "risk_model_other.json"))
    assert again.threshold == own.threshold and again.threshold_for_budget(share) == pytest.approx(own.threshold)
    bare = triage.RiskModel.load(own.save(tmp_path / "bare.json"))
    bare.operating_point = {}  # no flag rate to carry over: an error, not a silent 30%
    with pytest.raises(ValueError, match="no operating flag rate"):
        triage.recalibrated(bare, other, y2, y2 & missed, system="other")


def test_operating_point_is_the_smallest_flag_rate_meeting_the_targets():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    y = np.array([1, 1, 0, 1, 0, 0, 1, 0, 0, 0], dtype=bool)
    m = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    op = triage.choose_operating_point(scores, y, m, recall=0.75, missed_recall=1.0, max_flag_rate=0.5)
    assert op["flag_rate"] == pytest.approx(0.4) and op["recall"] == 0.75 and op["targets_met"]
    capped = triage.choose_operating_point(scores, y, m, recall=1.0, missed_recall=1.0, max_flag_rate=0.5)
    assert capped["flag_rate"] == 0.5 and not capped["targets_met"] and capped["flag_rate_for_targets"] == 0.7


def test_a_budget_is_rounded_down_everywhere_so_it_is_never_exceeded():
    # 0.3 of 276 validate drafts is 82.8: the operating point, the curves and the worklist all flag 82, never 83
    rng = np.random.default_rng(0)
    scores, y = rng.random(276), rng.random(276) < 0.25
    m = y & (rng.random(276) < 0.8)
    assert triage.budget_count(0.3, 276) == 82 and triage.budget_count(0.3, 343) == 102
    assert triage.budget_count(0.01, 10) == 1 and triage.budget_count(0.3, 0) == 0 and triage.budget_count(0.3, 10) == 3
    assert triage.budget_count(0.0, 10) == 0  # the start of a recall curve
    capped = triage.choose_operating_point(scores, y, m, recall=1.0, missed_recall=1.0, max_flag_rate=0.3)
    assert capped["flag_rate"] == pytest.approx(82 / 276) and capped["flag_rate"] <= 0.3
    top82 = np.argsort(-scores, kind="stable")[:82]
    assert capped["recall"] == pytest.approx(y[top82].sum() / y.sum())
    assert triage._recall_at_rate(scores, y, np.array([0.3]))[0] == pytest.approx(capped["recall"])
    assert triage.worklist_flags(scores, 0.3).sum() == 82


def test_triage_metrics_with_bootstrap_cis_on_a_synthetic_set():
    scores = np.r_[np.linspace(0.9, 0.6, 8), np.linspace(0.55, 0.0, 32)]
    y = np.zeros(40, dtype=bool)
    y[[0, 1, 2, 3, 4, 5, 10, 20]] = True  # 6 of 8 errors in the top 8
    missed = np.zeros(40, dtype=bool)
    missed[[0, 1]] = True
    out = triage.triage_metrics(scores, y, missed, threshold=0.6, n_boot=200, seed=0)
    assert out["recall"] == pytest.approx(75.0) and out["precision"] == pytest.approx(75.0)
    assert out["flag_rate"] == pytest.approx(20.0) and out["missed_abnormal_recall"] == 100.0
    assert out["n_errors"] == 8 and out["n_flagged"] == 8
    for k in ("recall", "precision", "flag_rate"):
        lo, hi = out[f"{k}_ci"]
        assert lo <= out[k] <= hi and lo < hi
    assert 0.5 < out["auc"] <= 1 and out["auc_ci"][0] <= out["auc"] <= out["auc_ci"][1]
    no_auc = triage.triage_metrics(scores, y, missed, threshold=0.6, n_boot=200, seed=0, auc=False)
    assert "auc" not in no_auc and "auc_ci" not in no_auc and no_auc["recall_ci"] == out["recall_ci"]
    curve = triage.recall_curve(scores, y, n_boot=100, seed=0)
    assert curve["recall"].iloc[0] == 0 and curve["recall"].iloc[-1] == 100
    assert (curve["recall"].diff().dropna() >= 0).all()
    assert (curve["recall_low"] <= curve["recall"] + 1e-9).all() and (curve["recall"] <= curve["recall_high"] + 1e-9).all()
    assert curve.loc[curve["flag_rate"].round() == 20, "recall"].iloc[0] == pytest.approx(75.0)


def test_worklist_flags_spend_the_budget_on_the_riskiest_drafts_of_the_worklist():
    risk = [0.1, 0.9, 0.5, 0.5, 0.2, 0.05, 0.3, 0.5, 0.0, 0.7]
    flagged = triage.worklist_flags(risk, 0.3)
    assert flagged.tolist() == [False, True, True, False, False, False, False, False, False, True]  # ties: input order
    assert triage.worklist_flags(risk, 1.0).all() and triage.worklist_flags(risk, 0.05).sum() == 1  # at least one
    assert triage.worklist_flags(risk[:3], 0.3).tolist() == [False, True, False]
    assert triage.worklist_flags([], 0.3).tolist() == []
    with pytest.raises(ValueError, match="share of drafts"):
        triage.worklist_flags(risk, 0.0)
    # scored with the flags held fixed: a fixed threshold of 0.6 flags 20% of this low-risk worklist, the budget 30%
    y = np.array([0, 1, 1, 0, 0, 0, 0, 1, 0, 1], dtype=bool)
    at_threshold = triage.triage_metrics(risk, y, y, 0.6, n_boot=50, seed=0)
    out = triage.triage_metrics(risk, y, y, None, flagged=flagged, n_boot=50, seed=0)
    assert at_threshold["recall"] == pytest.approx(50.0) and out["recall"] == pytest.approx(75.0)
    assert out["flag_rate"] == pytest.approx(30.0) and out["threshold"] is None and out["n_flagged"] == 3
    with pytest.raises(ValueError, match="either a threshold or the flagged drafts"):
        triage.triage_metrics(risk, y, y, 0.6, flagged=flagged)


def test_triage_table_of_a_system_without_erroneous_drafts():
    """A system whose test drafts have no significant error has no recall: the table and take-away say n/a."""
    from radimpress_lib.notebook.evaluate import TriageRun

    scores = np.linspace(0.9, 0.0, 20)
    clean = triage.triage_metrics(scores, np.zeros(20, dtype=bool), np.zeros(20, dtype=bool), threshold=0.5,
                                  n_boot=50, seed=0)
    assert clean["recall"] is None and clean["flag_rate"] > 0
    res = clean | {"rules_default": {"recall": None, "flag_rate": 5.0}, "rules_omissions": {"recall": None,
                                                                                            "flag_rate": 10.0}}
    run = TriageRun(results={"sft": res})
    row = run.table().loc["sft"]
    assert row["recall %"] == "n/a" and row["CLI rules: recall / flag %"] == "n/a / 5.0"
    assert "n/a% at 5.0% flagged" in run.best_line({"sft": {"rougeL": 50.0}})


def test_rule_flags_match_the_cli_rules():
    recs = [EFFUSION, EFFUSION, EFFUSION, {"findings": "Lungs clear."}]
    drafts = ["Small left pleural effusion.", "No acute disease.", "No pleural effusion.", ""]
    t = triage.rule_flags(recs, drafts)
    assert t["default"].tolist() == [False, False, True, True]
    assert t["omissions"].tolist() == [False, True, True, True]


def test_feature_table_and_ablation():
    prior = triage.ReferencePrior(min_df=1).fit(_train_reports())
    recs = [EFFUSION | {"similar_impressions": ["Small left pleural effusion."]}] * 2
    rows = [{"token_logprobs": [-0.1, -0.2], "token_entropies": [0.1, 0.2], "stopped": True}, None]
    t = triage.feature_table(recs, ["Small left pleural effusion.", "No acute disease."], rows=rows, prior=prior)
    assert list(t.columns) == triage.all_features() and len(t) == 2
    assert t.loc[1, "prior_missing"] > t.loc[0, "prior_missing"] and t.loc[1, "omitted:Pleural Effusion"] == 1
    assert t.loc[0, "logprob_mean"] == pytest.approx(-0.15) and t.loc[1, "logprob_mean"] == 0
    x, y, missed = _synthetic(seed=2)
    abl = triage.ablation(x, y, missed, flag_rate=0.3, n_folds=4, repeats=1)
    assert abl["signals"].iloc[0] == "all" and "without checks" in set(abl["signals"])
    row = abl.set_index("signals")
    assert row.loc["all", "auc"] > row.loc["without checks", "auc"]
    assert not math.isnan(row.loc["only uncertainty", "recall_at_budget"])


def _varied_train_reports(n: int = 90) -> list[dict]:
    """Distinct findings: an effusion the impression states or omits, cardiomegaly, clear lungs."""
    out = []
    for i in range(n):
        side = "left" if i % 2 else "right"
        if i % 3 == 0:
            out.append({"findings": f"Small {side} pleural effusion, {i} mm. Heart size normal.",
                        "impression": "Small pleural effusion." if i % 9 else "No acute disease."})
        elif i % 3 == 1:
            out.append({"findings": f"Calcified granuloma in the {side} lobe, {i} mm. Lungs clear. No effusion.",
                        "impression": "No acute disease."})
        else:
            out.append({"findings": f"Cardiomegaly, ratio 0.{50 + i}. No effusion.", "impression": "Cardiomegaly."})
    return out


def test_pseudo_draft_model_learns_errors_from_train_neighbours_and_round_trips():
    train = _varied_train_reports()
    pseudo = triage.PseudoDraftModel.fit(train, k=1, folds=3, seed=0)
    assert pseudo.meta["n_drafts"] == len(train) and 0 < pseudo.meta["n_errors"] < len(train)
    assert set(pseudo.features) <= {f for g in triage.PSEUDO_INPUT_GROUPS for f in triage.SIGNAL_GROUPS[g]}
    prior = triage.ReferencePrior(min_df=1).fit(train)
    recs = [EFFUSION, EFFUSION]
    t = triage.feature_table(recs, ["Small left pleural effusion.", "No acute disease."], prior=prior, pseudo=pseudo)
    assert t.loc[1, "pseudo_risk"] > t.loc[0, "pseudo_risk"]  # leaving out the effusion is the likelier error
    assert np.allclose(t["pseudo_risk"], pseudo.decision(t))
    again = triage.PseudoDraftModel.from_json(json.loads(json.dumps(pseudo.to_json())))
    assert np.allclose(again.decision(t), pseudo.decision(t))
    assert (triage.feature_table(recs, ["x", "y"], prior=prior)["pseudo_risk"] == 0).all()  # no model: the group is 0
    with pytest.raises(ValueError, match="at least"):
        triage.PseudoDraftModel.fit(train[:4], folds=3)


# --------------------------------------------------------------------------- radimpress draft uses the saved model


def _hand_model(tmp_path):
    """Risk = sigmoid(-2 + 4 * omitted effusion + 0.5 * prior_logit); validate risks spread 0.05-0.95."""
    feats = triage.all_features()
    coef = [4.0 if f == "omitted:Pleural Effusion" else 0.5 if f == "prior_logit" else 0.0 for f in feats]
    model = triage.RiskModel(features=feats, mean=[0.0] * len(feats), scale=[1.0] * len(feats), coef=coef,
                             intercept=-2.0, threshold=0.5, quantiles=list(np.linspace(0.05, 0.95, 201)),
                             operating_point={"flag_rate": 0.25}, curve={"flag_rate": [0.0, 1.0], "recall": [0.0, 1.0]},
                             meta={"n_validate": 100})
    return model.save(tmp_path / "triage" / "risk_model.json")


@pytest.fixture
def cli_run(monkeypatch, tmp_path):
    """``radimpress draft`` with a fake model: effusion findings get a normal draft (an omission), others an exact one."""
    from radimpress_lib.apps import cli
    from radimpress_lib.data import loading

    def drafter_for(model, tokenizer, gen_cfg, **kw):
        def draft(records):
            return [{"draft": "Normal chest." if "effusion" in r["findings"].lower() else r["findings"],
                     "stopped": True, "n_new_tokens": 3} for r in records]
        return draft

    monkeypatch.setattr(cli, "load_drafting_model", lambda params, adapter: (None, None, {"model": "f", "adapter": None}))
    monkeypatch.setattr(cli, "model_drafter", drafter_for)
    monkeypatch.setattr(loading, "load_data", lambda params: ({"train": _train_reports(), "validate": []}, {}))
    monkeypatch.setattr(cli, "default_risk_model_path", lambda params, system="sft": tmp_path / "absent" / "risk_model.json")
    inp = tmp_path / "reports.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in [
        {"report_id": "eff", "findings": "Heart size is normal. Small left pleural effusion. No pneumothorax."},
        {"report_id": "ok", "findings": "Mild cardiomegaly. Lungs are clear."},
        {"report_id": "ct", "findings": "Mild cardiomegaly.", "modality": "CT", "body_part": "HEAD"},
    ]))

    def run(*extra):
        out = tmp_path / "drafts.jsonl"
        out.unlink(missing_ok=True)
        rc = cli.main(["draft", str(inp), "-o", str(out), "--model", "ci-tiny", "--adapter", "none", *extra])
        rows = {r["report_id"]: r for r in map(json.loads, out.read_text().splitlines())} if out.exists() else {}
        return rc, rows

    return run


def test_cli_uses_the_saved_risk_model(cli_run, tmp_path, capsys):
    path = _hand_model(tmp_path)
    rc, rows = cli_run("--risk-model", str(path))
    assert rc == 0
    eff, ok, ct = rows["eff"], rows["ok"], rows["ct"]
    assert eff["risk"] > 0.5 > ok["risk"] and eff["needs_review"] and not ok["needs_review"]
    kinds = [r["kind"] for r in eff["review_reasons"]]
    assert kinds[0] == "omitted" and kinds[-1] == "review_risk"  # most severe first
    ranks = [checks.REASON_SEVERITY[k] for k in kinds]
    assert ranks == sorted(ranks) and all("severity" in r for r in eff["review_reasons"])
    assert "Pleural Effusion" in eff["review_reasons"][-1]["message"]
    assert ok["review_reasons"] == []
    # a hard reason needs review whatever the risk
    assert ct["risk"] < 0.5 and ct["needs_review"] and [r["kind"] for r in ct["review_reasons"]] == ["out_of_scope"]
    assert "review triage: risk model" in capsys.readouterr().err
    # a review budget picks the threshold: 100% of drafts flags everything
    rc, rows = cli_run("--risk-model", str(path), "--review-budget", "1.0")
    assert rc == 0 and all(r["needs_review"] for r in rows.values())
    assert [r["kind"] for r in rows["ok"]["review_reasons"]] == ["review_risk"]
    rc, rows = cli_run("--risk-model", str(path), "--review-budget", "0.01")
    assert rc == 0 and not rows["ok"]["needs_review"]


def test_cli_worklist_budget_flags_the_riskiest_share_of_the_run(cli_run, tmp_path, capsys):
    path = _hand_model(tmp_path)
    rc, rows = cli_run("--risk-model", str(path), "--worklist-budget", "0.67")  # 2 of the 3 drafts
    assert rc == 0
    eff, ok, ct = rows["eff"], rows["ok"], rows["ct"]
    # the out-of-scope report is flagged whatever its risk and counts against the budget; then the riskiest
    assert ct["needs_review"] and ct["review_reasons"][0]["kind"] == "out_of_scope"
    assert eff["needs_review"] and not ok["needs_review"] and ok["review_reasons"] == []
    risk_reason = [r for r in eff["review_reasons"] if r["kind"] == "review_risk"]
    assert len(risk_reason) == 1 and "among the riskiest 67% of this worklist" in risk_reason[0]["message"]
    assert "_worklist" not in eff and eff["review_reasons"][0]["kind"] == "omitted"
    err = capsys.readouterr().err
    assert "flags the riskiest 67% of this worklist" in err and "the riskiest 2 of 3 drafts flagged" in err
    assert "3 drafts (2 need review" in err
    # a budget below one draft still flags the riskiest: the out-of-scope report, ranked first; not the effusion draft
    rc, rows = cli_run("--risk-model", str(path), "--worklist-budget", "0.1")
    assert rc == 0 and not rows["eff"]["needs_review"] and rows["ct"]["needs_review"]
    assert "review_risk" in {r["kind"] for r in rows["ct"]["review_reasons"]}
    # the flag rate set two ways, or without a risk model, is refused naming the options
    rc, _ = cli_run("--risk-model", str(path), "--worklist-budget", "0.3", "--review-budget", "0.3")
    assert rc == 2 and "give one" in capsys.readouterr().err
    rc, _ = cli_run("--risk-model", "none", "--worklist-budget", "0.3")
    assert rc == 2 and "--worklist-budget needs a risk model" in capsys.readouterr().err
    rc, _ = cli_run("--worklist-budget", "0.3")  # the default model is absent
    assert rc == 2 and "--worklist-budget needs it" in capsys.readouterr().err
    rc, _ = cli_run("--worklist-budget", "2")
    assert rc == 2 and "--worklist-budget must be a share" in capsys.readouterr().err


def test_cli_risk_model_missing_or_bad(cli_run, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "risk_model.json"
    rc, rows = cli_run("--risk-model", str(missing))
    err = capsys.readouterr().err
    assert rc == 2 and not rows and str(missing) in err and len(err.strip().splitlines()) == 1
    rc, _ = cli_run("--review-budget", "0.2")  # the default model is absent: a budget needs it
    assert rc == 2 and "no review-risk model" in capsys.readouterr().err
    rc, _ = cli_run("--review-budget", "1.5")
    assert rc == 2 and "--review-budget must be" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    rc, _ = cli_run("--risk-model", str(tmp_path / "bad.json"))
    assert rc == 2 and "not a readable risk model" in capsys.readouterr().err
    # no model at the default path: today's rule flags, said on stderr
    rc, rows = cli_run()
    assert rc == 0 and "falls back to the rule flags" in capsys.readouterr().err
    assert rows["eff"]["risk"] is None and not rows["eff"]["needs_review"]  # an omission is no rule flag
    rc, rows = cli_run("--risk-model", "none")
    assert rc == 0 and rows["ct"]["needs_review"] and rows["ok"]["risk"] is None


def test_cli_select_mbr_writes_notebook_05s_choice_with_its_own_threshold(monkeypatch, tmp_path, capsys):
    """With the run's adapter the CLI writes sft_mbr's choice (same selection as notebook 05) and reads the risk
    model thresholded on sft_mbr's validate drafts; ``--select draft`` writes the model's draft."""
    from radimpress_lib.apps import cli
    from radimpress_lib.core import config
    from radimpress_lib.llm import retrieval, selection

    pool = _train_reports()
    model_drafts = {"eff": "Normal chest.", "card": "Cardiomegaly.", "gran": "Calcified granuloma."}

    def drafter_for(model, tokenizer, gen_cfg, **kw):
        return lambda records: [{"draft": model_drafts[r["report_id"]], "stopped": True, "n_new_tokens": 3}
                                for r in records]

    monkeypatch.setattr(cli, "load_drafting_model", lambda params, adapter: (None, None, {"model": "f", "adapter": "a"}))
    monkeypatch.setattr(cli, "model_drafter", drafter_for)
    monkeypatch.setattr(retrieval, "load_data", lambda params: ({"train": pool[:45], "validate": pool[45:]}, {}))
    monkeypatch.setattr(cli, "default_risk_model_path", lambda params, system="sft": tmp_path / artifacts.risk_model_file(system))
    sft_model = triage.RiskModel.load(_hand_model(tmp_path))
    mbr_path = triage.recalibrated(sft_model, pd.DataFrame(0.0, index=range(4), columns=sft_model.features),
                                   [True, False, False, False], [False] * 4, system="sft_mbr").save(
        tmp_path / "triage" / "risk_model_sft_mbr.json")
    records = [{"report_id": "eff", "findings": "Small left pleural effusion. Heart size normal."},
               {"report_id": "card", "findings": "Cardiomegaly. No effusion."},
               {"report_id": "gran", "findings": "Calcified granuloma. Lungs clear. No effusion."}]
    inp = tmp_path / "reports.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "drafts.jsonl"

    def run(*extra):
        assert cli.main(["draft", str(inp), "-o", str(out), "--model", "ci-tiny", *extra]) == 0
        return {r["report_id"]: r for r in map(json.loads, out.read_text().splitlines())}, capsys.readouterr().err

    rows, err = run()
    params = config.load_params("ci-tiny")
    expected = selection.NeighbourMBR.from_config(params.eval, pool)(records, [model_drafts[r["report_id"]]
                                                                             for r in records])
    assert [rows[r["report_id"]]["draft"] for r in records] == [c.text for c in expected]
    assert [rows[r["report_id"]]["selection"] for r in records] == [c.source for c in expected]
    eff = rows["eff"]  # the normal draft omits the effusion: another candidate wins, the model's draft is kept
    assert eff["selection"] != "draft" and eff["model_draft"] == "Normal chest." and "effusion" in eff["draft"].lower()
    assert "model_draft" not in rows["card"] or rows["card"]["selection"] != "draft"
    assert "impression: MBR over the draft and" in err and str(mbr_path) in err and "selected {" in err
    rows, err = run("--select", "draft")
    assert [rows[r["report_id"]]["draft"] for r in records] == list(model_drafts.values())
    assert all("selection" not in r for r in rows.values()) and "impression: the model draft" in err
    assert str(tmp_path / "triage" / "risk_model.json") in err


def test_cli_weighs_the_pseudo_draft_model_saved_inside_the_risk_model(cli_run, tmp_path):
    feats = triage.all_features()
    pseudo = triage.PseudoDraftModel(features=["omitted:Pleural Effusion"], mean=[0.0], scale=[1.0], coef=[4.0],
                                     intercept=-2.0)
    model = triage.RiskModel(features=feats, mean=[0.0] * len(feats), scale=[1.0] * len(feats),
                             coef=[1.0 if f == "pseudo_risk" else 0.0 for f in feats], intercept=0.0, threshold=0.5,
                             quantiles=list(np.linspace(0.05, 0.95, 201)), operating_point={"flag_rate": 0.25},
                             meta={"n_validate": 100}, pseudo=pseudo.to_json())
    path = model.save(tmp_path / "triage" / "risk_model.json")
    assert triage.RiskModel.load(path).pseudo_model() == pseudo
    rc, rows = cli_run("--risk-model", str(path))
    assert rc == 0
    assert rows["eff"]["risk"] == pytest.approx(1 / (1 + math.exp(-2.0)), abs=1e-4) and rows["eff"]["needs_review"]
    assert rows["ok"]["risk"] == pytest.approx(1 / (1 + math.exp(2.0)), abs=1e-4) and not rows["ok"]["needs_review"]
