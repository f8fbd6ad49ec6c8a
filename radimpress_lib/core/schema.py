"""The canonical report record shared by every loader, notebook and metric."""

from __future__ import annotations

import datasets

#: Field name -> meaning. Every loader returns a ``datasets.Dataset`` with
#: exactly these columns, in this order.
REPORT_FIELDS: dict[str, str] = {
    "report_id": "stable id of the report within its source (str)",
    "modality": "imaging modality, e.g. 'XR' ('' when unknown)",
    "body_part": "body part, e.g. 'CHEST' ('' when unknown)",
    "indication": "clinical indication ('' when absent)",
    "comparison": "comparison studies ('' when absent)",
    "findings": "the findings section (never empty after validation)",
    "impression": "the impression section (never empty after validation)",
    "radiologist_id": "reader id when the source has one, else None",
    "split": "'train' | 'validate' | 'test' | '' (unassigned)",
    "mesh": "MeSH / label terms attached to the report (list of str)",
    "problems": "Open-i 'Problems' terms (list of str)",
    "source": "'<file>:<row>' the record was read from (traceability)",
}

SPLITS = ("train", "validate", "test")

REPORT_FEATURES = datasets.Features(
    {
        "report_id": datasets.Value("string"),
        "modality": datasets.Value("string"),
        "body_part": datasets.Value("string"),
        "indication": datasets.Value("string"),
        "comparison": datasets.Value("string"),
        "findings": datasets.Value("string"),
        "impression": datasets.Value("string"),
        "radiologist_id": datasets.Value("string"),
        "split": datasets.Value("string"),
        "mesh": datasets.Sequence(datasets.Value("string")),
        "problems": datasets.Sequence(datasets.Value("string")),
        "source": datasets.Value("string"),
    }
)


def records_to_dataset(records: list[dict]) -> datasets.Dataset:
    """Build a Dataset with the canonical features from a list of record dicts."""
    columns = {name: [r[name] for r in records] for name in REPORT_FIELDS}
    return datasets.Dataset.from_dict(columns, features=REPORT_FEATURES)
