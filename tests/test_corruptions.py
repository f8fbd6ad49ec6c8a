"""Factual corruptions: each type, determinism, not-applicable counting, preference pairs, sensitivity table."""

from __future__ import annotations

import pytest

from radimpress_lib.clinical import corruptions as C
from radimpress_lib.clinical.graph import extract_graph
from radimpress_lib.evaluation import sensitivity

TEXTS = [
    "1. Mild cardiomegaly. 2. No pneumothorax.",
    "Small left pleural effusion.",
    "No acute cardiopulmonary abnormality.",
    "Cardiomegaly with small bilateral pleural effusions.",
    "There is a calcified granuloma in the right lower lobe. Heart size is mildly enlarged.",
]


def _statuses(text: str) -> set[tuple[str, str]]:
    return {(e.name, e.status) for e in extract_graph(text).observations()}


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("Small left pleural effusion.", "negation_flip", "No small left pleural effusion."),
        ("No pneumothorax.", "negation_flip", "Pneumothorax."),
        ("There is no pleural effusion.", "negation_flip", "There is pleural effusion."),
        ("The heart is enlarged.", "negation_flip", "The heart is not enlarged."),
        ("Stable right upper lobe nodule.", "negation_flip", "No stable right upper lobe nodule."),
        ("Lungs are clear without effusion.", "negation_flip", "Lungs are clear with effusion."),
        ("Small left pleural effusion.", "laterality_swap", "Small right pleural effusion."),
        ("Mild cardiomegaly. No effusion.", "dropped_finding", "No effusion."),
        ("Cardiomegaly with small bilateral pleural effusions.", "dropped_finding", None),  # either clause
        ("Heart is mildly enlarged.", "severity_change", None),
    ],
)
def test_each_corruption(text: str, kind: str, expected: str | None) -> None:
    c = C.corrupt(text, kind, seed=0)
    assert c is not None and c.type == kind and c.pair_type == f"factual:{kind}"
    assert c.original == text and c.corrupted != text and c.detail
    if expected is not None:
        assert c.corrupted == expected
    if kind == "severity_change":
        assert c.corrupted in ("Heart is severely enlarged.", "Heart is moderately enlarged.")
    if kind == "dropped_finding" and expected is None:
        assert c.corrupted in ("Cardiomegaly.", "Small bilateral pleural effusions.")


def test_negation_flip_changes_a_status_the_graph_sees() -> None:
    for text in ("Small left pleural effusion.", "No pneumothorax.", "No acute cardiopulmonary abnormality."):
        c = C.corrupt(text, "negation_flip")
        assert (c.detail["entity"], c.detail["to"]) in _statuses(c.corrupted)
        assert (c.detail["entity"], c.detail["from"]) not in _statuses(c.corrupted)


def test_inserted_finding_is_new_group() -> None:
    c = C.corrupt("Small left pleural effusion.", "inserted_finding", seed=3)
    assert c.detail["group"] != "pleural effusion" and c.detail["inserted"] in c.corrupted
    groups = {e.group for e in extract_graph(c.corrupted).observations()}
    assert c.detail["group"] in groups


def test_not_applicable_returns_none_and_is_counted() -> None:
    assert C.corrupt("No acute cardiopulmonary abnormality.", "laterality_swap") is None
    assert C.corrupt("No acute cardiopulmonary abnormality.", "severity_change") is None
    assert C.corrupt("Small effusion.", "dropped_finding") is None  # one clause, nothing left
    assert C.corrupt("   ", "negation_flip") is None
    out, skipped = C.corrupt_many(TEXTS, seed=0)
    assert set(out) == set(C.CORRUPTION_TYPES)
    for kind in C.CORRUPTION_TYPES:
        assert len(out[kind]) == len(TEXTS)
        assert skipped[kind] == sum(c is None for c in out[kind])
    assert skipped["laterality_swap"] == 3 and skipped["inserted_finding"] == 0
    with pytest.raises(ValueError, match="unknown corruption"):
        C.corrupt("x", "typo")
    with pytest.raises(TypeError, match="text #1"):
        C.corrupt_many(["a", None])  # type: ignore[list-item]


def test_deterministic_given_seed() -> None:
    a, _ = C.corrupt_many(TEXTS, seed=7)
    b, _ = C.corrupt_many(TEXTS, seed=7)
    assert a == b
    seeds = {C.corrupt(TEXTS[4], "inserted_finding", seed=s).corrupted for s in range(8)}
    assert len(seeds) > 1  # the seed matters


def test_corrupt_impression_seam_for_the_reward_model() -> None:
    import random

    fn = C.corrupt_impression
    out = fn("Small left pleural effusion.", random.Random(0))
    assert out is not None and out[1] in C.CORRUPTION_TYPES and out[0] != "Small left pleural effusion."
    assert fn("Small left pleural effusion.", random.Random(0)) == out  # same rng state, same corruption
    assert C.corrupt_impression("   ", random.Random(0)) is None


def test_sensitivity_table_and_plot() -> None:
    refs = ["Small left pleural effusion.", "Mild cardiomegaly. No pneumothorax.",
            "Right lower lobe pneumonia.", "No acute cardiopulmonary abnormality."]
    findings = ["Small left pleural effusion. Heart normal.", "Mild cardiomegaly. No pneumothorax.",
                "Right lower lobe consolidation, pneumonia.", "Lungs are clear."]
    table = sensitivity.sensitivity_table(refs, findings, embed_model=False, n_boot=50, seed=0)
    assert set(table["corruption"]) == set(C.CORRUPTION_TYPES)
    flip = table[(table.corruption == "negation_flip")].set_index("metric")
    assert flip.loc["graph_f1", "identity"] == pytest.approx(100.0)
    assert flip.loc["graph_f1", "drop"] > 0 and flip.loc["rougeL", "drop"] > 0
    assert flip.loc["negation_flip_rate", "drop"] > 0  # the flip is seen against the findings
    lat = table[(table.corruption == "laterality_swap")].set_index("metric")
    assert lat.loc["graph_entity_f1", "drop"] > 0 and lat.loc["label_f1_micro", "drop"] == pytest.approx(0.0)
    assert int(lat["n_applied"].iloc[0]) == 2 and int(lat["n_not_applicable"].iloc[0]) == 2
    pivot = sensitivity.sensitivity_pivot(table)
    assert "graph_f1" in pivot.columns and "negation_flip" in pivot.index
    fig = sensitivity.plot_sensitivity(table)
    assert fig.axes
