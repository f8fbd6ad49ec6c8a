"""Tests for radimpress_lib.evaluation.metrics on small synthetic data with known answers."""

from __future__ import annotations

import dataclasses
import json
import socket

import numpy as np
import pytest
import sacrebleu
from scipy import stats
from sklearn.metrics import f1_score

from radimpress_lib.clinical.labeler import OBSERVATIONS, POSITIVE, UNCERTAIN, label_report
from radimpress_lib.evaluation import metrics as M

REFS = [
    "No acute cardiopulmonary abnormality.",
    "Small left pleural effusion with left basilar atelectasis.",
    "Mild cardiomegaly without pulmonary edema.",
    "Right upper lobe pneumonia.",
    "No pneumothorax. Stable cardiomegaly.",
    "Possible small right pleural effusion.",
    "Left lower lobe consolidation, possibly pneumonia.",
    "Pacemaker leads in good position. No acute disease.",
    "Healed left rib fractures. No acute cardiopulmonary process.",
    "Moderate pulmonary edema and bilateral pleural effusions.",
    "Right upper lobe nodule, recommend CT.",
    "Interval removal of the chest tube, no pneumothorax.",
]
GOOD = [
    "No acute cardiopulmonary disease.",
    "Small left pleural effusion and left basilar atelectasis.",
    "Mild cardiomegaly, no edema.",
    "Right upper lobe pneumonia.",
    "Stable cardiomegaly, no pneumothorax.",
    "Small right pleural effusion.",
    "Left lower lobe consolidation, possibly pneumonia.",
    "Pacemaker in place. No acute disease.",
    "Old left rib fractures. No acute process.",
    "Pulmonary edema with bilateral effusions.",
    "Right upper lobe nodule.",
    "No pneumothorax after chest tube removal.",
]


def _per(preds: list[str], refs: list[str] = REFS, **kw) -> M.PerExample:
    kw.setdefault("embed_model", False)
    return M.compute_per_example(preds, refs, **kw)


# ---------------------------------------------------------------------------
# Point estimates
# ---------------------------------------------------------------------------


def test_identical_predictions_score_perfectly() -> None:
    res = M.summarize(_per(REFS), n_boot=50, seed=0)
    for k in ("rouge1", "rouge2", "rougeL", "bleu", "label_f1_micro", "label_f1_micro_status"):
        assert res[k] == pytest.approx(100.0), k
    assert res["label_f1_macro"] == pytest.approx(100.0)
    assert res["len_ratio_words"] == pytest.approx(1.0)


def test_bleu_matches_sacrebleu() -> None:
    per = _per(GOOD)
    res = M.summarize(per, n_boot=20, seed=0)
    assert res["bleu"] == pytest.approx(sacrebleu.corpus_bleu(GOOD, [REFS]).score, abs=1e-9)
    sent = [sacrebleu.sentence_bleu(p, [r]).score for p, r in zip(GOOD, REFS)]
    np.testing.assert_allclose(per.sent_bleu, sent)
    assert res["sent_bleu"] == pytest.approx(np.mean(sent))


def test_rouge_known_values() -> None:
    per = _per(["the cat sat", "a b c d"], ["the cat sat on the mat", "x y z"])
    # rouge1: P=3/3, R=3/6 -> F=2/3; no overlap -> 0
    assert per.rouge1[0] == pytest.approx(100 * 2 / 3)
    assert per.rouge1[1] == 0.0
    assert per.rouge2[0] == pytest.approx(100 * 2 * (2 / 2) * (2 / 5) / (1 + 2 / 5))


def test_label_f1_matches_sklearn_and_status_variant() -> None:
    preds = [
        "No pleural effusion.",  # ref: small effusion -> FN (pos), FP+FN (status)
        "Small left pleural effusion.",
        "Cardiomegaly.",
        "No acute disease.",
    ]
    refs = [
        "Small left pleural effusion.",
        "Possible small left pleural effusion.",  # uncertain: positive under default policy
        "Heart size is normal.",
        "No acute cardiopulmonary abnormality.",
    ]
    per = _per(preds, refs)
    res = M.summarize(per, n_boot=20, seed=0)

    def vec(text: str, policy: str) -> list[int]:
        lab = label_report(text)
        pos = {POSITIVE, UNCERTAIN} if policy == "positive" else {POSITIVE}
        return [int(lab[o] in pos) for o in OBSERVATIONS]

    yp = np.array([vec(p, "positive") for p in preds])
    yr = np.array([vec(r, "positive") for r in refs])
    assert res["label_f1_micro"] == pytest.approx(100 * f1_score(yr, yp, average="micro"))
    assert res["label_f1_macro"] == pytest.approx(100 * f1_score(yr, yp, average="macro", zero_division=np.nan))

    # status-aware by hand: ref pairs {PE+}, {PE?}, {CM-, NF+}, {NF+}; pred pairs {PE-, NF+}, {PE+}, {CM+}, {NF+}
    # -> TP 1 (NF+ of #4), FP 2+1+1, FN 1+1+2
    tp, fp, fn = 1, 4, 4
    assert res["label_f1_micro_status"] == pytest.approx(100 * 2 * tp / (2 * tp + fp + fn))

    strict = M.summarize(_per(preds, refs, uncertain_policy="negative"), n_boot=20, seed=0)
    yp2 = np.array([vec(p, "negative") for p in preds])
    yr2 = np.array([vec(r, "negative") for r in refs])
    assert strict["label_f1_micro"] == pytest.approx(100 * f1_score(yr2, yp2, average="micro"))


def test_per_finding_table_is_consistent() -> None:
    per = _per(GOOD)
    rows = M.per_finding_f1(per)
    assert [r["observation"] for r in rows] == list(OBSERVATIONS)
    tp = sum(r["tp"] for r in rows)
    fp = sum(r["fp"] for r in rows)
    fn = sum(r["fn"] for r in rows)
    res = M.summarize(per, n_boot=10, seed=0)
    assert res["label_f1_micro"] == pytest.approx(100 * 2 * tp / (2 * tp + fp + fn))
    assert M.per_finding_f1(per, "status")[0]["observation"] == "No Finding"
    with pytest.raises(ValueError):
        M.per_finding_f1(per, "other")


def test_length_and_findings_metrics() -> None:
    per = M.compute_per_example(
        ["Large right effusion.", "No acute disease."],
        ["Small right effusion.", "Normal chest."],
        ["No pleural effusion. Heart size normal.", "Lungs are clear."],
        tokenizer=lambda text: list(text),  # characters as "tokens"
        embed_model=False,
    )
    res = M.summarize(per, n_boot=20, seed=0)
    assert res["unsupported_positive_rate"] == pytest.approx(100.0)  # effusion asserted, negated in findings
    # bigrams of predictions: (large,right),(right,effusion),(no,acute),(acute,disease): none in findings
    assert res["novel_bigram_rate"] == pytest.approx(100.0)
    assert res["len_pred_words"] == pytest.approx(3.0)
    assert res["len_ratio_words"] == pytest.approx(6 / 5)
    assert res["len_pred_tokens"] == pytest.approx((21 + 17) / 2)


# ---------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------


def test_vectorised_bootstrap_equals_direct_recomputation() -> None:
    per = _per(GOOD)
    idx = M.bootstrap_indices(len(REFS), 5, seed=3)
    weights = M._weights_from_indices(idx, len(REFS))
    boot = M._corpus_metrics(per, weights)
    for b, row in enumerate(idx):
        p = [GOOD[i] for i in row]
        r = [REFS[i] for i in row]
        direct = M._corpus_metrics(_per(p, r), np.ones((1, len(row))))
        for k in ("rouge1", "rougeL", "bleu", "label_f1_micro", "label_f1_macro_status", "len_ratio_words"):
            assert boot[k][b] == pytest.approx(direct[k][0], nan_ok=True), (k, b)
        assert boot["bleu"][b] == pytest.approx(sacrebleu.corpus_bleu(p, [r]).score)


def test_bootstrap_ci_contains_point_and_is_seeded() -> None:
    per = _per(GOOD)
    res = M.summarize(per, n_boot=300, seed=1)
    for k in ("rouge1", "rouge2", "rougeL", "bleu", "sent_bleu", "label_f1_micro"):
        lo, hi = res[f"{k}_ci"]
        assert lo <= res[k] <= hi, k
        if k != "label_f1_micro":  # GOOD's labels all agree with REFS: a degenerate interval
            assert lo < hi, k
    again = M.summarize(per, n_boot=300, seed=1)
    other = M.summarize(per, n_boot=300, seed=2)
    assert again["rougeL_ci"] == res["rougeL_ci"]
    assert other["rougeL_ci"] != res["rougeL_ci"]
    with pytest.raises(ValueError):
        M.summarize(per, n_boot=0)
    with pytest.raises(ValueError):
        M.summarize(per, ci=1.5)


def test_compare_clearly_better_system_has_small_p() -> None:
    bad = ["Unremarkable osseous structures."] * len(REFS)
    a, b = _per(GOOD), _per(bad)
    cmp = M.compare_systems(a, b, n_boot=500, seed=0)
    for k in ("rouge1", "rougeL", "bleu"):
        assert cmp[k]["delta"] > 0
        assert cmp[k]["p_value"] < 0.01, k
        assert cmp[k]["delta_ci"][0] > 0
    same = M.compare_systems(a, a, n_boot=200, seed=0)
    assert same["rougeL"]["delta"] == 0.0
    assert same["rougeL"]["p_value"] == 1.0


def test_compare_p_values_uniform_under_null() -> None:
    """Two systems with exchangeable per-example scores: p ~ Uniform(0, 1)."""
    base = _per(GOOD * 5, REFS * 5)  # n = 60
    rng = np.random.default_rng(123)
    pvals = []
    for _ in range(200):
        sa = dataclasses.replace(base, rougeL=rng.normal(50, 15, base.n))
        sb = dataclasses.replace(base, rougeL=rng.normal(50, 15, base.n))
        pvals.append(
            M.compare_systems(sa, sb, n_boot=400, seed=int(rng.integers(1 << 31)), metrics=["rougeL"])["rougeL"][
                "p_value"
            ]
        )
    p = np.array(pvals)
    assert 0.40 < p.mean() < 0.60
    assert 0.01 <= np.mean(p < 0.05) <= 0.12
    assert stats.kstest(p, "uniform").pvalue > 0.001


def test_compare_requires_same_references_and_roundtrips_json() -> None:
    a = _per(GOOD)
    b = _per(GOOD, [r + " Extra." for r in REFS])
    with pytest.raises(ValueError, match="different references"):
        M.compare_systems(a, b, n_boot=10)
    with pytest.raises(ValueError, match="not available"):
        M.compare_systems(a, a, n_boot=10, metrics=["embed_sim"])
    restored = M.PerExample.from_json(json.loads(json.dumps(a.to_json())))
    cmp = M.compare_systems(restored, a, n_boot=50, metrics=["bleu", "label_f1_micro"])
    assert cmp["bleu"]["delta"] == 0.0


# ---------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        _per(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="reference #1 is empty"):
        _per(["a", "b"], ["a", "  "])
    with pytest.raises(TypeError, match="prediction #0"):
        _per([None], ["a"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="single string"):
        _per("abc", "abc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uncertain_policy"):
        _per(["a"], ["a"], uncertain_policy="maybe")
    with pytest.raises(ValueError, match="findings"):
        M.compute_per_example(["a"], ["a"], ["x", "y"], embed_model=False)
    per = _per(["", "No effusion."], ["Small effusion.", "No effusion."])
    assert per.n_empty_predictions == 1
    assert per.rouge1[0] == 0.0


# ---------------------------------------------------------------------------
# Embedding model (must work offline)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def offline_model():
    """Load the bundled model with every network connection refused."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError("network access attempted during an offline test")

    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket, "create_connection", refuse)
    M.load_embedding_model.cache_clear()
    try:
        model = M.load_embedding_model()
        yield model
    finally:
        mp.undo()


def test_embedding_model_dir_found_via_find_spec() -> None:
    d = M.embedding_model_dir()
    assert (d / "modules.json").is_file()
    assert d.name == "model"


def test_embed_similarity_offline(offline_model) -> None:
    same = M.embed_similarity(
        ["No acute cardiopulmonary abnormality."], ["No acute cardiopulmonary abnormality."], offline_model
    )
    assert same[0] == pytest.approx(1.0, abs=1e-5)
    sims = M.embed_similarity(
        ["No acute cardiopulmonary disease.", "Large right pleural effusion."],
        ["No acute cardiopulmonary abnormality.", "No acute cardiopulmonary abnormality."],
        offline_model,
    )
    assert sims[0] > 0.8 > sims[1]
    assert np.asarray(offline_model.encode(["heart"])).shape[-1] == 384


def test_evaluate_system_json_serialisable(offline_model) -> None:
    res = M.evaluate_system(GOOD, REFS, n_boot=50, seed=0, embed_model=offline_model, return_per_example=True)
    text = json.dumps(res, allow_nan=False)
    assert json.loads(text)["n"] == len(REFS)
    for k in ("rouge1", "rouge2", "rougeL", "bleu", "embed_sim", "label_f1_micro", "label_f1_macro"):
        assert isinstance(res[k], float)
        assert len(res[f"{k}_ci"]) == 2
    assert 0.5 < res["embed_sim"] <= 1.0
    assert len(res["per_finding_f1"]) == 14
    cmp = M.compare_systems(res, res, n_boot=20)
    assert cmp["embed_sim"]["delta"] == 0.0
