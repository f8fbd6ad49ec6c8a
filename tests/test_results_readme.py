"""The README's results tables equal what the committed reference run's outputs say (notebook.results)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from radimpress_lib.evaluation.scoring import PUBLISHED_ANCHORS
from radimpress_lib.notebook import results

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "outputs" / "smollm2-135m"


def _system(rouge: float, **extra) -> dict:
    return {"rougeL": rouge, "rougeL_ci": [rouge - 2, rouge + 2], "bleu": 20.0, "label_f1_micro": 70.0,
            "graph_f1": 60.0, "missed_abnormality_rate": 50.0, "omitted_finding_rate": 25.0,
            "hallucinated_finding_rate": 2.0, "rougeL_clean": rouge - 5, "rougeL_leaky": rouge + 10} | extra


def _write_run(folder: Path, with_a: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    b = {"n": 343, "protocol": "deduplicated", "retrieval": _system(60.0), "sft": _system(61.4), "other": _system(1.0)}
    (folder / "metrics.json").write_text(json.dumps(b), encoding="utf-8")
    (folder / "comparisons.csv").write_text(
        "system,vs,metric,delta,ci_low,ci_high,p_value\n"
        "sft,retrieval,rougeL,1.4,-1,3,0.0004\n"
        "sft,retrieval,bleu,9,8,10,0.5\n"
        "sft,majority,rougeL,15,14,16,0.001\n", encoding="utf-8")
    if with_a:
        a = {"n": 250, "protocol": "published",
             "retrieval": {"rougeL_published": 61.9, "rougeL_published_ci": [57.0, 67.0], "bleu_published": 49.2,
                           "trained_on": "train as given"},
             "sft_published": {"rougeL_published": 62.0, "bleu_published": 47.0, "trained_on": "train as given"}}
        (folder / "metrics_published.json").write_text(json.dumps(a), encoding="utf-8")


def test_tables_from_outputs(tmp_path):
    _write_run(tmp_path)
    md = results.results_markdown(tmp_path)
    b, a = md.split("**Protocol A")
    # protocol B: our systems in their fixed order, the paired delta where computed, no anchors
    assert "| `retrieval` | 60.0 [58.0, 62.0] | – |" in b
    assert "| `sft` | 61.4 [59.4, 63.4] | +1.4 (p < 0.001) |" in b
    assert "`other`" not in b
    assert not any(anchor["system"] in b for anchor in PUBLISHED_ANCHORS)
    # protocol A: the published metric, a missing CI shows the bare value, the anchors follow our rows
    assert "| `retrieval` | train as given | 61.9 [57.0, 67.0] |" in a
    assert "| `sft_published` | train as given | 62.0 | – | 47.0 |" in a
    assert all(anchor["system"] in a for anchor in PUBLISHED_ANCHORS)
    assert a.index("`sft_published`") < a.index(PUBLISHED_ANCHORS[0]["system"])


def test_without_protocol_a_there_are_no_anchors(tmp_path):
    _write_run(tmp_path, with_a=False)
    md = results.results_markdown(tmp_path)
    assert "Protocol A" not in md
    assert not any(anchor["system"] in md for anchor in PUBLISHED_ANCHORS)


def test_seed_spread_table(tmp_path):
    _write_run(tmp_path)
    spread = {"mean": 1.25, "sd": 0.5, "min": 0.7, "max": 1.9, "values": [0.7, 1.2, 1.9]}
    doc = {"seeds": [42, 43, 44], "n_validate": 276, "n_test": 343,
           "summary": {"validate": {"sft": {"rougeL": spread}},
                       "test": {"retrieval_rougeL": 60.1,
                                "sft": {"rougeL": spread, "rougeL_vs_retrieval": spread | {
                                    "seeds_p_below_0.05_and_positive": 2}}}}}
    path = tmp_path / "seed_variance.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    md = results.results_markdown(tmp_path, path)
    seeds = md.split("**Seed spread")[1]
    assert "seeds 42, 43, 44" in seeds and "retrieval scores 60.1 on test" in seeds
    assert "| `sft` | 1.2 ± 0.5 [0.7, 1.9] | 1.2 ± 0.5 [0.7, 1.9] | +1.2 ± 0.5 [+0.7, +1.9] | 2 of 3 | – | – |" in seeds
    assert "| `sft_mbr`" not in seeds
    assert "MBR over k = None" not in seeds  # no recipe recorded: no setting named
    doc["recipe"] = {"mbr_k": 5, "mbr_factual": True}  # written before the penalty and coverage options existed
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert "MBR over k = 5 neighbours, flag penalty 0, without the coverage candidate" in results.results_markdown(
        tmp_path, path)
    # no result file: no seed table
    assert "Seed spread" not in results.results_markdown(tmp_path, tmp_path / "missing.json")


def test_readme_section_needs_markers():
    with pytest.raises(ValueError, match="results:begin"):
        results.readme_section("# no tables here\n")
    assert results.readme_section(f"x\n{results.BEGIN}\n| a |\n{results.END}\ny") == "| a |\n"


@pytest.mark.skipif(not (REFERENCE / "metrics.json").is_file(), reason="no committed reference run")
def test_readme_tables_match_the_reference_run():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert results.readme_section(readme) == results.results_markdown(REFERENCE, results.SEEDS, results.LEVERS), (
        "README results tables differ from outputs/smollm2-135m: paste "
        "`python -m radimpress_lib.notebook.results outputs/smollm2-135m` between the results markers")


def test_lever_table_marks_the_choice_and_keeps_the_grid_short(tmp_path):
    _write_run(tmp_path)

    def row(r):
        return {"rougeL": r, "label_f1_micro": 70.0, "omitted_finding_rate": 20.0, "missed_abnormality_rate": 50.0,
                "hallucinated_finding_rate": 1.0, "rougeL_vs_retrieval": {"delta": r - 57.7, "p_value": 0.5}}
    names = ["sft", "retrieval", "k3_pen0", "k3_pen1", "k3_pen0.5_cov", "k5_pen0", "k5_pen1", "k5_pen0.5_cov",
             "k8_pen1", "k8_pen0.5_cov"]
    doc = {"seed": 42, "validate": {"n": 276, "rows": {n: row(57.7 + i / 10) for i, n in enumerate(names)}},
           "choice": {"setting": "k5_pen0.5_cov", "rule": "omitted <= 20%"}}
    path = tmp_path / "mbr_levers.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    md = results.results_markdown(tmp_path, None, path).split("**Decode levers on validate**")[1]
    assert "| `k5_pen0.5_cov` (chosen) | 58.4 | +0.7 (p = 0.500) |" in md and "| `retrieval` | 57.8 | – |" in md
    shown = {n for n in names if f"| `{n}`" in md}
    assert shown == set(names) - {"k3_pen1", "k8_pen1"}  # other k: only without penalty and at the chosen setting
    assert "Decode levers" not in results.results_markdown(tmp_path, None, tmp_path / "missing.json")


def test_reference_outputs_hold_no_machine_paths():
    """What the reference run committed names the checkout relatively and the data folder as $RADIMPRESS_DATA,
    whatever machine ran it (a path under a usual mount point is one that core.paths.portable_text missed)."""
    absolute = re.compile(r"(?:^|[\"'\s(=:])/(?:home|root|work|tmp|Users|mnt)/")
    files = [p for pattern in ("*.ipynb", "*.html", "*.json", "*.csv", "predictions/*.jsonl", "triage/*.json")
             for p in REFERENCE.glob(pattern)]
    assert len(files) > 20
    leaks = {p.relative_to(REFERENCE).as_posix(): m.group(0) for p in files
             if (m := absolute.search(p.read_text(encoding="utf-8")))}
    assert leaks == {}
