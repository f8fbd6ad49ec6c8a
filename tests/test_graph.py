"""Tests for the rule-based entity-graph extractor, graph F1 and the findings comparison."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from radimpress_lib.clinical.graph import (
    EntityGraph,
    compare_to_findings,
    entity_key,
    extract_graph,
    extract_sentence,
    graph_facts,
    graph_scores,
    linearize_graph,
    set_f1,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gold_text import gold_sentences as load_gold_sentences
from graph_gold import GOLD, GOLD_DEV, GOLD_HELDOUT, GraphGold

REPO_ROOT = Path(__file__).resolve().parents[1]
_TYPES = {"o": "observation", "a": "anatomy", "m": "modifier"}


def gold_facts(g: GraphGold) -> tuple[set, set]:
    """Entity keys (anatomy, observations) and relation keys of a gold annotation."""
    keys: dict[str, tuple] = {}
    for spec in g.entities:
        parts = spec.split("|") + ["", "", ""]
        type_ = _TYPES[parts[0]]
        status = parts[2] or None if type_ == "observation" else None
        keys[parts[1]] = entity_key(type_, parts[1], status, parts[3] or None)
    rels = set()
    for spec in g.relations:
        src, rel, dst = spec.split(">")
        rels.add((keys[src], rel, keys[dst]))
    return {k for k in keys.values() if k[0] != "modifier"}, rels


def _pred_facts(sentence: str) -> tuple[set, set]:
    ents, rels = extract_sentence(sentence)
    return graph_facts((ents, rels))


def score_gold(gold, sentences) -> dict[str, float]:
    """Micro-pooled entity and relation precision/recall/F1 over gold sentences."""
    c = {"e": [0, 0, 0], "r": [0, 0, 0]}
    for g in gold:
        ge, gr = gold_facts(g)
        pe, pr = _pred_facts(sentences[(g.idx, g.field, g.sentence_no)])
        for name, p, r in (("e", pe, ge), ("r", pr, gr)):
            _, tp, fp, fn = set_f1(p, r)
            c[name][0] += tp
            c[name][1] += fp
            c[name][2] += fn
    out = {}
    for name, label in (("e", "entity"), ("r", "relation")):
        tp, fp, fn = c[name]
        out[f"{label}_precision"] = tp / (tp + fp) if tp + fp else 1.0
        out[f"{label}_recall"] = tp / (tp + fn) if tp + fn else 1.0
        out[f"{label}_f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        out[f"{label}_support"] = tp + fn
    return out


# ---------------------------------------------------------------------------
# Synthetic unit tests (always run)
# ---------------------------------------------------------------------------


def _facts(sentence: str) -> tuple[set, set]:
    return _pred_facts(sentence)


O, A = "observation", "anatomy"


def test_negation_and_phrase_relations() -> None:
    ents, rels = _facts("There is no pneumothorax or large pleural effusion.")
    assert (O, "pneumothorax", "absent", None) in ents
    assert (O, "effusion", "absent", None) in ents
    assert ((O, "effusion", "absent", None), "located_at", (A, "pleura", None, None)) in rels
    assert (("modifier", "large", None, None), "modify", (O, "effusion", "absent", None)) in rels


def test_laterality_severity_and_preposition() -> None:
    ents, rels = _facts("Small left pleural effusion.")
    assert (O, "effusion", "present", "left") in ents
    assert (("modifier", "small", None, None), "modify", (O, "effusion", "present", "left")) in rels
    assert (A, "pleura", None, "left") in ents
    ents, rels = _facts("Opacity in the right lower lobe.")
    assert ((O, "opacity", "present", "right"), "located_at", (A, "lower lobe", None, "right")) in rels


def test_subject_predicate_and_renaming() -> None:
    ents, rels = _facts("The heart and mediastinum are normal.")
    assert ((O, "normal", "present", None), "located_at", (A, "heart", None, None)) in rels
    assert ((O, "normal", "present", None), "located_at", (A, "mediastinum", None, None)) in rels
    ents, rels = _facts("The heart is not enlarged.")
    assert (O, "cardiomegaly", "absent", None) in ents
    ents, _ = _facts("Heart size is upper limits of normal.")
    assert (O, "cardiomegaly", "uncertain", None) in ents
    # a predicate is only governed by cues after its subject
    ents, _ = _facts("No effusion, the heart is enlarged.")
    assert (O, "cardiomegaly", "present", None) in ents and (O, "effusion", "absent", None) in ents


def test_suggestive_of_and_uncertainty() -> None:
    ents, rels = _facts("Right basilar opacity, likely atelectasis or pneumonia.")
    assert (O, "opacity", "present", "right") in ents
    assert (O, "atelectasis", "uncertain", None) in ents
    assert ((O, "opacity", "present", "right"), "suggestive_of", (O, "pneumonia", "uncertain", None)) in rels
    ents, _ = _facts("No focal opacity to suggest pneumonia.")
    assert (O, "pneumonia", "absent", None) in ents


def test_modifier_as_observation_and_dropped_modifiers() -> None:
    ents, rels = _facts("Calcified right hilar nodes.")
    assert (O, "calcification", "present", "right") in ents
    ents, rels = _facts("Right larger than left.")
    assert not rels and all(k[0] != "modifier" for k in ents)


def test_extract_graph_report_level_and_roundtrip() -> None:
    g = extract_graph("Mild cardiomegaly. No pleural effusion.\nLungs are clear.")
    assert len(g.sentences) == 3
    assert {e.sentence for e in g.entities} == {0, 1, 2}
    assert len({e.id for e in g.entities}) == len(g.entities)
    again = EntityGraph.from_dict(json.loads(json.dumps(g.to_dict())))
    assert graph_facts(again) == graph_facts(g)
    with pytest.raises(TypeError):
        extract_graph(None)  # type: ignore[arg-type]


def test_graph_scores() -> None:
    ref = extract_graph("Small left pleural effusion.")
    assert graph_scores(ref, ref) == {"entity_f1": 1.0, "relation_f1": 1.0, "graph_f1": 1.0}
    flipped = graph_scores(extract_graph("No left pleural effusion."), ref)
    assert flipped["entity_f1"] < 1.0 and flipped["graph_f1"] < flipped["entity_f1"] + 1e-9
    swapped = graph_scores(extract_graph("Small right pleural effusion."), ref)
    assert swapped["entity_f1"] == 0.0
    resized = graph_scores(extract_graph("Large left pleural effusion."), ref)
    assert resized["entity_f1"] == 1.0 and resized["relation_f1"] < 1.0
    empty = EntityGraph()
    assert graph_scores(empty, empty)["graph_f1"] == 1.0
    assert graph_scores(empty, ref)["graph_f1"] == 0.0
    assert set_f1({1, 2}, {2, 3})[:1] == (0.5,)


def test_compare_to_findings() -> None:
    findings = extract_graph("The heart is normal in size. Small left pleural effusion. No pneumothorax.")
    r = compare_to_findings(extract_graph("Small left pleural effusion."), findings)
    assert r == {"hallucinated": [], "negation_flips": [], "omitted": []}
    r = compare_to_findings(extract_graph("Left pleural effusion and pneumothorax."), findings)
    assert r["negation_flips"] == ["pneumothorax"] and r["hallucinated"] == []
    r = compare_to_findings(extract_graph("Cardiomegaly. Right lower lobe pneumonia."), findings)
    assert r["negation_flips"] == ["cardiomegaly"]  # "heart normal in size" implies no cardiomegaly
    assert r["hallucinated"] == ["pneumonia"]
    assert r["omitted"] == ["pleural effusion"]
    r = compare_to_findings(extract_graph("No pleural effusion."), findings)
    assert r["negation_flips"] == ["pleural effusion"]


def test_linearize_graph() -> None:
    g = extract_graph("Small left pleural effusion. The lungs are clear. Opacity, likely atelectasis.")
    text = linearize_graph(g)
    assert "effusion [present; left; small] at pleura (left)" in text
    assert "clear" not in text
    assert "opacity [present] -> suggests atelectasis" in text
    assert "clear [present] at lung" in linearize_graph(g, include_normal=True)
    assert linearize_graph(EntityGraph()) == "no findings extracted"


def test_gold_set_is_well_formed() -> None:
    assert len(GOLD) >= 60
    assert len({(g.idx, g.field, g.sentence_no) for g in GOLD}) == len(GOLD)
    for g in GOLD:
        assert g.field in ("inputs", "target")
        _, rels = gold_facts(g)  # raises on unknown names
        assert len(rels) == len(g.relations)


# ---------------------------------------------------------------------------
# Hand-annotated Open-i train sentences (skipped without the data)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gold_sentences() -> dict[tuple[int, str, int], str]:
    return load_gold_sentences(GOLD)


def test_extractor_matches_hand_annotations(gold_sentences: dict[tuple[int, str, int], str]) -> None:
    allres = score_gold(GOLD, gold_sentences)
    held = score_gold(GOLD_HELDOUT, gold_sentences)
    dev = score_gold(GOLD_DEV, gold_sentences)
    print(json.dumps({"all": allres, "held_out": held, "dev": dev}, indent=1))
    assert allres["entity_f1"] >= 0.90
    assert allres["relation_f1"] >= 0.80
    assert held["entity_f1"] >= 0.85
    assert held["relation_f1"] >= 0.70
