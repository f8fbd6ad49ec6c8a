"""Tests for the rule-based CheXpert-style labeler."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from radimpress_lib.clinical.labeler import (
    ABSENT,
    NEGATIVE,
    OBSERVATIONS,
    POSITIVE,
    UNCERTAIN,
    aggregate_statuses,
    find_mentions,
    label_agreement,
    label_report,
    label_reports,
    label_sentence,
    split_sentences,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gold_text import gold_sentences as load_gold_sentences
from labeler_gold import GOLD, GOLD_DEV, GOLD_HELDOUT, GoldSentence

REPO_ROOT = Path(__file__).resolve().parents[1]


def _only(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if v != ABSENT}


# ---------------------------------------------------------------------------
# Sentence splitting
# ---------------------------------------------------------------------------


def test_split_sentences_basic_and_list_markers() -> None:
    text = "1. No acute disease.  2. Stable   cardiomegaly vs. effusion. . Lungs clear"
    assert split_sentences(text) == [
        "1. No acute disease.",
        "2. Stable cardiomegaly vs. effusion. .",
        "Lungs clear",
    ]


def test_split_sentences_inline_numbered_item_and_roundtrip() -> None:
    text = "1. No acute disease 2. Stable cardiomegaly."
    sents = split_sentences(text)
    assert sents == ["1. No acute disease", "2. Stable cardiomegaly."]
    assert " ".join(sents) == text


def test_split_sentences_keeps_decimals_and_empty() -> None:
    assert split_sentences("A 1.5 cm nodule. No effusion.") == ["A 1.5 cm nodule.", "No effusion."]
    assert split_sentences("   ") == []
    with pytest.raises(TypeError):
        split_sentences(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Negation scope
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("No pneumothorax.", {"Pneumothorax": NEGATIVE}),
        ("Without focal consolidation.", {"Consolidation": NEGATIVE}),
        ("Negative for pleural effusion.", {"Pleural Effusion": NEGATIVE}),
        ("No evidence of pneumonia.", {"Pneumonia": NEGATIVE}),
        ("Lungs are free of infiltrate.", {"Lung Opacity": NEGATIVE}),
        ("Lungs are clear of consolidation.", {"Consolidation": NEGATIVE}),
        ("Interval resolution of the effusion.", {"Pleural Effusion": NEGATIVE}),
        # post-negation
        ("A pneumothorax is not seen.", {"Pneumothorax": NEGATIVE}),
        ("The effusion has resolved.", {"Pleural Effusion": NEGATIVE}),
        ("The chest tube has been removed.", {"Support Devices": NEGATIVE}),
        # one cue over a whole list
        (
            "No focal consolidation, suspicious pulmonary opacity, large pleural effusion, or pneumothorax.",
            {
                "Consolidation": NEGATIVE,
                "Lung Opacity": NEGATIVE,
                "Pleural Effusion": NEGATIVE,
                "Pneumothorax": NEGATIVE,
            },
        ),
    ],
)
def test_negation(sentence: str, expected: dict[str, str]) -> None:
    assert _only(label_sentence(sentence)) == expected


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        # scope cut by "but" / "however" / ";" / "with"
        ("No pneumothorax but there is a small effusion.", {"Pneumothorax": NEGATIVE, "Pleural Effusion": POSITIVE}),
        ("No pneumothorax; small effusion.", {"Pneumothorax": NEGATIVE, "Pleural Effusion": POSITIVE}),
        ("No pneumothorax, however left basilar atelectasis.", {"Pneumothorax": NEGATIVE, "Atelectasis": POSITIVE}),
        ("No acute disease with stable cardiomegaly.", {"No Finding": POSITIVE, "Cardiomegaly": POSITIVE}),
        # scope limited by distance
        (
            "No pneumothorax is identified on these two views of the chest and left basilar atelectasis is seen.",
            {"Pneumothorax": NEGATIVE, "Atelectasis": POSITIVE},
        ),
        # pseudo-negation
        ("No change in the mild cardiomegaly.", {"Cardiomegaly": POSITIVE}),
        ("No interval change in the left effusion.", {"Pleural Effusion": POSITIVE}),
    ],
)
def test_negation_scope_termination(sentence: str, expected: dict[str, str]) -> None:
    assert _only(label_sentence(sentence)) == expected


# ---------------------------------------------------------------------------
# Uncertainty
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("Possible right lower lobe pneumonia.", {"Pneumonia": UNCERTAIN}),
        ("This may represent atelectasis.", {"Atelectasis": UNCERTAIN}),
        ("Questionable small effusion.", {"Pleural Effusion": UNCERTAIN}),
        ("Findings suggest mild pulmonary edema.", {"Edema": UNCERTAIN}),
        ("Borderline cardiomegaly.", {"Cardiomegaly": UNCERTAIN}),
        ("Opacity most XXXX atelectasis.", {"Lung Opacity": POSITIVE, "Atelectasis": UNCERTAIN}),
        ("A small pneumothorax cannot be excluded.", {"Pneumothorax": UNCERTAIN}),
        ("Cannot exclude pneumonia.", {"Pneumonia": UNCERTAIN}),
        # differential
        ("Left basilar atelectasis or pneumonia.", {"Atelectasis": UNCERTAIN, "Pneumonia": UNCERTAIN}),
        ("Infiltrate versus atelectasis.", {"Lung Opacity": UNCERTAIN, "Atelectasis": UNCERTAIN}),
        ("Basilar scarring and/or atelectasis.", {"Lung Opacity": UNCERTAIN, "Atelectasis": UNCERTAIN}),
        # the opacity is seen; only its cause is uncertain
        ("Right basilar opacity may represent pneumonia.", {"Lung Opacity": POSITIVE, "Pneumonia": UNCERTAIN}),
        # a negated list stays negative; "no X to suggest Y" negates Y
        ("No effusion or pneumothorax.", {"Pleural Effusion": NEGATIVE, "Pneumothorax": NEGATIVE}),
        ("No focal opacity to suggest pneumonia.", {"Lung Opacity": NEGATIVE, "Pneumonia": NEGATIVE}),
        # an assertive uncertainty cue ends a preceding negation's scope
        ("No pneumothorax, possible small left effusion.", {"Pneumothorax": NEGATIVE, "Pleural Effusion": UNCERTAIN}),
    ],
)
def test_uncertainty(sentence: str, expected: dict[str, str]) -> None:
    assert _only(label_sentence(sentence)) == expected


# ---------------------------------------------------------------------------
# Structures with descriptors, Open-i phrasing, lexicon choices
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("The cardiac silhouette is enlarged.", {"Cardiomegaly": POSITIVE}),
        ("Heart size is normal.", {"Cardiomegaly": NEGATIVE}),
        ("The heart is not enlarged.", {"Cardiomegaly": NEGATIVE}),
        ("Heart size upper limits of normal.", {"Cardiomegaly": UNCERTAIN}),
        (
            "Normal heart size and mediastinal contours.",
            {"Cardiomegaly": NEGATIVE, "Enlarged Cardiomediastinum": NEGATIVE},
        ),
        ("Stable cardiomediastinal silhouette.", {}),
        ("No mediastinal widening.", {"Enlarged Cardiomediastinum": NEGATIVE}),
        (
            "The heart size is normal and the mediastinum is widened.",
            {"Cardiomegaly": NEGATIVE, "Enlarged Cardiomediastinum": POSITIVE},
        ),
        ("No pleural effusion, the heart is enlarged.", {"Pleural Effusion": NEGATIVE, "Cardiomegaly": POSITIVE}),
        ("Increased pulmonary vascularity.", {"Edema": POSITIVE}),
        ("Normal pulmonary vascularity.", {}),
        ("No acute cardiopulmonary abnormality.", {"No Finding": POSITIVE}),
        ("No acute bony abnormality.", {}),
        ("The XXXX are intact.", {}),
        ("Calcified granuloma in the right upper lobe.", {}),
        ("Calcified right upper lobe nodule.", {}),
        ("Right upper lobe nodule.", {"Lung Lesion": POSITIVE}),
        ("Small pericardial effusion.", {}),
        ("Biapical pleural thickening.", {"Pleural Other": POSITIVE}),
        ("Surgical clips in the right upper quadrant.", {}),
        ("Pacemaker leads in good position.", {"Support Devices": POSITIVE}),
        ("Old healed right rib fractures.", {"Fracture": POSITIVE}),
    ],
)
def test_structures_and_lexicon(sentence: str, expected: dict[str, str]) -> None:
    assert _only(label_sentence(sentence)) == expected


def test_mentions_carry_offsets_and_cue() -> None:
    sentence = "There is no pneumothorax."
    (m,) = find_mentions(sentence)
    assert (m.observation, m.status, m.cue) == ("Pneumothorax", NEGATIVE, "no")
    assert sentence[m.start : m.end] == m.text == "pneumothorax"


# ---------------------------------------------------------------------------
# Report-level aggregation and No Finding
# ---------------------------------------------------------------------------


def test_aggregate_statuses_order() -> None:
    assert aggregate_statuses([]) == ABSENT
    assert aggregate_statuses([NEGATIVE, UNCERTAIN]) == UNCERTAIN
    assert aggregate_statuses([UNCERTAIN, POSITIVE, NEGATIVE]) == POSITIVE
    with pytest.raises(ValueError, match="unknown status"):
        aggregate_statuses(["maybe"])


def test_label_report_no_finding_rule() -> None:
    normal = label_report("Heart size normal. No pneumothorax or effusion. Pacemaker in place.")
    assert normal["No Finding"] == POSITIVE  # Support Devices do not count
    assert normal["Support Devices"] == POSITIVE
    assert normal["Cardiomegaly"] == NEGATIVE
    abnormal = label_report("No acute cardiopulmonary abnormality. Possible small effusion.")
    assert abnormal["No Finding"] == ABSENT
    assert abnormal["Pleural Effusion"] == UNCERTAIN
    mixed = label_report("No effusion. Small left effusion.")
    assert mixed["Pleural Effusion"] == POSITIVE
    assert set(mixed) == set(OBSERVATIONS)


def test_label_reports_errors_name_index() -> None:
    assert len(label_reports(["No effusion.", ""])) == 2
    with pytest.raises(TypeError, match="text #1"):
        label_reports(["ok", 3])  # type: ignore[list-item]


def test_label_agreement_counts() -> None:
    gold = [{"Cardiomegaly": POSITIVE}, {}]
    pred = [{"Cardiomegaly": POSITIVE}, {"Edema": NEGATIVE}]
    res = label_agreement(gold, pred)
    assert res["exact_match"] == 0.5
    assert res["cell_accuracy"] == pytest.approx(27 / 28)
    assert res["per_status"][POSITIVE]["precision"] == 1.0
    assert res["per_status"][NEGATIVE]["support"] == 0
    with pytest.raises(ValueError, match="unknown observation"):
        label_agreement([{"Heart": POSITIVE}], [{}])
    with pytest.raises(ValueError, match="1 items but pred has 2"):
        label_agreement([{}], [{}, {}])


# ---------------------------------------------------------------------------
# Validation against hand labels of Open-i train sentences
# ---------------------------------------------------------------------------


def test_gold_set_is_well_formed() -> None:
    assert len(GOLD) >= 120
    keys = [(g.idx, g.field, g.sentence_no) for g in GOLD]
    assert len(set(keys)) == len(keys)
    seen_obs = {obs for g in GOLD for obs in g.labels}
    assert seen_obs == set(OBSERVATIONS), f"gold lacks {set(OBSERVATIONS) - seen_obs}"
    seen_status = {st for g in GOLD for st in g.labels.values()}
    assert seen_status == {POSITIVE, NEGATIVE, UNCERTAIN}
    assert sum(len(g.labels) >= 2 for g in GOLD) >= 30  # mixed sentences
    for g in GOLD:
        assert g.field in ("inputs", "target")


@pytest.fixture(scope="module")
def gold_sentences() -> dict[tuple[int, str, int], str]:
    return load_gold_sentences(GOLD)


def _agreement(gold: tuple[GoldSentence, ...], sentences: dict[tuple[int, str, int], str]) -> dict:
    preds = [label_sentence(sentences[(g.idx, g.field, g.sentence_no)]) for g in gold]
    return label_agreement([g.labels for g in gold], preds)


def test_labeler_matches_hand_labels(gold_sentences: dict[tuple[int, str, int], str]) -> None:
    # Measured: all 278 -> exact 0.982, cell 0.9987; held-out 90 -> exact 0.944, cell 0.9960.
    allres = _agreement(GOLD, gold_sentences)
    assert allres["exact_match"] >= 0.95
    assert allres["cell_accuracy"] >= 0.99
    for st in (POSITIVE, NEGATIVE):
        assert allres["per_status"][st]["precision"] >= 0.93
        assert allres["per_status"][st]["recall"] >= 0.93
    assert allres["per_status"][UNCERTAIN]["precision"] >= 0.90
    assert allres["per_status"][UNCERTAIN]["recall"] >= 0.90
    held = _agreement(GOLD_HELDOUT, gold_sentences)
    assert held["exact_match"] >= 0.90
    assert held["cell_accuracy"] >= 0.99
    dev = _agreement(GOLD_DEV, gold_sentences)
    assert dev["exact_match"] >= 0.95
