"""Patient-friendly rewrite: glossary, reverse mapping, readability, preservation checks, guard, study on tiny-llama."""

from __future__ import annotations

import math

import pytest

from radimpress_lib.apps import patient
from radimpress_lib.clinical import labeler
from radimpress_lib.core import config

# Synthetic impressions covering the CheXpert observations (written for the tests, not taken from the data).
IMPRESSIONS = [
    "No acute cardiopulmonary abnormality.",
    "Cardiomegaly with small bilateral pleural effusions.",
    "Right lower lobe consolidation consistent with pneumonia.",
    "Bibasilar atelectasis. No pneumothorax.",
    "Mild pulmonary edema and vascular congestion.",
    "Left upper lobe nodule, recommend CT. No pleural effusion.",
    "Healed right rib fracture. Sternotomy wires.",
    "Patchy airspace disease in the lingula, possibly pneumonia.",
    "Calcified granuloma. Otherwise unremarkable.",
    "Enlarged cardiomediastinal silhouette. Hyperinflated lungs consistent with COPD.",
    "Right apical pneumothorax. Interstitial opacities.",
    "Stable pleural thickening at the left costophrenic angle.",
]


def test_glossary_has_enough_terms():
    assert len(patient.GLOSSARY) >= 80
    assert all(k == k.lower().strip() and v.strip() for k, v in patient.GLOSSARY.items())
    assert all(k != v for k, v in patient.GLOSSARY.items())


def test_glossary_rewrite_whole_words_case_and_longest_match():
    assert patient.glossary_rewrite("No acute cardiopulmonary abnormality.") == "No new heart or lung problem."
    assert patient.glossary_rewrite("Small PLEURAL   EFFUSIONS.") == "Small fluid around the lungs."
    assert patient.glossary_rewrite("Massive effusion") == "Massive fluid buildup"  # 'mass' not inside 'massive'
    assert patient.glossary_rewrite("Pneumothorax.") == "Air leak around the lung."
    assert patient.glossary_terms_in("Bibasilar atelectasis, no pneumothorax.") == [
        "bibasilar", "atelectasis", "pneumothorax"]


@pytest.mark.parametrize("text", IMPRESSIONS)
def test_glossary_rewrite_round_trips_through_the_labeler(text):
    """Mapping the plain rewrite back gives the labeler the same findings as the original."""
    rewrite = patient.glossary_rewrite(text)
    assert rewrite != text
    changes = patient.label_changes(text, rewrite)
    assert changes == {"lost": [], "flipped": [], "added": [], "dropped_negatives": []}, (rewrite, changes)


def test_label_changes_detects_lost_flipped_added():
    original = "Small left pleural effusion. No pneumothorax."
    assert patient.label_changes(original, "Your lungs look normal.")["lost"] == ["Pleural Effusion"]
    flipped = patient.label_changes(original, "No fluid around the lung. There is an air leak around the lung.")
    assert sorted(flipped["flipped"]) == ["Pleural Effusion", "Pneumothorax"]
    added = patient.label_changes(original, "Small fluid around the lung. Broken bone. No air leak around the lung.")
    assert added["added"] == ["Fracture"] and not added["lost"] and not added["flipped"]
    dropped = patient.label_changes(original, "Small fluid around the lung.")
    assert dropped == {"lost": [], "flipped": [], "added": [], "dropped_negatives": ["Pneumothorax"]}
    # The reverse mapping does not touch common plain words ("normal" stays "normal").
    assert patient.back_translate("Heart size upper limits of normal.") == "Heart size upper limits of normal."
    assert labeler.label_report(patient.back_translate("Enlarged heart."))["Cardiomegaly"] == labeler.POSITIVE


def test_readability_offline():
    hard = "No acute cardiopulmonary abnormality. Bibasilar atelectasis."
    easy = patient.glossary_rewrite(hard)
    assert patient.fk_grade(easy) < 8 < patient.fk_grade(hard)
    assert math.isnan(patient.fk_grade("  "))


def test_build_nltk_cmudict_format(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path), *nltk.data.path])  # NLTK reads only from its data paths
    target = patient.build_nltk_cmudict(
        [b"heart HH AA1 R T\n", "lung L AH1 NG # comment\n", b"lung(2) L UH1 NG\n", b"\n"], tmp_path / "c" / "cmudict")
    assert target.read_text().splitlines() == ["HEART 1 HH AA1 R T", "LUNG 1 L AH1 NG", "LUNG 2 L UH1 NG"]
    from nltk.corpus.reader import CMUDictCorpusReader

    assert CMUDictCorpusReader(str(target.parent), ["cmudict"]).dict()["lung"] == [["L", "AH1", "NG"], ["L", "UH1", "NG"]]


def test_assessment_and_guard():
    original = "Cardiomegaly. No pleural effusion."
    gloss = patient.assess(original, patient.glossary_rewrite(original))
    assert gloss.preserved and gloss.readable and gloss.ok
    good = patient.assess(original, "Your heart is an enlarged heart. No fluid around the lung.")
    bad = patient.assess(original, "Your heart is fine. There is fluid around the lung.")
    assert good.preserved and not bad.preserved and bad.lost == ["Cardiomegaly"] and bad.flipped == ["Pleural Effusion"]
    assert not patient.assess(original, "").preserved
    easier = patient.Assessment("x", grade=gloss.grade - 1.0)
    harder = patient.Assessment("x", grade=gloss.grade + 1.0)
    assert patient.choose_final(gloss, easier, recall=0.8, min_recall=0.6) == ("llm", easier)
    assert patient.choose_final(gloss, easier, recall=0.2, min_recall=0.6) == ("glossary", gloss)
    assert patient.choose_final(gloss, harder, recall=1.0) == ("glossary", gloss)
    unsafe = patient.Assessment("x", grade=gloss.grade - 1.0, lost=["Cardiomegaly"])
    assert patient.choose_final(gloss, unsafe, recall=1.0) == ("glossary", gloss)
    assert patient.choose_final(gloss, None) == ("glossary", gloss)
    assert patient.content_recall("enlarged heart, fluid around the lung", "The heart is enlarged.") == pytest.approx(0.4)
    assert patient.content_recall("", "x") == 1.0


def _cfg(**kw):
    base = config.PatientStageConfig()
    return base.model_copy(update=kw)


def test_rewrite_study_glossary_only():
    records = [{"report_id": str(i), "impression": t} for i, t in enumerate(IMPRESSIONS)]
    rows, summary = patient.rewrite_study(records, _cfg(use_llm=False))
    assert len(rows) == len(IMPRESSIONS) and set(summary) == {"original", "glossary", "final"}
    assert summary["final"]["share_preserved"] == 1.0
    assert summary["final"]["grade_mean"] < summary["original"]["grade_mean"]
    assert all(r["final_source"] == "glossary" and r["llm"] is None for r in rows)
    with pytest.raises(ValueError, match="patient.use_llm"):
        patient.rewrite_study(records, _cfg(use_llm=True))


def test_rewrite_study_with_tiny_llm():
    from radimpress_lib.llm import models

    model, tokenizer, _ = models.load_model_and_tokenizer("tiny-llama", seed=0)
    records = [{"report_id": str(i), "impression": t} for i, t in enumerate(IMPRESSIONS[:3])]
    lines = []
    rows, summary = patient.rewrite_study(records, _cfg(max_new_tokens=5), model=model, tokenizer=tokenizer,
                                          batch_size=2, log=lines.append)
    assert len(lines) == 2 and summary["llm"]["n"] == 3
    assert all(isinstance(r["llm"], str) and r["llm_content_recall"] is not None for r in rows)
    # Random weights write nonsense: the guard falls back to the glossary version, which keeps every finding.
    assert summary["final"]["share_preserved"] == 1.0
    sample = patient.sample_impressions(records * 5, 4, seed=1)
    assert len(sample) == 4 and patient.sample_impressions(records, 10, seed=1) == records
