"""Tests for the majority and TF-IDF retrieval baselines (synthetic data)."""

from __future__ import annotations

import numpy as np
import pytest

from radimpress_lib.evaluation.baselines import majority_baseline, normalize_impression
from radimpress_lib.llm.retrieval import RetrievalBaseline, with_similar_impressions


def test_normalize_impression_merges_surface_variants() -> None:
    variants = ["No acute disease.", "1. No acute disease. .", "no  acute disease", "No acute disease.."]
    assert {normalize_impression(v) for v in variants} == {"no acute disease"}
    assert normalize_impression("2) Stable cardiomegaly.") == "stable cardiomegaly"
    assert normalize_impression("Nodule 1.5 cm.") == "nodule 1.5 cm"


def test_majority_counts_normalised_forms_returns_commonest_surface() -> None:
    train = [
        "Stable cardiomegaly.",
        "Stable cardiomegaly.",
        "Stable cardiomegaly.",
        "No acute disease.",
        "1. No acute disease.",
        "No acute disease. .",
        "No acute disease.",
    ]
    # 4 normalised "no acute disease" beat 3 "stable cardiomegaly"; most common surface form wins
    assert majority_baseline(train) == "No acute disease."


def test_majority_tie_goes_to_first_seen_and_errors() -> None:
    assert majority_baseline(["B.", "A.", "A.", "B."]) == "B."
    with pytest.raises(ValueError, match="no training impressions"):
        majority_baseline([])
    with pytest.raises(ValueError, match="train impression #1 is empty"):
        majority_baseline(["A.", " "])
    with pytest.raises(TypeError, match="single string"):
        majority_baseline("No acute disease.")  # type: ignore[arg-type]


FINDINGS = [
    "The heart is enlarged. There is a small left pleural effusion.",
    "Lungs are clear. No pneumothorax or effusion. Heart size normal.",
    "Right lower lobe airspace consolidation concerning for pneumonia.",
    "Pacemaker leads terminate in the right ventricle. Lungs clear.",
]
IMPRESSIONS = [
    "Cardiomegaly with small left effusion.",
    "No acute cardiopulmonary abnormality.",
    "Right lower lobe pneumonia.",
    "Pacemaker in place, no acute disease.",
]


def test_retrieval_returns_impression_of_nearest_findings() -> None:
    rb = RetrievalBaseline().fit(FINDINGS, IMPRESSIONS)
    queries = [
        "Consolidation in the right lower lobe, likely pneumonia.",
        "No effusion or pneumothorax. The lungs are clear.",
        "Enlarged heart and small left pleural effusion.",
    ]
    assert rb.predict(queries) == [IMPRESSIONS[2], IMPRESSIONS[1], IMPRESSIONS[0]]
    idx, sims = rb.neighbours(FINDINGS)
    np.testing.assert_array_equal(idx, np.arange(len(FINDINGS)))
    np.testing.assert_allclose(sims, 1.0)
    assert rb.predict([]) == []


def test_retrieval_uses_bigrams_and_sublinear_tf() -> None:
    rb = RetrievalBaseline()
    assert rb.vectorizer.ngram_range == (1, 2)
    assert rb.vectorizer.sublinear_tf and rb.vectorizer.lowercase
    rb.fit(["effusion no change", "no effusion seen"], ["B", "A"])
    # With unigrams alone the query ties with both and the first ("B") would win;
    # the bigram "no effusion" makes the second one nearer.
    assert rb.predict(["No effusion"]) == ["A"]
    unigram = RetrievalBaseline(ngram_range=(1, 1)).fit(["effusion no change", "no effusion seen"], ["B", "A"])
    assert unigram.predict(["No effusion"]) == ["B"]


def test_retrieval_errors() -> None:
    with pytest.raises(RuntimeError, match="fit"):
        RetrievalBaseline().predict(["x"])
    with pytest.raises(ValueError, match="2 training findings but 1 impressions"):
        RetrievalBaseline().fit(["a b", "c d"], ["x"])
    with pytest.raises(ValueError, match="training findings #1 is empty"):
        RetrievalBaseline().fit(["a b", ""], ["x", "y"])
    rb = RetrievalBaseline().fit(FINDINGS, IMPRESSIONS)
    with pytest.raises(TypeError, match="query findings #0"):
        rb.predict([None])  # type: ignore[list-item]


def test_similar_impressions_are_distinct_ranked_and_never_the_same_findings() -> None:
    pool = [
        {"findings": "Right lower lobe opacity. Heart normal.", "impression": "Right lower lobe pneumonia."},
        {"findings": "right lower  lobe opacity.  heart normal.", "impression": "RLL pneumonia."},  # same findings
        {"findings": "Right lower lobe opacity, small effusion.", "impression": "1. Right lower lobe pneumonia."},
        {"findings": "Left lower lobe opacity.", "impression": "Left lower lobe pneumonia."},
        {"findings": "Heart normal. Lungs clear.", "impression": "No acute disease."},
    ]
    out = with_similar_impressions(pool[:1], pool, 2)
    # the query's own findings (and their copy, differently spaced/cased) are skipped; "1. Right lower lobe
    # pneumonia." is the same impression as the query's own after normalisation but comes from another report
    assert out[0]["similar_impressions"] == ["1. Right lower lobe pneumonia.", "Left lower lobe pneumonia."]
    assert out[0]["impression"] == "Right lower lobe pneumonia."  # the record itself is untouched
    # distinct after normalisation: two reports with "No acute disease." give one entry
    pool2 = pool + [{"findings": "Lungs clear, heart normal size.", "impression": "No acute disease"}]
    sims = RetrievalBaseline().fit([r["findings"] for r in pool2], [r["impression"] for r in pool2])
    got = sims.similar_impressions(["Heart normal and lungs clear."], 5)[0]
    assert [normalize_impression(x) for x in got].count("no acute disease") == 1
    assert got[0].startswith("No acute disease")
    assert with_similar_impressions(pool[:2], pool, 0) == [dict(r) for r in pool[:2]]
    with pytest.raises(ValueError, match="k must be positive"):
        sims.similar_impressions(["x"], -1)
