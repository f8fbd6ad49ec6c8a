"""Notebook 05 orchestration: baselines, scoring several systems, metrics.json merging, tables."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import pytest

from radimpress_lib import evaluation


def _rec(i, findings, impression):
    return {"report_id": str(i), "findings": findings, "impression": impression}


TRAIN = [
    _rec(1, "Heart size normal. Lungs clear.", "No acute cardiopulmonary abnormality."),
    _rec(2, "Heart size normal. Lungs are clear. No effusion.", "No acute cardiopulmonary abnormality."),
    _rec(3, "Large right pleural effusion.", "Large right pleural effusion."),
    _rec(4, "Enlarged cardiac silhouette. Lungs clear.", "Cardiomegaly."),
]
TEST = [
    _rec(10, "Heart size normal. The lungs are clear.", "No acute cardiopulmonary abnormality."),
    _rec(11, "Large right pleural effusion is present.", "Right pleural effusion."),
    _rec(12, "The cardiac silhouette is enlarged.", "Cardiomegaly."),
]


def test_baselines_use_train_only():
    preds = evaluation.baseline_predictions(TRAIN, TEST)
    assert preds["majority"] == ["No acute cardiopulmonary abnormality."] * 3
    assert preds["retrieval"][1] == "Large right pleural effusion."
    assert preds["retrieval"][2] == "Cardiomegaly."


@pytest.fixture(scope="module")
def scored():
    systems = evaluation.baseline_predictions(TRAIN, TEST)
    systems["oracle"] = [r["impression"] for r in TEST]
    return systems, *evaluation.evaluate_systems(systems, TEST, n_boot=200, seed=0)


def test_scores_and_table(scored):
    systems, scores, per = scored
    assert scores["oracle"]["rougeL"] == pytest.approx(100.0)
    assert scores["retrieval"]["rougeL"] > scores["majority"]["rougeL"]
    table = evaluation.metrics_table(scores)
    assert list(table.index[:3]) == ["majority", "retrieval", "oracle"]
    assert table.loc["oracle", "rougeL"].startswith("100.0 [")
    assert any("68.2 (published)" == v for v in table["rougeL"])


def test_wrong_length_is_refused():
    with pytest.raises(ValueError, match="system 'short' has 1 predictions for 3"):
        evaluation.evaluate_systems({"short": ["x"]}, TEST, n_boot=10)


def test_comparisons_and_worst(scored):
    systems, scores, per = scored
    comp = evaluation.comparisons(per, "oracle", n_boot=200)
    row = comp[(comp.vs == "majority") & (comp.metric == "rougeL")].iloc[0]
    assert row.delta > 0 and row.ci_low <= row.delta <= row.ci_high
    worst = evaluation.worst_examples(TEST, systems["majority"], per["majority"], k=2)
    assert len(worst) == 2 and worst.iloc[0]["rougeL"] <= worst.iloc[1]["rougeL"]
    assert worst.iloc[0]["rougeL"] < 50


def test_plots(scored):
    _, _, per = scored
    table = evaluation.per_finding_table(per)
    assert {"system", "observation", "f1", "n_ref"} <= set(table.columns)
    assert evaluation.plot_per_finding_f1(table) is not None
    assert evaluation.plot_lengths(per) is not None


def test_metrics_json_merges_and_checks_n(tmp_path, scored):
    _, scores, _ = scored
    path = tmp_path / "metrics.json"
    evaluation.update_metrics_json(path, {"majority": scores["majority"]}, n=3)
    evaluation.update_metrics_json(path, {"retrieval": scores["retrieval"]}, n=3)
    data = json.loads(path.read_text())
    assert set(data) == {"majority", "retrieval", "n"} and data["n"] == 3
    assert data["retrieval"]["rougeL_ci"][0] <= data["retrieval"]["rougeL"] <= data["retrieval"]["rougeL_ci"][1]
    with pytest.raises(ValueError, match="n=3"):
        evaluation.update_metrics_json(path, {"x": scores["majority"]}, n=4)
