"""Notebook 05 orchestration: baselines, scoring several systems, metrics.json merging, tables."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import pytest

from radimpress_lib.evaluation import scoring


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
    preds = scoring.baseline_predictions(TRAIN, TEST)
    assert preds["majority"] == ["No acute cardiopulmonary abnormality."] * 3
    assert preds["retrieval"][1] == "Large right pleural effusion."
    assert preds["retrieval"][2] == "Cardiomegaly."


@pytest.fixture(scope="module")
def scored():
    systems = scoring.baseline_predictions(TRAIN, TEST)
    systems["oracle"] = [r["impression"] for r in TEST]
    return systems, *scoring.evaluate_systems(systems, TEST, n_boot=200, seed=0)


def test_scores_and_table(scored):
    systems, scores, per = scored
    assert scores["oracle"]["rougeL"] == pytest.approx(100.0)
    assert scores["retrieval"]["rougeL"] > scores["majority"]["rougeL"]
    table = scoring.metrics_table(scores)
    assert list(table.index) == ["majority", "retrieval", "oracle"]  # no published anchors beside our protocol
    assert table.loc["oracle", "rougeL (stemmed)"].startswith("100.0 [")
    assert "bleu (sacreBLEU corpus)" in table.columns


def test_wrong_length_is_refused():
    with pytest.raises(ValueError, match="system 'short' has 1 predictions for 3"):
        scoring.evaluate_systems({"short": ["x"]}, TEST, n_boot=10)


def test_comparisons_and_worst(scored):
    systems, scores, per = scored
    comp = scoring.comparisons(per, "oracle", n_boot=200)
    row = comp[(comp.vs == "majority") & (comp.metric == "rougeL")].iloc[0]
    assert row.delta > 0 and row.ci_low <= row.delta <= row.ci_high
    worst = scoring.worst_examples(TEST, systems["majority"], per["majority"], k=2)
    assert len(worst) == 2 and worst.iloc[0]["rougeL"] <= worst.iloc[1]["rougeL"]
    assert worst.iloc[0]["rougeL"] < 50


def test_plots(scored):
    _, _, per = scored
    table = scoring.per_finding_table(per)
    assert {"system", "observation", "f1", "n_ref"} <= set(table.columns)
    fig = scoring.plot_per_finding_f1(table)
    labels = [label.get_text() for label in fig.axes[0].get_yticklabels()]
    support = table.groupby("observation")["n_ref"].max()
    assert labels and all(label == f"{obs} (n={support[obs]})" for label in labels for obs in [label.rsplit(" (", 1)[0]])
    assert scoring.plot_lengths(per) is not None


def test_metrics_json_merges_and_checks_n(tmp_path, scored):
    _, scores, _ = scored
    path = tmp_path / "metrics.json"
    scoring.update_metrics_json(path, {"majority": scores["majority"]}, n=3)
    scoring.update_metrics_json(path, {"retrieval": scores["retrieval"]}, n=3)
    data = json.loads(path.read_text())
    assert set(data) == {"majority", "retrieval", "n", "protocol"} and data["n"] == 3
    assert data["protocol"] == "deduplicated"
    assert data["retrieval"]["rougeL_ci"][0] <= data["retrieval"]["rougeL"] <= data["retrieval"]["rougeL_ci"][1]
    with pytest.raises(ValueError, match="n=3"):
        scoring.update_metrics_json(path, {"x": scores["majority"]}, n=4)
