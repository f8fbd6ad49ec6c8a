"""Disease-area slice selection (keywords + MeSH/Problems), config checks, disease adapter on tiny-llama."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from radimpress_lib.core import artifacts, config
from radimpress_lib.notebook import disease


def _rec(rid, findings, impression="No acute disease.", mesh=(), problems=(), split="train"):
    return {"report_id": rid, "modality": "XR", "body_part": "CHEST", "indication": "", "comparison": "",
            "findings": findings, "impression": impression, "radiologist_id": None, "split": split,
            "mesh": list(mesh), "problems": list(problems), "source": f"synthetic:{rid}"}


RECORDS = [
    _rec("1", "Calcified granuloma in the right upper lobe.", mesh=["Calcified Granuloma/lung/upper lobe/right"]),
    _rec("2", "Heart size normal. Lungs clear.", mesh=["normal"]),
    _rec("3", "Massive cardiomegaly.", "Cardiomegaly."),            # 'massive' is not 'mass'
    _rec("4", "Lungs clear.", "Left upper lobe nodular opacity, recommend CT."),
    _rec("5", "Lungs clear.", problems=["Nodule"]),                  # MeSH / Problems only
    _rec("6", "Multiple pulmonary metastases.", "Metastatic disease."),
    _rec("7", "Right hilar MASSES.", mesh=["Mass/hilum"]),
]


def test_select_slice_keywords_and_mesh():
    cfg = config.DiseaseStageConfig()
    chosen, stats = disease.select_slice(RECORDS, cfg)
    assert [r["report_id"] for r in chosen] == ["1", "4", "5", "6", "7"]
    assert (stats.n, stats.n_slice, stats.by_both, stats.by_keyword_only, stats.by_mesh_only) == (7, 5, 2, 2, 1)
    assert stats.keywords["masses"] == 1 and stats.keywords["nodular"] == 1 and stats.mesh_terms["Nodule"] == 1
    d = stats.as_dict()
    assert d["share"] == pytest.approx(5 / 7) and d["top_mesh"] == {"Calcified Granuloma": 1, "Mass": 1, "Nodule": 1}
    # ties are ordered by name, whatever order the terms were counted in (a set's order follows the hash seed)
    late = disease.SliceStats(keywords=Counter({"nodule": 1, "mass": 2, "lesion": 1, "adenopathy": 1}))
    assert list(late.as_dict(top=3)["top_keywords"]) == ["mass", "adenopathy", "lesion"]


def test_fields_and_mesh_only_configs():
    findings_only = config.DiseaseStageConfig(fields=["findings"], mesh_terms=[])
    assert [r["report_id"] for r in disease.select_slice(RECORDS, findings_only)[0]] == ["1", "6", "7"]
    mesh_only = config.DiseaseStageConfig(keywords=[], mesh_terms=["nodule", "mass"])
    assert [r["report_id"] for r in disease.select_slice(RECORDS, mesh_only)[0]] == ["5", "7"]
    slices, table = disease.slice_table({"train": RECORDS, "test": RECORDS[:2]}, config.DiseaseStageConfig())
    assert table.loc["train", "n_slice"] == 5 and table.loc["test", "n_slice"] == 1 and len(slices["test"]) == 1


def test_config_validation():
    with pytest.raises(ValueError, match="not a regular expression"):
        config.DiseaseStageConfig(keywords=["nodul(e"])
    with pytest.raises(ValueError, match="keywords or mesh_terms"):
        config.DiseaseStageConfig(keywords=[], mesh_terms=[])
    with pytest.raises(ValueError):
        config.DiseaseStageConfig(area="Onco Logy")


def test_disease_adapter_on_tiny_model(tmp_path):
    params = config.load_params("params/ci-tiny.yaml")
    params = params.override({"run": {"output_dir": str(tmp_path)}, "disease": {"init": "base", "max_steps": 2},
                              "sft": {"logging_steps": 1, "num_threads": 1}})
    with pytest.raises(ValueError, match="train slice .* is empty"):
        disease.train_disease_adapter(params, [], None)
    with pytest.raises(FileNotFoundError, match="no disease adapter"):
        disease.load_disease_model(params)
    train, _ = disease.select_slice(RECORDS, params.disease)
    lines = []
    result = disease.train_disease_adapter(params, train, train[:2], log=lines.append)
    assert result.global_step == 2 and result.final_eval_loss is not None
    assert (artifacts.disease_dir(params) / "adapter" / "adapter_config.json").is_file()
    run = json.loads((artifacts.disease_dir(params) / "sft_run.json").read_text())
    assert run["n_train"] == len(train) and run["settings"]["max_steps"] == 2
    _model, _tokenizer, info = disease.load_disease_model(params)
    assert info["disease_adapter"] == "disease_oncology/adapter"
    # init 'general' needs the general SFT adapter of notebook 02 in the run folder.
    general = params.override({"disease": {"init": "general"}})
    with pytest.raises(FileNotFoundError, match="run notebook 02 first"):
        disease.train_disease_adapter(general, train, None)


# --------------------------------------------------------------------------- the disease system


def _onc_train(n: int = 60) -> list[dict]:
    """Nodules reach the impression, calcified granulomas do not."""
    out = []
    for i in range(n):
        if i % 2:
            out.append(_rec(f"n{i}", f"Heart normal. A {8 + i % 5} mm right upper lobe nodule.",
                            "Right upper lobe nodule, CT recommended."))
        else:
            out.append(_rec(f"g{i}", "Heart normal. Calcified granuloma in the left base.", "No acute disease."))
    return out


def test_mention_model_and_slice_sentences():
    cfg = config.DiseaseStageConfig()
    matcher = disease.DiseaseMatcher(cfg)
    assert matcher.names("Small nodule.") and not matcher.names("Normal chest.")
    model = disease.SliceMentionModel(matcher, c=10.0).fit(_onc_train())
    p = model.predict(["Heart normal. A 9 mm right upper lobe nodule.", "Heart normal. Calcified granuloma in the left base."])
    assert p[0] > 0.5 > p[1] and model.n_positive == 30
    findings = "Heart normal. A 9 mm right upper lobe nodule. No effusion."
    assert disease.slice_sentences(matcher, findings, "Normal chest.") == ["A 9 mm right upper lobe nodule."]
    assert disease.slice_sentences(matcher, findings, "Right nodule.") == []  # the draft names one already
    with pytest.raises(ValueError, match="name a finding"):
        disease.SliceMentionModel(matcher).fit([_rec("g", "Calcified granuloma.")] * 3)


def test_slice_selector_adds_what_the_impression_should_name_only():
    cfg = config.DiseaseStageConfig()
    matcher = disease.DiseaseMatcher(cfg)
    selector = disease.SliceSelector(matcher, disease.SliceMentionModel(matcher).fit(_onc_train()))
    records = [{"findings": "Heart normal. A 9 mm right upper lobe nodule."},
               {"findings": "Heart normal. Calcified granuloma in the left base."}]
    out = selector(records, ["No acute disease.", "No acute disease."])
    assert out == ["A 9 mm right upper lobe nodule. No acute disease.", "No acute disease."]
    assert disease.SliceSelector(matcher, None)(records, ["x", "y"]) == ["x", "y"]


def test_slice_recall_and_paired_difference():
    matcher = disease.DiseaseMatcher(config.DiseaseStageConfig())
    refs = ["Right nodule.", "Left lung mass.", "No acute disease.", "No acute disease."]
    systems = {"general": ["Normal.", "Left mass.", "Normal.", "Normal."],
               "disease": ["Nodule.", "Left mass.", "Nodule.", "Normal."]}
    table = disease.slice_recall(matcher, refs, systems, against="general", n_boot=200, seed=0)
    assert table.loc["general", "recall"] == 50.0 and table.loc["disease", "recall"] == 100.0
    assert table.loc["disease", "over_call_rate"] == 50.0 and table.loc["general", "over_call_rate"] == 0.0
    assert table.loc["disease", "recall_vs_general"] == 50.0 and table.loc["general", "n_reference_names"] == 2
    lo, hi = table.loc["disease", "recall_vs_general_ci"]
    assert 0.0 <= lo <= 50.0 <= hi <= 100.0


def _slice_comparison(disease_preds, general_preds, refs):
    from radimpress_lib.evaluation import metrics as M
    from radimpress_lib.evaluation import scoring

    per = {name: M.compute_per_example(preds, refs, embed_model=False)
           for name, preds in (("disease_system", disease_preds), ("general", general_preds))}
    return scoring.comparisons(per, "disease_system", n_boot=200, seed=0)


@pytest.mark.parametrize(("ci", "p", "words"), [
    ((5.0, 30.0), 0.01, "higher recall (the paired CI excludes zero)"),
    ((0.0, 33.3), 0.55, "point estimate only: the gain is not significant (p = 0.55"),
])
def test_system_verdict_says_whether_the_recall_gain_is_significant(ci, p, words):
    import pandas as pd

    recall = pd.DataFrame({"recall": [30.0, 20.0], "recall_vs_general": [10.0, 0.0],
                           "recall_vs_general_ci": [ci, (0.0, 0.0)], "recall_vs_general_p": [p, None],
                           "n_reference_names": [10, 10], "over_call_rate": [5.4, 0.0]},
                          index=["disease_system", "general"])
    refs = [f"no acute disease number {i}." for i in range(8)]
    # the disease system copies the references (ROUGE-L 100), the general one says something else
    better = _slice_comparison(refs, ["heart size enlarged." for _ in refs], refs)
    verdict = disease.SystemComparison("general", better, recall).verdict()
    assert "ROUGE-L +" in verdict and "Not worse on ROUGE-L" in verdict
    assert words in verdict
    # and the other way round: the sign follows disease_system - general, never flipped
    worse = _slice_comparison(["heart size enlarged." for _ in refs], refs, refs)
    verdict = disease.SystemComparison("general", worse, recall).verdict()
    assert "ROUGE-L -" in verdict and "Worse on ROUGE-L (the paired CI excludes zero)" in verdict
