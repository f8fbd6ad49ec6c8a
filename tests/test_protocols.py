"""The two evaluation protocols: the published 250-report subset, train as given, the published metric,
leaky / clean splits, the missed-abnormality rate and where published anchors may appear."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from radimpress_lib.core import artifacts
from radimpress_lib.core.config import load_params
from radimpress_lib.data import load_data, protocols
from radimpress_lib.data.benchmark import load_benchmark
from radimpress_lib.evaluation import metrics as M
from radimpress_lib.evaluation import published, scoring

DATA = Path(os.environ.get("RADIMPRESS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
BENCH = DATA / "opi-benchmark"


def _legacy_numpy_is_stable() -> bool:
    """numpy's legacy RandomState stream (behind np.random.seed) as it has always been."""
    return np.random.RandomState(0).permutation(10).tolist() == [2, 8, 4, 9, 1, 6, 7, 3, 0, 5]


# ---------------------------------------------------------------------------
# The 250-report subset (real data)
# ---------------------------------------------------------------------------


@pytest.mark.skipif(not (BENCH / protocols.SUBSET_FILE_NAME).is_file(), reason="benchmark data not available")
def test_published_subset_is_reproduced_by_its_rule():
    if not _legacy_numpy_is_stable():
        pytest.skip("numpy's legacy RandomState stream differs from the one the subset was drawn with")
    test_idx = [json.loads(line)["idx"] for line in (BENCH / "test.jsonl").read_text().splitlines() if line.strip()]
    state = np.random.get_state()
    try:  # the rule exactly as written in the file (and in clin-summ), on numpy's global generator
        np.random.seed(0)
        chosen = np.random.choice(sorted(test_idx), 250, replace=False)
    finally:
        np.random.set_state(state)
    from_file = protocols.read_published_subset(BENCH)
    assert len(test_idx) == 343 and len(from_file) == 250
    assert sorted(chosen.tolist()) == from_file
    assert protocols.published_subset_rule(test_idx) == from_file


@pytest.mark.skipif(not (BENCH / protocols.SUBSET_FILE_NAME).is_file(), reason="benchmark data not available")
def test_real_subset_maps_through_the_join_and_counts_leaky_reports():
    cfg = load_params("smollm2-135m", {"data": {"dir": str(DATA)}})
    dsd, _ = load_data(cfg)
    seen, source = protocols.seen_findings(cfg)
    assert "as given" in source
    assert sum(protocols.leaky_flags(list(dsd["test"]), seen)) == 93
    sub = protocols.published_test_subset(list(dsd["test"]), protocols.benchmark_dir(cfg), seen)
    assert sub.n == 250 and sub.complete and sub.rule_reproduced and sum(sub.leaky) == 65
    assert sorted(r["benchmark_idx"] for r in sub.records) == protocols.read_published_subset(BENCH)


# ---------------------------------------------------------------------------
# A small synthetic benchmark
# ---------------------------------------------------------------------------

TRAIN_ROWS = [
    (0, "Heart size normal. Lungs clear.", "No acute cardiopulmonary abnormality."),
    (1, "Large right pleural effusion.", "Right pleural effusion."),
    (2, "Enlarged cardiac silhouette.", "Cardiomegaly."),
    (3, "Right lower lobe opacity.", "Right lower lobe pneumonia."),
    (4, "Heart size normal. No effusion.", "Normal chest."),
]
VALIDATE_ROWS = [(5, "Left basilar atelectasis.", "Left basilar atelectasis.")]
TEST_ROWS = [
    (10, "heart size normal.  lungs clear.", "No acute cardiopulmonary abnormality."),  # twin of train 0: leaky
    (11, "Small left pleural effusion.", "Small left effusion."),
    (12, "Stable cardiomegaly.", "Cardiomegaly."),
    (13, "No acute findings.", "Normal."),
    (14, "No acute findings.", "Normal."),  # the same findings twice within test (the real test has 8 copies)
    (15, "Right lower lobe opacity.", "Right lower lobe pneumonia."),  # twin of train 3: leaky
]


@pytest.fixture()
def bench_data(tmp_path):
    """A data folder with opi-benchmark/{train,validate,test}.jsonl and a subset file made by the rule (size 4)."""
    bench = tmp_path / "data" / "opi-benchmark"
    bench.mkdir(parents=True)
    for split, rows in (("train", TRAIN_ROWS), ("validate", VALIDATE_ROWS), ("test", TEST_ROWS)):
        (bench / f"{split}.jsonl").write_text(
            "".join(json.dumps({"idx": i, "inputs": f, "target": t}) + "\n" for i, f, t in rows))
    subset = protocols.published_subset_rule([r[0] for r in TEST_ROWS], 4)
    (bench / protocols.SUBSET_FILE_NAME).write_text(json.dumps({"rule": "test", "idx": subset}))
    return tmp_path / "data", subset


def _cfg(data_dir, out_dir=None, **data):
    overrides = {"data": {"dir": str(data_dir), **data}}
    if out_dir is not None:
        overrides["run"] = {"output_dir": str(out_dir)}
    return load_params("ci-tiny", overrides)


def test_benchmark_idx_survives_the_join_in_source(bench_data):
    data_dir, _ = bench_data
    dd, _ = load_benchmark(data_dir / "opi-benchmark")
    test = list(dd["test"])
    assert protocols.benchmark_idx(test, data_dir / "opi-benchmark") == [r[0] for r in TEST_ROWS]
    assert protocols.benchmark_idx([{"source": "openi/indiana_reports.csv:3", "findings": "x"}],
                                   data_dir / "opi-benchmark") == [None]
    with pytest.raises(ValueError, match="does not hold the findings"):
        protocols.benchmark_idx([dict(test[0], findings="something else")], data_dir / "opi-benchmark")


def test_published_training_data_keeps_twins_and_never_test(bench_data):
    data_dir, _ = bench_data
    cfg = _cfg(data_dir)
    dsd, info = load_data(cfg)
    guarded = {r["findings"] for r in dsd["train"]}
    assert "Heart size normal. Lungs clear." not in guarded  # the leakage guard removed the twin
    given, info = protocols.published_training_data(cfg)
    assert set(given) == {"train", "validate"} and not info["leakage_guard"]
    assert [r["findings"] for r in given["train"]] == [r[1] for r in TRAIN_ROWS]
    assert [r["findings"] for r in given["validate"]] == [r[1] for r in VALIDATE_ROWS]
    assert all(r["split"] != "test" for s in given.values() for r in s)
    with pytest.raises(protocols.ProtocolUnavailable, match="data.source"):
        protocols.published_training_data(_cfg(data_dir, source="openi_csv"))


def test_published_test_subset_and_leaky_flags(bench_data):
    data_dir, subset = bench_data
    cfg = _cfg(data_dir)
    dsd, _ = load_data(cfg)
    seen, source = protocols.seen_findings(cfg)
    assert "as given" in source
    test = list(dsd["test"])
    assert protocols.leaky_flags(test, seen) == [True, False, False, False, False, True]
    sub = protocols.published_test_subset(test, data_dir / "opi-benchmark", seen)
    assert [r["benchmark_idx"] for r in sub.records] == subset and sub.rule_reproduced and sub.complete
    assert [test[p]["report_id"] for p in sub.positions] == [r["report_id"] for r in sub.records]
    assert sub.leaky == [i in (10, 15) for i in subset]
    # a limited test split: only the intersection is scored, and the summary says so
    part = protocols.published_test_subset(test[:3], data_dir / "opi-benchmark", seen)
    assert part.n == len(set(subset) & {10, 11, 12}) and not part.complete and "data limited" in part.summary()
    # a subset file that its rule does not reproduce is flagged
    (data_dir / "opi-benchmark" / protocols.SUBSET_FILE_NAME).write_text(json.dumps({"idx": [10, 11, 12, 13]}))
    if subset != [10, 11, 12, 13]:
        assert not protocols.published_test_subset(test, data_dir / "opi-benchmark", seen).rule_reproduced


def test_without_benchmark_the_protocol_is_unavailable(tmp_path):
    cfg = _cfg(tmp_path)  # an existing folder without opi-benchmark/
    with pytest.raises(protocols.ProtocolUnavailable, match="has no opi-benchmark"):
        protocols.benchmark_dir(cfg)
    keys, source = protocols.seen_findings(cfg, [{"findings": "A  b"}])
    assert keys == {"a b"} and "leakage guard" in source


def test_sft_dir_per_protocol():
    cfg = load_params("ci-tiny")
    assert artifacts.sft_dir(cfg) == cfg.output_dir / "sft"
    assert artifacts.sft_dir(cfg, "published") == cfg.output_dir / "sft_published"
    with pytest.raises(ValueError):
        artifacts.sft_dir(cfg, "other")


# ---------------------------------------------------------------------------
# The published metric
# ---------------------------------------------------------------------------


def test_published_metric_on_hand_made_pairs(caplog):
    preds = ["no acute disease", "", "heart size is normal", "small pleural effusions", "the heart size is normal"]
    refs = ["no acute disease", "no acute disease", "the heart size is normal and lungs are clear",
            "small pleural effusion", "the heart size is normal today"]
    rouge = M.published_rouge_l(preds, refs)
    stats, _ = M.bleu_statistics(preds, refs)
    bleu = M.published_bleu_from_stats(stats)
    # 3-token exact match: ROUGE-L 100, but BLEU 0 (no 4-gram; nmt BLEU without smoothing)
    assert rouge[0] == pytest.approx(100.0) and bleu[0] == 0.0
    # empty output: 0 and 0
    assert rouge[1] == 0.0 and bleu[1] == 0.0
    # LCS "heart size is normal" = 4 of 4 predicted, 9 reference tokens: F = 2 * 1 * 4/9 / (1 + 4/9) = 8/13
    assert rouge[2] == pytest.approx(100 * 8 / 13)
    # no stemming: "effusions" != "effusion", LCS 2 of 3 and 3 -> 2/3 (the stemmed ROUGE-L says 100)
    assert rouge[3] == pytest.approx(100 * 2 / 3)
    assert M.rouge_scores(preds[3:4], refs[3:4])["rougeL"][0] == pytest.approx(100.0)
    # every n-gram precision 1, brevity penalty exp(1 - 6/5)
    assert bleu[4] == pytest.approx(100 * np.exp(1 - 6 / 5))
    # the same as sacrebleu's sentence_score with the published settings (it warns; silenced here)
    from sacrebleu.metrics import BLEU

    sentence = BLEU(tokenize="13a", smooth_method="none", effective_order=False)
    with caplog.at_level(logging.ERROR, logger="sacrebleu"):
        logging.getLogger("sacrebleu").disabled = True
        try:
            expected = [sentence.sentence_score(p, [r]).score if p else 0.0 for p, r in zip(preds, refs)]
        finally:
            logging.getLogger("sacrebleu").disabled = False
    assert bleu.tolist() == pytest.approx(expected)
    # per-sample means with bootstrap CIs; off unless asked for
    per = M.compute_per_example(preds, refs, embed_model=False, published=True)
    res = M.summarize(per, n_boot=50, seed=0, only=M.PUBLISHED_METRICS)
    assert res["rougeL_published"] == pytest.approx(rouge.mean())
    assert res["bleu_published"] == pytest.approx(bleu.mean())
    assert res["bleu_published_ci"][0] <= res["bleu_published"] <= res["bleu_published_ci"][1]
    assert "bleu" not in res and "rougeL" not in res
    assert "rougeL_published" not in M.summarize(M.compute_per_example(preds, refs, embed_model=False), n_boot=5)


# ---------------------------------------------------------------------------
# Leaky / clean, missed abnormalities, the clinical view
# ---------------------------------------------------------------------------

REFS = ["Large right pleural effusion.", "Cardiomegaly.", "No acute cardiopulmonary abnormality.",
        "Right lower lobe pneumonia."]
PREDS = ["No acute cardiopulmonary abnormality.", "Cardiomegaly.", "No acute cardiopulmonary abnormality.",
         "Left pleural effusion."]
LEAKY = [True, False, False, True]


def test_missed_abnormality_rate_and_leaky_clean_split():
    per = M.compute_per_example(PREDS, REFS, embed_model=False)
    res = M.summarize(per, n_boot=100, seed=0)
    # abnormal references: #0 effusion, #1 cardiomegaly, #3 pneumonia; only #0's draft states no abnormality
    # (#3 names another one: a label error, not a missed abnormality)
    assert res["n_reference_abnormal"] == 3
    assert res["missed_abnormality_rate"] == pytest.approx(100 / 3)
    lo, hi = res["missed_abnormality_rate_ci"]
    assert 0.0 <= lo <= res["missed_abnormality_rate"] <= hi <= 100.0
    split = M.summarize_by_group(per, {"leaky": np.array(LEAKY), "clean": ~np.array(LEAKY)}, n_boot=100, seed=0)
    assert split["n_leaky"] == 2 and split["n_clean"] == 2
    assert split["missed_abnormality_rate_leaky"] == pytest.approx(50.0)
    assert split["missed_abnormality_rate_clean"] == pytest.approx(0.0)
    assert split["rougeL_leaky"] == pytest.approx(per.rougeL[[0, 3]].mean())
    assert split["rougeL_clean"] == pytest.approx(100.0)
    assert split["rougeL_clean_ci"] == [pytest.approx(100.0), pytest.approx(100.0)]
    empty = M.summarize_by_group(per, {"none": np.zeros(4, bool)}, n_boot=10)
    assert empty["n_none"] == 0 and empty["rougeL_none"] is None and empty["rougeL_none_ci"] == [None, None]
    # subsets of two systems stay comparable
    other = M.compute_per_example(REFS, REFS, embed_model=False)
    cmp = M.compare_systems(other.subset([0, 3]), per.subset([0, 3]), n_boot=50, metrics=["rougeL"])
    assert cmp["rougeL"]["delta"] > 0
    with pytest.raises(ValueError, match="different references"):
        M.compare_systems(other.subset([0, 1]), per.subset([0, 3]), n_boot=10)


def test_per_finding_recall_f1_with_support_and_cis():
    per = M.compute_per_example(PREDS, REFS, embed_model=False)
    rows = {r["observation"]: r for r in M.summarize(per, n_boot=100, seed=0)["per_finding_f1"]}
    assert len(rows) == 14
    eff = rows["Pleural Effusion"]
    assert (eff["tp"], eff["fp"], eff["fn"], eff["n_ref"]) == (0, 1, 1, 1)
    assert eff["recall"] == 0.0 and eff["recall_ci"] == [0.0, 0.0]
    card = rows["Cardiomegaly"]
    assert card["recall"] == 100.0 and card["f1"] == 100.0 and card["f1_ci"][1] == pytest.approx(100.0)
    assert rows["Fracture"]["recall"] is None and rows["Fracture"]["recall_ci"] == [None, None]


def test_evaluate_systems_splits_and_tables():
    test = [{"report_id": str(i), "findings": f"findings {i}", "impression": r} for i, r in enumerate(REFS)]
    scores, _ = scoring.evaluate_systems({"a": PREDS, "oracle": REFS}, test, n_boot=50, leaky=LEAKY, embed=False)
    assert scores["a"]["n_leaky"] == 2 and "bleu_clean_ci" in scores["a"] and "label_f1_micro_leaky" in scores["a"]
    table = scoring.leaky_clean_table(scores)
    assert ("bleu (sacreBLEU corpus)", "leaky (n=2)") in table.columns
    assert table.loc["oracle", ("rougeL (stemmed)", "clean (n=2)")].startswith("100.0")
    clinical = scoring.clinical_table(scores)
    assert clinical.loc["a", "reports with an abnormal reference"] == 3
    recall = scoring.per_finding_clinical_table(scores)
    assert set(recall.columns) == {"Cardiomegaly (n=1)", "Pneumonia (n=1)", "Pleural Effusion (n=1)",
                                   "No Finding (n=1)"}  # observations with reference positives, with their support
    assert recall.loc["oracle", "Cardiomegaly (n=1)"].startswith("100.0")
    assert recall.loc["a", "Pneumonia (n=1)"] == "0.0 [0.0, 0.0]"
    assert scoring.per_finding_clinical_table(scores, "f1").loc["oracle", "Pleural Effusion (n=1)"].startswith("100.0")
    with pytest.raises(ValueError, match="leaky flags"):
        scoring.evaluate_systems({"a": PREDS}, test, n_boot=5, leaky=LEAKY[:2], embed=False)


def test_protocol_b_table_shows_no_published_anchors():
    test = [{"report_id": str(i), "findings": f"findings {i}", "impression": r} for i, r in enumerate(REFS)]
    scores, _ = scoring.evaluate_systems({"a": PREDS}, test, n_boot=20, embed=False)
    table = scoring.metrics_table(scores, metrics=("rougeL", "bleu", "label_f1_micro"))
    assert list(table.index) == ["a"]
    assert not table.astype(str).apply(lambda col: col.str.contains("published")).any().any()
    assert "bleu (sacreBLEU corpus)" in table.columns
    with pytest.raises(ValueError, match="cannot sit beside"):
        scoring.metrics_table(scores, metrics=("rougeL", "bleu"), anchors=True)
    # under the published protocol the anchors sit beside the published metric only
    pscores, _ = published.evaluate({"a": PREDS}, test, LEAKY, {"a": published.TRAINED_AS_GIVEN}, n_boot=20)
    ptable = published.table(pscores)
    gpt4 = "GPT-4, 256 nearest in-context examples (Van Veen et al. 2024)"
    assert ptable.loc[gpt4, "rougeL (as published: unstemmed, per sample)"] == "68.2 (published)"
    assert ptable.loc[gpt4, "bleu (as published: per sample, no smoothing)"] == "46.0 (published)"
    assert ptable.loc[gpt4, "missed abnormality %"] == ""
    assert ptable.loc["a", "trained on"] == published.TRAINED_AS_GIVEN
    assert set(pscores["a"]) >= {"rougeL_published_leaky", "bleu_published_clean_ci", "n_leaky", "trained_on"}
    assert "rougeL" not in pscores["a"] and "bleu" not in pscores["a"]


def test_metrics_files_carry_their_protocol(tmp_path):
    scores = {"a": {"rougeL": 1.0}}
    path = tmp_path / "metrics.json"
    data = scoring.update_metrics_json(path, scores, n=4)
    assert data["protocol"] == "deduplicated" and data["n"] == 4
    with pytest.raises(ValueError, match="'deduplicated'-protocol"):
        scoring.update_metrics_json(path, scores, n=4, protocol="published")
    pub = published.update_metrics_json(tmp_path / published.METRICS_FILE, scores, n=3, subset={"size": 250})
    assert pub["protocol"] == "published" and pub["subset"]["size"] == 250


def test_published_protocol_step_without_a_model(bench_data, tmp_path):
    """Notebook 05's protocol-A step on the synthetic benchmark: baselines on train as given, a deduplicated
    system on the subset, no sft_published adapter (a visible note), metrics_published.json written."""
    from radimpress_lib.notebook import evaluate

    data_dir, subset = bench_data
    out = tmp_path / "out"
    cfg = _cfg(data_dir, out)
    dsd, _ = load_data(cfg)
    run = evaluate.prepare(cfg, dsd, out)
    assert run.leaky == [True, False, False, False, False, True]
    run.systems = {"majority": ["x"] * len(run.test), "retrieval": ["x"] * len(run.test),
                   "sft": [r["impression"] for r in run.test]}
    result = evaluate.published_protocol(run, out)
    assert result.available and set(result.scores) == {"majority", "retrieval", "sft_dedup"}
    assert subset == [11, 12, 13, 15]
    # the twin of test report 15 is in train as given: retrieval (fitted on train as given) finds it
    assert result.systems["retrieval"][3] == "Right lower lobe pneumonia."
    assert result.scores["sft_dedup"]["rougeL_published"] == pytest.approx(100.0)
    assert result.scores["sft_dedup"]["n_leaky"] == 1 and result.scores["sft_dedup"]["n_clean"] == 3
    assert "sft_published" in result.note() and "not scored" in result.note()
    written = json.loads((out / published.METRICS_FILE).read_text())
    assert written["protocol"] == "published" and written["n"] == len(subset) == written["subset"]["n_scored"]
    assert written["sft_dedup"]["trained_on"] == published.TRAINED_DEDUPLICATED
    assert written["majority"]["trained_on"] == published.TRAINED_AS_GIVEN
    assert (out / "predictions_published" / "retrieval.jsonl").is_file()
    assert not result.table().empty and not result.leaky_clean_table().empty
    assert set(result.comparison["vs"]) == {"majority", "retrieval"}
    headline = {"sft": {"rougeL": 50.0, "label_f1_micro": 50.0}, "retrieval": {"rougeL": 40.0}}
    text = evaluate.take_away(headline, result.comparison.iloc[0:0], n=len(run.test), published_run=result)
    assert "Published protocol (4 of the paper's 4 reports" in text and "GPT-4 68.2 (published)" in text


def test_published_protocol_step_without_benchmark_writes_nothing(tmp_path):
    """Without the benchmark (e.g. the synthetic sample) protocol A is skipped with a path-free reason."""
    from radimpress_lib.notebook import evaluate

    cfg = _cfg(tmp_path, tmp_path / "out")
    test = [{"report_id": "1", "findings": "Lungs clear.", "impression": "Normal.", "source": "sample.csv:1"}]
    run = evaluate.TestRun(cfg, test, [], tmp_path / "out" / "predictions", leaky=[False], systems={"sft": ["x"]})
    result = evaluate.published_protocol(run, tmp_path / "out")
    assert not result.available and result.table().empty and result.comparison_table().empty
    assert result.note().startswith("**Published protocol not run**") and str(tmp_path) not in result.note()
    assert not (tmp_path / "out" / published.METRICS_FILE).exists()
    assert "Published protocol" not in evaluate.take_away({"sft": {"rougeL": 1.0}}, evaluate.pd.DataFrame(), n=1,
                                                          published_run=result)
