"""Style features, pseudo-radiologist groups, style classifier and style slots (radimpress_lib.clinical.style)."""

from __future__ import annotations

import pytest
from sklearn.metrics import adjusted_rand_score, homogeneity_score
from style_synth import TEMPLATES, records

from radimpress_lib.clinical import style
from radimpress_lib.core import config


def test_features_are_bounded_and_describe_the_template():
    a = style.style_features("No acute cardiopulmonary abnormality.")
    b = style.style_features("1. Small effusion, likely. 2. No active disease..")
    assert set(a) == set(style.FEATURE_NAMES) and all(0.0 <= v <= 1.0 for v in [*a.values(), *b.values()])
    assert a["nf_noun=abnormality"] == 1 and a["nf_domain=cardiopulmonary"] == 1 and a["numbered"] == 0
    assert b["nf_adj=active"] == 1 and b["nf_noun=disease"] == 1 and b["numbered"] == 1
    assert b["hedges"] > 0 and b["double_period"] == 1 and a["double_period"] == 0
    assert b["sentences"] > a["sentences"]
    abnormal = style.style_features("Right lower lobe pneumonia.")
    assert abnormal["normal_statement"] == 0 and sum(v for k, v in abnormal.items() if k.startswith("nf_")) == 0
    with pytest.raises(TypeError):
        style.style_features(None)


def test_normal_statement():
    assert style.normal_statement("Cardiomegaly. No acute cardiopulmonary disease.") == "no acute cardiopulmonary disease"
    assert style.normal_statement("Right lower lobe pneumonia.") is None


def test_mask_content_hides_findings_and_places_but_keeps_the_template():
    masked = style.mask_content("1. Small right pleural effusion, 2 cm. 2. No acute cardiopulmonary abnormality.")
    assert "effusion" not in masked and "right" not in masked.lower() and "2 cm" not in masked
    assert "<obs>" in masked and "<loc>" in masked and "<size>" in masked
    assert masked.startswith("1.") and "No acute cardiopulmonary abnormality" in masked
    # two readers' impressions of different content but the same template mask to the same text
    assert style.mask_content("Right lower lobe pneumonia.") == style.mask_content("Left upper lobe atelectasis.")


@pytest.mark.parametrize("method", ["readers", "impressions"])
def test_groups_recover_the_reader_templates_and_are_seeded(method):
    train = records(90)
    truth = [r["style"] for r in train]
    free = style.fit_style_groups(train, k_min=2, k_max=5, seed=0, unseen=None, method=method)
    best = max(free.k_scores, key=lambda d: (d["silhouette"], -d["k"]))
    assert best["k"] == free.k and [d["k"] for d in free.k_scores] == [2, 3, 4, 5] and free.k >= 3
    # K by silhouette may split a reader's normal and abnormal impressions, but never mixes readers
    assert homogeneity_score(truth, free.assign(train)) == pytest.approx(1.0)
    model = style.fit_style_groups(train, k_min=3, k_max=3, seed=0, unseen=None, method=method)
    assigned = model.assign(train)
    assert adjusted_rand_score(truth, assigned) == 1.0
    assert model.k == 3 and model.method == {"readers": "readers", "impressions": "clusters"}[method]
    sizes = [model.profiles[g]["n"] for g in model.groups]
    assert sizes == sorted(sizes, reverse=True) and model.groups == ["R1", "R2", "R3"]
    again = style.fit_style_groups(train, k_min=2, k_max=5, seed=0, unseen=None, method=method)
    assert again.assign(train) == free.assign(train)
    # new impressions in a known template go to that template's group
    fresh = records(6, seed=5, split="validate")
    assert adjusted_rand_score([r["style"] for r in fresh], model.assign(fresh)) == 1.0


def test_reader_groups_place_bare_abnormal_impressions_by_findings_phrasing():
    # abnormal impressions carry no template: clustering impressions makes one "abnormal" group
    # of all readers (content, not a reader); the reader method places them by the findings
    train, fresh = records(120, readers=True), records(30, seed=7, split="validate", readers=True)
    truth = [r["style"] for r in train]
    readers = style.fit_style_groups(train, k_min=3, k_max=3, seed=0, unseen=None)
    assert readers.method == "readers"
    assert adjusted_rand_score(truth, readers.assign(train)) == 1.0
    assert adjusted_rand_score([r["style"] for r in fresh], readers.assign(fresh)) == 1.0
    # each reader group holds both normal and abnormal reports
    assert all(0.3 < readers.profiles[g]["normal_share"] < 0.7 for g in readers.groups)
    assert readers.assignment_counts(fresh) == {"impression_template": 15, "findings_phrasing": 15,
                                                "impression_features_no_findings": 0}
    agreement = readers.reader_agreement(fresh)
    assert agreement["n"] == 15 and agreement["agreement"] == 1.0 and agreement["majority"] == pytest.approx(5 / 15)
    # without findings, a bare impression falls back to its own features (the nearest template cluster)
    bare = [dict(fresh[1], findings="")]
    assert readers.assign(bare)[0] in readers.groups
    assert readers.assignment_counts(bare)["impression_features_no_findings"] == 1

    clusters = style.fit_style_groups(train, k_min=3, k_max=3, seed=0, unseen=None, method="impressions")
    abnormal = [g for g, r in zip(clusters.assign(train), train) if style.normal_statement(r["impression"]) is None]
    assert len(set(abnormal)) == 1  # every reader's abnormal report in one content-defined group
    assert adjusted_rand_score(truth, clusters.assign(train)) < 0.5
    with pytest.raises(ValueError, match="readers method"):
        clusters.reader_agreement(fresh)
    with pytest.raises(ValueError, match="style.group_method"):
        style.fit_style_groups(train, method="findings")


def test_unseen_group_and_bad_settings():
    train = records(90)
    model = style.fit_style_groups(train, k_min=3, k_max=3, seed=0, unseen="auto")
    assert model.unseen in model.groups and model.unseen not in model.seen_groups and len(model.seen_groups) == 2
    assert style.fit_style_groups(train, k_min=3, k_max=3, seed=0, unseen="R2").unseen == "R2"
    with pytest.raises(ValueError, match="R9"):
        style.fit_style_groups(train, k_min=3, k_max=3, unseen="R9")
    with pytest.raises(ValueError, match="style.k_min"):
        style.fit_style_groups(train, k_min=5, k_max=3)
    with pytest.raises(ValueError, match="distinct"):
        style.fit_style_groups(records(12, styles="A")[:1] * 5, k_min=2, k_max=3)


def test_radiologist_ids_are_used_when_present():
    train = records(30)
    for r in train:
        r["radiologist_id"] = {"A": "dr_a", "B": "dr_b", "C": "dr_c"}[r["style"]]
    model = style.fit_style_groups(train, unseen=None)
    assert model.method == "radiologist_id" and set(model.groups) == {"dr_a", "dr_b", "dr_c"}
    assert model.assign(train) == [r["radiologist_id"] for r in train]
    with pytest.raises(ValueError, match="radiologist_id"):
        model.assign([{"report_id": "x", "impression": "No acute disease.", "radiologist_id": None}])
    train[0]["radiologist_id"] = None
    with pytest.raises(ValueError, match="1/30 train records lack"):
        style.fit_style_groups(train)


def test_classifier_reads_style_not_content():
    # every reader reports a different finding in train; at test time the findings are swapped
    train = []
    for i, (s, finding) in enumerate([("A", "Right lower lobe pneumonia"), ("B", "Small left pleural effusion"),
                                      ("C", "Cardiomegaly")] * 20):
        train.append({"impression": TEMPLATES[s][1].format(f=finding) if i % 2 else TEMPLATES[s][0], "style": s})
    clf = style.fit_style_classifier([r["impression"] for r in train], [r["style"] for r in train], seed=0)
    swapped = [(TEMPLATES["A"][1].format(f="Cardiomegaly"), "A"), (TEMPLATES["B"][1].format(f="Right lower lobe pneumonia"), "B"),
               (TEMPLATES["C"][1].format(f="Small left pleural effusion"), "C")]
    assert clf.predict([t for t, _ in swapped]) == ["A", "B", "C"]
    assert clf.accuracy([t for t, _ in swapped], ["A", "B", "C"]) == 1.0
    assert clf.accuracy([t for t, _ in swapped], ["C", "A", "B"]) == 0.0
    with pytest.raises(ValueError, match="two groups"):
        style.fit_style_classifier(["No acute disease."] * 3, ["A"] * 3)


def test_style_slots():
    train = records(90)
    model = style.fit_style_groups(train, k_min=3, k_max=3, seed=0, unseen=None)
    group_b = model.assign([r for r in train if r["style"] == "B"][:1])[0]
    prefix = style.style_prefix(model, group_b)
    assert prefix.startswith(f"Radiologist {group_b}.") and "No active disease" in prefix and "numbered list" in prefix
    with pytest.raises(KeyError):
        style.style_prefix(model, "nobody")
    shots = style.fewshot_style(model, group_b, train, k=2, seed=1)
    lines = [line[2:] for line in shots.splitlines() if line.startswith("- ")]
    assert len(lines) == 2 and all("No active disease" in line for line in lines)
    assert shots == style.fewshot_style(model, group_b, train, k=2, seed=1)
    with pytest.raises(ValueError, match="test split"):
        style.fewshot_style(model, group_b, train + records(3, split="test"), k=2)


def test_restyle_changes_template_not_content():
    train = records(90)
    model = style.fit_style_groups(train, k_min=3, k_max=3, seed=0, unseen=None)
    group_b = model.assign([r for r in train if r["style"] == "B"][:1])[0]
    out = style.restyle("Small left pleural effusion. No acute cardiopulmonary abnormality.", model, group_b)
    assert out == "1. Small left pleural effusion. 2. No active disease."


def test_fit_for_run_uses_the_style_params():
    params = config.load_params("params/ci-tiny.yaml")
    model, clf = style.fit_for_run(records(60), params)
    assert params.style.k_min <= model.k <= params.style.k_max and clf is not None
    with pytest.raises(ValueError, match="train reports only"):
        style.fit_for_run(records(6, split="test"), params)


def test_cluster_table_is_json_safe_when_a_group_has_no_normal_phrase():
    import json

    train = records(30)
    for r in train:
        r["radiologist_id"] = {"A": "dr_a", "B": "dr_b", "C": "dr_c"}[r["style"]]
        if r["style"] == "A":  # a reader who never writes a normal-study statement
            r["impression"] = "Right lower lobe opacity."
    table = style.cluster_table(style.fit_style_groups(train, unseen=None))
    assert table.loc["dr_a", "normal_phrase"] is None
    json.dumps(table.reset_index().to_dict(orient="records"), allow_nan=False)


def test_group_checks_report_assignment_and_accuracy_by_kind():
    train, fresh = records(120, readers=True), records(30, seed=7, split="validate", readers=True)
    model = style.fit_style_groups(train, k_min=3, k_max=3, seed=0, unseen=None)
    clf = style.fit_style_classifier([r["impression"] for r in train], model.assign(train), seed=0)
    checks = style.group_checks(model, clf, {"train": train, "validate": fresh})
    row = checks.loc["validate"]
    assert row["n"] == 30 and row["impression_template"] == 15 and row["findings_phrasing"] == 15
    assert row["acc_template"] == 1.0 and row["findings_vs_template_agreement"] == 1.0
    # a bare "Cardiomegaly." cannot tell its reader: chance level, and the overall accuracy is the mix
    assert row["acc_no_template"] < 0.7
    assert row["acc"] == pytest.approx((row["acc_template"] + row["acc_no_template"]) / 2)
    clusters = style.fit_style_groups(train, k_min=3, k_max=3, seed=0, unseen=None, method="impressions")
    plain = style.group_checks(clusters, clf, {"validate": fresh})
    assert "findings_vs_template_agreement" not in plain.columns and plain.loc["validate", "impression_template"] == 30
