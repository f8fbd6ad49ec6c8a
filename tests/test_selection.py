"""MBR selection among the draft and the retrieved impressions (radimpress_lib.llm.selection)."""

from __future__ import annotations

import pytest

from radimpress_lib.llm.selection import MBRSelector, coverage_sentences, with_sentences_first

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


def test_coverage_sentences_name_what_the_draft_omits_in_findings_order():
    findings = "The heart is mildly enlarged. No pneumothorax. There is a small left pleural effusion. Lungs clear."
    assert coverage_sentences(findings, "No acute disease.") == [
        "The heart is mildly enlarged.", "There is a small left pleural effusion."]
    assert coverage_sentences(findings, "Cardiomegaly. Small left effusion.") == []
    assert coverage_sentences(FINDINGS["findings"], "No acute disease.") == []  # nothing present to omit


def test_sentences_go_first_and_a_numbered_draft_stays_numbered():
    assert with_sentences_first("No acute disease.", ["Heart enlarged."]) == "Heart enlarged. No acute disease."
    assert with_sentences_first("1. No acute disease. 2. Old rib fracture.", ["Heart enlarged."]) == (
        "1. Heart enlarged. 2. No acute disease. 3. Old rib fracture.")
    assert with_sentences_first("No acute disease.", []) == "No acute disease."


def test_coverage_hypothesis_and_flag_penalty_pick_the_impression_that_covers_the_findings():
    record = {"findings": "The heart is mildly enlarged. Lungs are clear. No pleural effusion."}
    draft = "No acute cardiopulmonary disease."
    neighbours = ["No acute cardiopulmonary disease.", "No acute disease.", "No acute cardiopulmonary abnormality."]
    assert MBRSelector(k=3).select(record, draft, neighbours).text == draft  # plain consensus: the normal draft
    covered = MBRSelector(k=3, coverage=True, flag_penalty=1.0).select(record, draft, neighbours)
    assert covered.source == "coverage"
    assert covered.text == "The heart is mildly enlarged. No acute cardiopulmonary disease."
    # the penalty alone moves the choice to a neighbour that states the finding
    stated = MBRSelector(k=3, flag_penalty=2.0, factual=False).select(
        record, draft, ["Mild cardiomegaly. No acute disease.", "No acute disease.", "No acute disease."])
    assert stated.text == "Mild cardiomegaly. No acute disease."
    assert MBRSelector(k=3, flag_penalty=0.0, factual=False).select(
        record, draft, ["Mild cardiomegaly. No acute disease.", "No acute disease.", "No acute disease."]
    ).text != "Mild cardiomegaly. No acute disease."
    with pytest.raises(ValueError, match="flag_penalty"):
        MBRSelector(flag_penalty=-1)


def _twin_pool():
    twin = "Lungs clear. Heart normal."
    return [{"report_id": "t1", "findings": twin, "impression": "Normal chest."},
            {"report_id": "t2", "findings": twin + " ", "impression": "1. Normal chest."},  # same keys: one twin
            {"report_id": "t3", "findings": twin, "impression": "Normal chest, clear lungs."},
            {"report_id": "q", "findings": twin, "impression": "Query's own impression."},
            *({"report_id": f"n{i}", "findings": f"Lungs clear. Heart normal in size. Note {i}.",
               "impression": f"No acute cardiopulmonary {word}."}
              for i, word in enumerate(("abnormality", "disease", "process")))]


def test_same_findings_impressions_are_the_twins_distinct_in_pool_order_never_the_report_itself():
    from radimpress_lib.llm.retrieval import RetrievalBaseline

    pool = _twin_pool()
    index = RetrievalBaseline().fit([r["findings"] for r in pool], [r["impression"] for r in pool],
                                    [r["report_id"] for r in pool])
    query = "lungs  clear.  heart normal."
    assert index.same_findings_impressions([query], 5, exclude_ids=["q"]) == [
        ["Normal chest.", "Normal chest, clear lungs."]]
    assert index.same_findings_impressions([query], 5)[0][-1] == "Query's own impression."
    assert index.same_findings_impressions([query, "Pneumothorax."], 1, exclude_ids=["q", None]) == [
        ["Normal chest."], []]
    with pytest.raises(ValueError, match="k must be positive"):
        index.same_findings_impressions([query], 0)


def test_twins_replace_the_nearest_as_evidence_under_the_published_protocol_only():
    from radimpress_lib.llm.selection import NeighbourMBR

    pool = _twin_pool()
    record, draft = [pool[3]], ["Heart and lungs normal."]
    kw = {"factual": False, "flag_penalty": 0.0, "coverage": False}
    twins = NeighbourMBR(pool, 5, same_findings=True, twins=True, **kw)(record, draft)[0]
    assert (twins.text, twins.source) == ("Normal chest.", "twin:1")  # consensus of the draft and the twins
    nearest = NeighbourMBR(pool, 5, same_findings=True, twins=False, **kw)(record, draft)[0]
    assert nearest.source.startswith("retrieved:") and nearest.text.startswith("No acute cardiopulmonary")
    dedup = NeighbourMBR(pool, 5, same_findings=False, twins=True, **kw)  # protocol B: no twins in the evidence
    assert not dedup.twins and dedup(record, draft)[0].text.startswith("No acute cardiopulmonary")
    assert "twins' impressions" in NeighbourMBR(pool, 5, same_findings=True, twins=True).describe()
