"""Exploration tables and figures on synthetic records."""

from __future__ import annotations

import datasets
import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest

from radimpress_lib.core.schema import records_to_dataset
from radimpress_lib.notebook import explore, plots


def _rec(i, split, impression, mesh, indication="", findings="Lungs are clear."):
    return {"report_id": str(i), "modality": "XR", "body_part": "CHEST", "indication": indication,
            "comparison": "", "findings": findings, "impression": impression, "radiologist_id": None,
            "split": split, "mesh": mesh, "problems": [m.split("/")[0] for m in mesh], "source": f"syn.csv:{i}"}


@pytest.fixture()
def frame() -> pd.DataFrame:
    recs = [
        _rec(1, "train", "No acute cardiopulmonary abnormality.", ["normal"], "Preop bariatric surgery."),
        _rec(2, "train", "1. No acute cardiopulmonary abnormality", ["normal"], "Positive TB test"),
        _rec(3, "train", "Cardiomegaly.", ["Cardiomegaly/mild", "Opacity/lung/base/left"], "Shortness of breath"),
        _rec(4, "validate", "no acute cardiopulmonary abnormality..", ["normal"], "XXXX"),
        _rec(5, "test", "Left basilar opacity.", ["Opacity/lung/base/left", "Opacity/lung/apex"], "cough and fever",
             findings="There is a left basilar opacity with air bronchograms."),
        _rec(6, "test", "Stable nodule.", [], "f/u nodule"),
    ]
    dsd = datasets.DatasetDict({s: records_to_dataset([r for r in recs if r["split"] == s])
                                for s in ("train", "validate", "test")})
    return explore.to_frame(dsd)


def test_split_sizes(frame):
    table = explore.split_sizes(frame)
    assert table.loc["train", "reports"] == 3 and table.loc["test", "reports"] == 2
    assert table["share"].sum() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("text,category", [
    ("Preop bariatric surgery.", "pre-operative"),
    ("Positive TB test", "tuberculosis screen"),
    ("Shortness of breath", "dyspnoea"),
    ("cough and fever", "cough"),
    ("XXXX", explore.NO_INDICATION),
    ("", explore.NO_INDICATION),
    (None, explore.NO_INDICATION),
    ("f/u nodule", "cancer / nodule follow-up"),
    ("XXXX-year-old male, fell down stairs", "trauma / fall"),
    ("unrelated words", explore.OTHER),
])
def test_indication_category(text, category):
    assert explore.indication_category(text) == category


def test_indication_table_counts_everything(frame):
    table = explore.indication_table(frame)
    assert table["reports"].sum() == len(frame)


def test_normal_share(frame):
    table = explore.normal_share(frame)
    assert table.loc["train", "normal"] == 2 and table.loc["train", "abnormal"] == 1
    assert table.loc["test", "unlabelled"] == 1 and table.loc["test", "abnormal"] == 1
    assert table.loc["train", "normal_share"] == pytest.approx(2 / 3, abs=1e-3)
    assert explore.is_normal(["normal"]) and not explore.is_normal(["normal", "Cardiomegaly"])
    assert not explore.is_normal([])


def test_templates_merge_surface_variants(frame):
    table = explore.top_templates(frame, k=2)
    top = table.iloc[0]
    assert top["template"] == "no acute cardiopulmonary abnormality"
    assert top["reports"] == 3 and top["surface_forms"] == 3


def test_label_frequencies_count_reports_once(frame):
    table = explore.label_frequencies(frame, "mesh", k=5)
    counts = dict(zip(table["term"], table["reports"]))
    assert counts["Opacity"] == 2  # report 5 has two Opacity terms but counts once
    assert counts["normal"] == 3 and counts["Cardiomegaly"] == 1


class _WordTokenizer:
    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [t.split() for t in texts]}


def test_token_lengths_and_summary(frame, tmp_path):
    lengths = explore.token_lengths(frame, _WordTokenizer())
    assert len(lengths) == 2 * len(frame)
    summary = explore.length_summary(lengths)
    assert summary.loc[("findings", "test"), "max"] == 9
    fig = explore.plot_lengths(lengths)
    path = plots.save_figure(fig, tmp_path / "figs", "lengths")
    assert path.is_file() and path.stat().st_size > 1000
