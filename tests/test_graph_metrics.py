"""Graph metrics inside radimpress_lib.evaluation.metrics: per-example statistics, rates, CIs, JSON round trip."""

from __future__ import annotations

import json

import pytest

from radimpress_lib.evaluation import metrics as M

FINDINGS = [
    "Heart size is normal. Small left pleural effusion. No pneumothorax.",
    "The lungs are clear. No pleural effusion.",
    "Mild cardiomegaly. Right lower lobe opacity.",
    "Lungs are clear.",
]
REFS = ["Small left pleural effusion.", "No acute cardiopulmonary abnormality.",
        "Cardiomegaly with right lower lobe pneumonia.", "Normal chest."]
PREDS = [
    "Small left pleural effusion.",  # perfect
    "Right pleural effusion.",  # flips the findings' "no pleural effusion"
    "Cardiomegaly.",  # omits the opacity of the findings
    "Left upper lobe mass.",  # hallucinated
]


def _per(preds, refs=REFS, findings=FINDINGS) -> M.PerExample:
    return M.compute_per_example(preds, refs, findings, embed_model=False)


def test_graph_metrics_values_and_cis() -> None:
    res = M.summarize(_per(PREDS), n_boot=50, seed=0)
    for k in ("graph_f1", "graph_entity_f1", "negation_flip_rate", "hallucinated_finding_rate",
              "omitted_finding_rate"):
        assert k in res and f"{k}_ci" in res
        lo, hi = res[f"{k}_ci"]
        assert lo <= res[k] <= hi
    assert res["negation_flip_rate"] == pytest.approx(25.0)
    assert res["hallucinated_finding_rate"] == pytest.approx(25.0)
    assert res["omitted_finding_rate"] == pytest.approx(25.0)  # the third drops the opacity
    assert 0.0 < res["graph_f1"] < 100.0


def test_identical_predictions_score_100_and_rates_need_findings() -> None:
    res = M.summarize(_per(REFS), n_boot=10, seed=0)
    assert res["graph_f1"] == pytest.approx(100.0) and res["graph_entity_f1"] == pytest.approx(100.0)
    no_findings = M.summarize(M.compute_per_example(PREDS, REFS, None, embed_model=False), n_boot=10, seed=0)
    assert "graph_f1" in no_findings and "negation_flip_rate" not in no_findings


def test_per_example_json_roundtrip_and_old_files() -> None:
    per = _per(PREDS)
    again = M.PerExample.from_json(json.loads(json.dumps(per.to_json())))
    assert M.summarize(again, n_boot=10, seed=0) == M.summarize(per, n_boot=10, seed=0)
    old = per.to_json()
    for k in ("graph_f1", "graph_entity_f1", "graph_flags"):
        old.pop(k)
    res = M.summarize(M.PerExample.from_json(old), n_boot=10, seed=0)  # files written before the graph metrics
    assert "graph_f1" not in res and "rougeL" in res
    cmp = M.compare_systems(per, _per(REFS), n_boot=50, seed=0, metrics=["graph_f1", "negation_flip_rate"])
    assert cmp["graph_f1"]["delta"] < 0 and cmp["negation_flip_rate"]["delta"] > 0
