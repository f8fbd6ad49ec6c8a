"""MBR selection among the draft and the retrieved impressions (radimpress_lib.llm.selection)."""

from __future__ import annotations

import pytest

from radimpress_lib.llm.selection import MBRSelector

FINDINGS = {"findings": "Heart size normal. Lungs clear. No effusion or pneumothorax."}


def test_consensus_wins_and_ties_go_to_the_draft():
    sel = MBRSelector(k=3)
    out = sel.select(FINDINGS, "Clear lungs, normal heart size, and no effusion seen here today.",
                     ["No acute cardiopulmonary abnormality.", "No acute cardiopulmonary abnormality.",
                      "No acute cardiopulmonary disease."])
    assert out.text == "No acute cardiopulmonary abnormality." and out.source == "retrieved:1"
    same = sel.select(FINDINGS, "No acute disease.", ["No acute disease."])
    assert same.source == "draft"


def test_factual_filter_keeps_retrieved_impressions_that_add_problems_out():
    record = {"findings": "Small left pleural effusion. Heart size normal."}
    draft = "Small left pleural effusion."
    wrong = ["No pleural effusion. Pneumothorax.", "No pleural effusion. Pneumothorax.", "Pneumothorax."]
    assert MBRSelector(k=3).select(record, draft, wrong).text == draft  # every neighbour contradicts the findings
    assert MBRSelector(k=3, factual=False).select(record, draft, wrong).text != draft


def test_empty_draft_is_replaced_by_a_consistent_neighbour_and_k_is_respected():
    out = MBRSelector(k=2).select(FINDINGS, "", ["No acute disease.", "No acute disease.", "Pneumonia."])
    assert out.text == "No acute disease." and out.n_candidates <= 3
    with pytest.raises(ValueError):
        MBRSelector(k=0)
    with pytest.raises(ValueError, match="records"):
        MBRSelector().select_many([FINDINGS], ["a", "b"], [[]])
