"""Factual guard: flagged drafts are re-ranked over beam candidates; others are never touched."""

from __future__ import annotations

import pytest
from graph_fixtures import tiny_llama
from transformers import AutoTokenizer

from radimpress_lib.core import config
from radimpress_lib.evaluation import factual_guard
from radimpress_lib.llm.generation import read_predictions_jsonl

RECORDS = [
    {"report_id": "1", "findings": "No pneumothorax. No pleural effusion. Heart size is normal.",
     "impression": "No acute disease."},
    {"report_id": "2", "findings": "Small right pleural effusion. No pneumothorax.",
     "impression": "Small right pleural effusion."},
    {"report_id": "3", "findings": "Mild cardiomegaly. The lungs are clear.", "impression": "Mild cardiomegaly."},
]


def _rows(drafts: list[str]) -> list[dict]:
    return [{"report_id": r["report_id"], "prediction": d, "reference": r["impression"], "model": "m",
             "params_hash": "h"} for r, d in zip(RECORDS, drafts)]


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir):
    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


def test_draft_conflicts() -> None:
    assert factual_guard.draft_conflicts(RECORDS[0]["findings"], "Large right pneumothorax.") == (1, 0)
    assert factual_guard.draft_conflicts(RECORDS[0]["findings"], "No pneumothorax.") == (0, 0)
    assert factual_guard.draft_conflicts(RECORDS[2]["findings"], "No cardiomegaly.")[0] == 1
    assert factual_guard.draft_conflicts(RECORDS[2]["findings"], "Mild cardiomegaly. Hiatal hernia.") == (0, 1)


def test_guard_reranks_only_flagged_drafts(monkeypatch, tokenizer, tmp_path) -> None:
    candidates = {
        # rank 0 still flips, rank 1 flips nothing but adds a hallucinated finding, rank 2 is clean
        "1": ["Right pneumothorax.", "No pneumothorax. Right lower lobe pneumonia.", "No acute disease."],
        # every candidate still negates the cardiomegaly the findings state
        "3": ["No cardiomegaly.", "Heart size is normal.", "No cardiomegaly or effusion."],
    }
    seen = []

    def fake(model, tok, prompt, n, max_new_tokens):
        rid = next(k for k, r in zip("123", RECORDS) if r["findings"] in prompt)
        seen.append((rid, n, max_new_tokens))
        return candidates[rid]

    monkeypatch.setattr(factual_guard, "_candidates", fake)
    drafts = ["Right pneumothorax.", "Small right pleural effusion.", "No cardiomegaly."]
    res = factual_guard.guard_predictions(tiny_llama(len(tokenizer)), tokenizer, RECORDS, _rows(drafts),
                                          n_candidates=3, max_new_tokens=16, model_name="m_guarded",
                                          out_path=tmp_path / "g.jsonl", log=lambda _: None)
    assert [s[0] for s in seen] == ["1", "3"] and {s[1:] for s in seen} == {(3, 16)}
    assert (res.n_flagged, res.n_fixed, res.n_unresolved) == (2, 1, 1)
    got = [p["prediction"] for p in res.predictions]
    assert got == ["No acute disease.", drafts[1], drafts[2]]
    assert res.predictions[0]["guard"] == {"original": drafts[0], "beam_rank": 2}
    assert res.predictions[2]["guard"] == {"original": drafts[2], "beam_rank": None}
    assert "guard" not in res.predictions[1]
    assert {p["model"] for p in res.predictions} == {"m_guarded"}
    assert res.changes == [{"report_id": "1", "original": drafts[0], "guarded": "No acute disease.", "beam_rank": 2}]
    assert [p["prediction"] for p in read_predictions_jsonl(tmp_path / "g.jsonl")] == got
    # the labeler (independent of the entity graph) sees the flips of the raw drafts and one left after the guard
    assert factual_guard.labeler_flip_rate(RECORDS, drafts) == pytest.approx(200 / 3)
    assert factual_guard.labeler_flip_rate(RECORDS, got) == pytest.approx(100 / 3)


def test_guard_beam_candidates_on_tiny_model(tokenizer) -> None:
    """The real beam path: n distinct-rank candidates from one prompt, decoded to text."""
    model = tiny_llama(len(tokenizer))
    texts = factual_guard._candidates(model, tokenizer, "Findings: no pneumothorax.", 3, 6)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    res = factual_guard.guard_predictions(model, tokenizer, RECORDS[:1], _rows(["Right pneumothorax."])[:1],
                                          n_candidates=3, max_new_tokens=6, log=lambda _: None)
    assert res.n_flagged == 1 and res.n_fixed + res.n_unresolved == 1
    assert model.training is False


def test_guard_input_checks(tokenizer) -> None:
    model = tiny_llama(len(tokenizer))
    with pytest.raises(ValueError, match="n_candidates"):
        factual_guard.guard_predictions(model, tokenizer, RECORDS, _rows(["a", "b", "c"]), n_candidates=1,
                                        max_new_tokens=4)
    with pytest.raises(ValueError, match="does not match"):
        factual_guard.guard_predictions(model, tokenizer, RECORDS, _rows(["a", "b", "c"])[::-1], n_candidates=2,
                                        max_new_tokens=4)
    with pytest.raises(ValueError, match="guard_candidates"):
        config.EvalStageConfig(guard_candidates=1)
