"""Tests of the data layer: loaders, validation, join, leakage guard, data location, download.

Every fixture is written by the tests into ``tmp_path``; the one test over the real
data runs only when a data folder is found and is skipped otherwise.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from radimpress_lib import data
from radimpress_lib.core.schema import REPORT_FEATURES, REPORT_FIELDS, records_to_dataset
from radimpress_lib.data import (
    DataNotFoundError,
    DataValidationError,
    load_benchmark,
    load_from_config,
    load_openi_csv,
    load_openi_xml,
    load_user,
    loading,
    locate,
    normalize_findings,
    remove_test_leakage,
    resolve_data_dir,
)
from radimpress_lib.data.download import BENCHMARK_SHA256, DownloadError, download_openi, file_sha256
from radimpress_lib.data.validation import LoadReport

CSV_HEADER = ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"]

FINDINGS_A = "The heart is normal in size. The lungs are clear. No XXXX effusion."
FINDINGS_B = "Mild cardiomegaly. No focal consolidation."
FINDINGS_C = "Stable   calcified granuloma in the right upper lobe."


def row(uid: Any, findings: str = FINDINGS_A, impression: str = "No acute disease.", **kw: str) -> dict[str, Any]:
    """One Open-i CSV row with sensible defaults."""
    out = {
        "uid": uid,
        "MeSH": "normal",
        "Problems": "normal",
        "image": "Xray Chest PA and Lateral",
        "indication": "Cough.",
        "comparison": "None.",
        "findings": findings,
        "impression": impression,
    }
    out.update(kw)
    return out


def write_csv(path: Path, rows: list[dict[str, Any]], header: list[str] = CSV_HEADER) -> Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def openi_xml(
    uid: int,
    *,
    findings: str | None = FINDINGS_A,
    impression: str | None = "No acute disease.",
    indication: str | None = "Cough.",
    comparison: str | None = "None.",
    major: tuple[str, ...] = ("normal",),
    automatic: tuple[str, ...] = (),
) -> str:
    """An Open-i style report XML (same layout as ecgen-radiology/<n>.xml)."""
    sections = ""
    for label, text in (
        ("COMPARISON", comparison),
        ("INDICATION", indication),
        ("FINDINGS", findings),
        ("IMPRESSION", impression),
    ):
        sections += (
            f'<AbstractText Label="{label}">{text}</AbstractText>'
            if text is not None
            else (f'<AbstractText Label="{label}"/>')
        )
    mesh = "".join(f"<major>{t}</major>" for t in major) + "".join(f"<automatic>{t}</automatic>" for t in automatic)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<eCitation><meta type="rr"/>'
        f'<uId id="CXR{uid}"/><pmcId id="{uid}"/><docSource>CXR</docSource>'
        '<MedlineCitation Owner="Indiana University"><Article PubModel="Electronic">'
        f"<Abstract>{sections}</Abstract></Article></MedlineCitation>"
        f"<MeSH>{mesh}</MeSH>"
        f'<parentImage id="CXR{uid}_1_IM-0001-4001"><caption>PA</caption></parentImage></eCitation>'
    )


def write_tgz(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return path


def assert_accounted(report: LoadReport) -> None:
    assert report.rows_read == report.kept + sum(report.skipped.values())


# ---------------------------------------------------------------------------------------
# Open-i CSV
# ---------------------------------------------------------------------------------------


def test_openi_csv_records(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "indiana_reports.csv",
        [
            row(1),
            row(
                2,
                FINDINGS_B,
                "Borderline cardiomegaly.",
                MeSH="Cardiomegaly/borderline;Pulmonary Artery/enlarged",
                Problems="Cardiomegaly;Pulmonary Artery",
                indication="",
                comparison="",
            ),
        ],
    )
    ds, report = load_openi_csv(path)
    assert ds.features == REPORT_FEATURES
    assert list(ds.column_names) == list(REPORT_FIELDS)
    first, second = ds[0], ds[1]
    assert first["report_id"] == "1" and second["report_id"] == "2"
    assert first["modality"] == "XR" and first["body_part"] == "CHEST"
    assert first["mesh"] == ["normal"] and first["problems"] == ["normal"]
    assert "XXXX" in first["findings"]
    assert first["radiologist_id"] is None and first["split"] == ""
    assert first["source"] == f"{tmp_path.name}/indiana_reports.csv:1"
    assert second["mesh"] == ["Cardiomegaly/borderline", "Pulmonary Artery/enlarged"]
    assert second["problems"] == ["Cardiomegaly", "Pulmonary Artery"]
    assert second["indication"] == "" and second["comparison"] == ""
    assert (report.rows_read, report.kept, sum(report.skipped.values())) == (2, 2, 0)


def test_openi_csv_split_argument_and_optional_columns(tmp_path: Path) -> None:
    header = ["uid", "findings", "impression"]
    path = write_csv(tmp_path / "r.csv", [row(1)], header=header)
    ds, report = load_openi_csv(path, split="train")
    assert ds[0]["split"] == "train" and ds[0]["indication"] == "" and ds[0]["mesh"] == []
    assert any("'MeSH' absent" in n for n in report.notes)
    with pytest.raises(ValueError, match="split must be"):
        load_openi_csv(path, split="dev")


# Bad-input cases for CSV: (name, rows or raw bytes, expected reason, row, field, extra kwargs)
def _csv_bytes(lines: list[bytes]) -> bytes:
    return b"\n".join(lines) + b"\n"


HEADER_BYTES = b"uid,MeSH,Problems,image,indication,comparison,findings,impression"
CSV_CASES: list[tuple[str, Callable[[Path], Path], str, int, str | None, dict[str, Any]]] = [
    ("empty_findings", lambda p: write_csv(p, [row(1), row(2, findings="")]), "empty_findings", 2, "findings", {}),
    (
        "blank_impression",
        lambda p: write_csv(p, [row(1), row(2, impression="  \t ")]),
        "empty_impression",
        2,
        "impression",
        {},
    ),
    (
        "non_utf8",
        lambda p: (
            p.write_bytes(
                _csv_bytes(
                    [
                        HEADER_BYTES,
                        b"1,normal,normal,x,Cough.,None.,Heart normal.,No acute disease.",
                        b"2,normal,normal,x,Cough.,None.,Heart \xe9\xff normal.,No acute disease.",
                    ]
                )
            ),
            p,
        )[1],
        "non_utf8",
        2,
        "findings",
        {},
    ),
    (
        "duplicate_id",
        lambda p: write_csv(p, [row(7), row(8, FINDINGS_B), row(7, FINDINGS_C)]),
        "duplicate_id",
        3,
        "report_id",
        {},
    ),
    (
        "too_long",
        lambda p: write_csv(p, [row(1), row(2, findings="x" * 101)]),
        "too_long",
        2,
        "findings",
        {"max_chars": 100},
    ),
    (
        "malformed_row",
        lambda p: (
            p.write_bytes(
                _csv_bytes([HEADER_BYTES, b"1,normal,normal,x,Cough.,None.,Heart normal.,No acute disease.", b"2,oops"])
            ),
            p,
        )[1],
        "malformed_row",
        2,
        None,
        {},
    ),
]


@pytest.mark.parametrize("case", CSV_CASES, ids=[c[0] for c in CSV_CASES])
def test_openi_csv_bad_rows_lenient(tmp_path: Path, case: tuple) -> None:
    name, build, reason, bad_row, field, kwargs = case
    path = build(tmp_path / f"{name}.csv")
    ds, report = load_openi_csv(path, **kwargs)
    assert report.skipped == Counter({reason: 1})
    assert report.kept == report.rows_read - 1 == len(ds)
    assert_accounted(report)
    issue = report.issues[0]
    assert (issue.file, issue.row, issue.field, issue.reason) == (str(path), bad_row, field, reason)
    assert reason in report.summary()


@pytest.mark.parametrize("case", CSV_CASES, ids=[c[0] for c in CSV_CASES])
def test_openi_csv_bad_rows_strict(tmp_path: Path, case: tuple) -> None:
    name, build, reason, bad_row, field, kwargs = case
    path = build(tmp_path / f"{name}.csv")
    with pytest.raises(DataValidationError) as info:
        load_openi_csv(path, strict=True, **kwargs)
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.file, err.row, err.field, err.reason) == (str(path), bad_row, field, reason)
    message = str(err)
    assert str(path) in message and f"row {bad_row} (1-based data row, header excluded)" in message
    if field is not None:
        assert f"field '{field}'" in message


def test_duplicate_message_names_first_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [row(7), row(8, FINDINGS_B), row(7, FINDINGS_C)])
    _, report = load_openi_csv(path)
    assert "already used by row 1" in report.issues[0].message


def test_row_with_two_problems_counted_once(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", [row(1, findings="", impression=""), row(2)])
    _, report = load_openi_csv(path)
    assert report.skipped == Counter({"empty_findings": 1})
    assert [i.reason for i in report.issues] == ["empty_findings", "empty_impression"]
    assert_accounted(report)


@pytest.mark.parametrize("strict", [False, True])
def test_missing_required_columns_is_file_level(tmp_path: Path, strict: bool) -> None:
    path = write_csv(tmp_path / "r.csv", [row(1)], header=["uid", "MeSH", "findings"])
    with pytest.raises(DataValidationError, match=r"missing required columns \['impression'\]") as info:
        load_openi_csv(path, strict=strict)
    assert "columns found: ['uid', 'MeSH', 'findings']" in str(info.value)
    assert str(path) in str(info.value)


def test_csv_empty_file_and_blank_lines(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataValidationError, match="empty"):
        load_openi_csv(empty)
    path = tmp_path / "blank.csv"
    path.write_bytes(
        _csv_bytes(
            [HEADER_BYTES, b"1,normal,normal,x,a,b,Heart normal.,Fine.", b"", b"2,normal,normal,x,a,b,Lungs.,Ok."]
        )
    )
    ds, report = load_openi_csv(path)
    assert len(ds) == 2 and report.blank_lines == 1 and report.rows_read == 2


def test_csv_quoted_multiline_field(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", [row(1, findings="Line one.\nLine two."), row(2, findings="")])
    ds, report = load_openi_csv(path)
    assert ds[0]["findings"] == "Line one.\nLine two."
    assert report.issues[0].row == 2  # data rows, not file lines


# ---------------------------------------------------------------------------------------
# User data: JSONL, Parquet, CSV
# ---------------------------------------------------------------------------------------

USER_MAP = {"report_id": "accession", "findings": "FINDINGS", "impression": "IMPRESSION", "radiologist_id": "reader"}


def user_row(acc: Any, findings: Any = FINDINGS_A, impression: Any = "No acute disease.", **kw: Any) -> dict:
    out = {"accession": acc, "FINDINGS": findings, "IMPRESSION": impression, "reader": "dr-1"}
    out.update(kw)
    return out


def test_user_jsonl_mapping_and_defaults(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "u.jsonl",
        [user_row("A1"), user_row(17, FINDINGS_B, reader=None), user_row("A3", FINDINGS_C, reader=42)],
    )
    ds, report = load_user(path, USER_MAP, defaults={"modality": "CT"})
    assert ds["report_id"] == ["A1", "17", "A3"]
    assert ds["radiologist_id"] == ["dr-1", None, "42"]
    assert ds["modality"] == ["CT"] * 3 and ds["body_part"] == [""] * 3
    assert ds["mesh"] == [[], [], []] and ds["indication"] == ["", "", ""]
    assert ds[0]["source"] == f"{tmp_path.name}/u.jsonl:1"
    assert report.kept == 3


def test_user_without_report_id_gets_row_ids(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "notes.jsonl", [{"findings": FINDINGS_A, "impression": "Ok."}])
    ds, report = load_user(path)  # identity mapping of canonical names
    assert ds["report_id"] == ["notes-1"]
    assert any("no report_id column" in n for n in report.notes)


JSONL_CASES: list[tuple[str, bytes, str, int, str | None]] = [
    ("number_findings", json.dumps(user_row("B", findings=12)).encode(), "wrong_type", 2, "findings"),
    ("list_impression", json.dumps(user_row("B", impression=["a", "b"])).encode(), "wrong_type", 2, "impression"),
    ("dict_findings", json.dumps(user_row("B", findings={"t": 1})).encode(), "wrong_type", 2, "findings"),
    ("bool_id", json.dumps(user_row(True)).encode(), "wrong_type", 2, "report_id"),
    ("float_reader", json.dumps(user_row("B", reader=1.5)).encode(), "wrong_type", 2, "radiologist_id"),
    (
        "missing_key",
        json.dumps({"accession": "B", "FINDINGS": "x", "reader": "r"}).encode(),
        "missing_field",
        2,
        "impression",
    ),
    ("null_findings", json.dumps(user_row("B", findings=None)).encode(), "empty_findings", 2, "findings"),
    ("invalid_json", b'{"accession": "B", "FINDINGS": ', "malformed_row", 2, None),
    ("not_object", b'["B", "x", "y"]', "wrong_type", 2, None),
    (
        "non_utf8",
        b'{"accession": "B", "FINDINGS": "Heart \xff normal.", "IMPRESSION": "Ok.", "reader": "r"}',
        "non_utf8",
        2,
        "findings",
    ),
    ("duplicate_id", json.dumps(user_row("A", FINDINGS_B)).encode(), "duplicate_id", 2, "report_id"),
]


def _jsonl_with(bad: bytes) -> bytes:
    return (
        json.dumps(user_row("A")).encode()
        + b"\n"
        + bad
        + b"\n"
        + json.dumps(user_row("C", FINDINGS_C)).encode()
        + b"\n"
    )


@pytest.mark.parametrize("case", JSONL_CASES, ids=[c[0] for c in JSONL_CASES])
def test_user_jsonl_bad_rows(tmp_path: Path, case: tuple) -> None:
    name, bad, reason, bad_row, field = case
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(_jsonl_with(bad))
    ds, report = load_user(path, USER_MAP)
    assert ds["report_id"] == ["A", "C"]
    assert report.skipped == Counter({reason: 1})
    assert_accounted(report)
    issue = report.issues[0]
    assert (issue.row, issue.field, issue.reason) == (bad_row, field, reason)
    with pytest.raises(DataValidationError) as info:
        load_user(path, USER_MAP, strict=True)
    assert (info.value.row, info.value.field, info.value.reason) == (bad_row, field, reason)
    assert f"row {bad_row} (1-based line number)" in str(info.value) and str(path) in str(info.value)


def test_user_jsonl_blank_lines_are_not_rows(tmp_path: Path) -> None:
    path = tmp_path / "b.jsonl"
    path.write_bytes(_jsonl_with(b"   ") + b"\n\n")
    ds, report = load_user(path, USER_MAP)
    assert len(ds) == 2 and report.rows_read == 2 and report.blank_lines == 3
    assert report.issues == []


def test_user_column_map_errors(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "u.jsonl", [user_row("A")])
    with pytest.raises(ValueError, match="unknown field"):
        load_user(path, {**USER_MAP, "finding": "FINDINGS"})
    with pytest.raises(ValueError, match="must map 'impression'"):
        load_user(path, {"findings": "FINDINGS"})
    with pytest.raises(DataValidationError, match=r"missing required keys \['READER'\]; keys found"):
        load_user(path, {**USER_MAP, "radiologist_id": "READER"})
    (tmp_path / "u.xlsx").write_bytes(b"PK")
    with pytest.raises(DataValidationError, match="unsupported file type"):
        load_user(tmp_path / "u.xlsx", USER_MAP)
    with pytest.raises(DataValidationError, match="no such file"):
        load_user(tmp_path / "absent.csv", USER_MAP)


def test_user_split_column(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "s.jsonl",
        [user_row("A", part="TRAIN"), user_row("B", FINDINGS_B, part="val"), user_row("C", FINDINGS_C, part="holdout")],
    )
    ds, report = load_user(path, {**USER_MAP, "split": "part"})
    assert ds["split"] == ["train", "validate"]
    assert report.issues[0].reason == "invalid_split" and report.issues[0].row == 3


def test_user_csv_with_radiologist(tmp_path: Path) -> None:
    path = tmp_path / "u.csv"
    write_csv(
        path,
        [user_row("A1"), user_row("A2", FINDINGS_B, reader="")],
        header=["accession", "FINDINGS", "IMPRESSION", "reader"],
    )
    ds, _ = load_user(path, USER_MAP)
    assert ds["radiologist_id"] == ["dr-1", None]


def test_user_parquet(tmp_path: Path) -> None:
    table = pa.table(
        {
            "accession": pa.array([1, 2, 3, 4]),
            "FINDINGS": pa.array([b"Heart normal.", b"Bad \xff bytes.", b"Lungs clear.", b""], pa.binary()),
            "IMPRESSION": pa.array(["Ok.", "Ok.", "Fine.", "Ok."]),
            "reader": pa.array(["r1", None, "r2", "r3"]),
            "terms": pa.array([["normal"], [], ["Opacity/lung", " "], None]),
        }
    )
    path = tmp_path / "u.parquet"
    pq.write_table(table, path)
    ds, report = load_user(path, {**USER_MAP, "mesh": "terms"})
    assert ds["report_id"] == ["1", "3"]
    assert ds["mesh"] == [["normal"], ["Opacity/lung"]]
    assert report.skipped == Counter({"non_utf8": 1, "empty_findings": 1})
    assert [(i.row, i.field) for i in report.issues] == [(2, "findings"), (4, "findings")]
    assert report.row_convention == "1-based table row"
    with pytest.raises(DataValidationError, match=r"row 2 \(1-based table row\), field 'findings'"):
        load_user(path, USER_MAP, strict=True)


def test_user_parquet_invalid_utf8_string_and_wrong_type(tmp_path: Path) -> None:
    # A string column holding invalid UTF-8 (pyarrow does not validate on read).
    findings = pa.array([b"Heart normal.", b"bad \xc3\x28 text"], pa.binary()).view(pa.string())
    table = pa.table({"findings": findings, "impression": pa.array([5, 6])})
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    _, report = load_user(path)
    assert report.kept == 0
    assert report.skipped == Counter({"wrong_type": 1, "non_utf8": 1})
    reasons = {(i.row, i.field, i.reason) for i in report.issues}
    assert (2, "findings", "non_utf8") in reasons and (1, "impression", "wrong_type") in reasons
    with pytest.raises(DataValidationError, match="missing required columns"):
        load_user(path, {"findings": "findings", "impression": "IMPRESSION"})


# ---------------------------------------------------------------------------------------
# Open-i XML
# ---------------------------------------------------------------------------------------


def test_openi_xml_matches_csv_field_by_field(tmp_path: Path) -> None:
    xml = {
        "ecgen-radiology/1.xml": openi_xml(1).encode(),
        "ecgen-radiology/2.xml": openi_xml(
            2,
            findings=FINDINGS_B,
            impression="Borderline cardiomegaly.",
            indication=None,
            comparison=None,
            major=("Cardiomegaly/borderline", "Pulmonary Artery/enlarged"),
            automatic=("heart",),
        ).encode(),
        "ecgen-radiology/10.xml": openi_xml(10, findings=FINDINGS_C, indication="Chest &lt;pain&gt;").encode(),
    }
    tgz = write_tgz(tmp_path / "NLMCXR_reports.tgz", xml)
    csv_path = write_csv(
        tmp_path / "indiana_reports.csv",
        [
            row(1),
            row(
                2,
                FINDINGS_B,
                "Borderline cardiomegaly.",
                MeSH="Cardiomegaly/borderline;Pulmonary Artery/enlarged",
                Problems="Cardiomegaly;Pulmonary Artery",
                indication="",
                comparison="",
            ),
            row(10, FINDINGS_C, indication="Chest <pain>"),
        ],
    )
    from_xml, xml_report = load_openi_xml(tgz)
    from_csv, _ = load_openi_csv(csv_path)
    assert xml_report.rows_read == 3 and xml_report.kept == 3
    assert from_xml["report_id"] == ["1", "2", "10"]  # numeric member order, uId CXR<n> -> '<n>'
    for a, b in zip(from_xml, from_csv, strict=True):
        for name in REPORT_FIELDS:
            if name != "source":
                assert a[name] == b[name], name
    assert from_xml[1]["source"] == "NLMCXR_reports.tgz!/ecgen-radiology/2.xml:2"
    with_auto, _ = load_openi_xml(tgz, include_automatic_mesh=True)
    assert with_auto[1]["mesh"] == ["Cardiomegaly/borderline", "Pulmonary Artery/enlarged", "heart"]
    # An extracted folder gives the same records.
    folder = tmp_path / "extracted" / "ecgen-radiology"
    folder.mkdir(parents=True)
    for name, body in xml.items():
        (folder / Path(name).name).write_bytes(body)
    from_dir, _ = load_openi_xml(folder)
    assert from_dir.remove_columns("source").to_list() == from_xml.remove_columns("source").to_list()


XML_CASES: list[tuple[str, bytes, str, str | None]] = [
    ("no_findings", openi_xml(2, findings=None).encode(), "empty_findings", "findings"),
    ("invalid_xml", b"<eCitation><uId id='CXR2'/><MedlineCitation>", "malformed_row", None),
    (
        "entity_expansion",
        b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><eCitation>&b;</eCitation>',
        "malformed_row",
        None,
    ),
    ("non_utf8", openi_xml(2).encode().replace(b"lungs are clear", b"lungs \xff clear"), "non_utf8", "findings"),
]


@pytest.mark.parametrize("case", XML_CASES, ids=[c[0] for c in XML_CASES])
def test_openi_xml_bad_documents(tmp_path: Path, case: tuple) -> None:
    name, bad, reason, field = case
    tgz = write_tgz(
        tmp_path / "r.tgz",
        {
            "ecgen-radiology/1.xml": openi_xml(1).encode(),
            "ecgen-radiology/2.xml": bad,
            "ecgen-radiology/3.xml": openi_xml(3, findings=FINDINGS_C).encode(),
        },
    )
    ds, report = load_openi_xml(tgz)
    assert ds["report_id"] == ["1", "3"]
    assert report.skipped == Counter({reason: 1})
    assert_accounted(report)
    issue = report.issues[0]
    assert (issue.file, issue.row, issue.field, issue.reason) == (f"{tgz}!/ecgen-radiology/2.xml", 2, field, reason)
    with pytest.raises(DataValidationError) as info:
        load_openi_xml(tgz, strict=True)
    assert "ecgen-radiology/2.xml" in str(info.value) and info.value.reason == reason


def test_openi_xml_errors(tmp_path: Path) -> None:
    not_tar = tmp_path / "x.tgz"
    not_tar.write_bytes(b"not a tar")
    with pytest.raises(DataValidationError, match="not a readable tar"):
        load_openi_xml(not_tar)
    empty = write_tgz(tmp_path / "e.tgz", {"readme.txt": b"hi"})
    with pytest.raises(DataValidationError, match="no .xml report"):
        load_openi_xml(empty)


# ---------------------------------------------------------------------------------------
# Benchmark join
# ---------------------------------------------------------------------------------------


def make_bench(folder: Path, splits: dict[str, list[tuple[int, str, str]]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        write_jsonl(folder / f"{split}.jsonl", [{"idx": i, "inputs": f, "target": t} for i, f, t in rows])
    return folder


def test_benchmark_join(tmp_path: Path) -> None:
    reports = write_csv(
        tmp_path / "indiana_reports.csv",
        [
            row(1, FINDINGS_A, "No acute disease.", indication="TB screen"),
            row(2, FINDINGS_A, "Normal chest.", indication="Chest pain"),
            row(
                3, FINDINGS_B, "Cardiomegaly.", indication="Dyspnea", MeSH="Cardiomegaly/mild", Problems="Cardiomegaly"
            ),
            row(4, FINDINGS_C, "Granuloma.", indication="Follow-up"),
            row(5, "", "Nothing."),
        ],
    )
    bench = make_bench(
        tmp_path / "opi-benchmark",
        {
            # whitespace / case differences still join; target picks the report among shared findings
            "train": [(0, FINDINGS_A.upper(), "No acute   disease."), (1, "Unknown findings.", "Whatever.")],
            "validate": [(2, FINDINGS_B, "Cardiomegaly.")],
            "test": [(3, "  " + FINDINGS_A, "Normal chest."), (4, FINDINGS_C, "Different impression.")],
        },
    )
    dd, report = load_benchmark(bench, reports)
    assert set(dd) == {"train", "validate", "test"}
    train, validate, test = dd["train"], dd["validate"], dd["test"]
    assert train["report_id"] == ["1", "opi-1"]
    assert train[0]["indication"] == "TB screen" and train[0]["findings"] == FINDINGS_A.upper()
    assert train[1]["indication"] == "" and train[1]["mesh"] == []
    assert validate[0]["report_id"] == "3" and validate[0]["mesh"] == ["Cardiomegaly/mild"]
    assert test["report_id"] == ["2", "4"] and test[0]["indication"] == "Chest pain"
    assert [r["split"] for r in test] == ["test", "test"]
    join = report.join
    assert (join["train"].joined, join["train"].unjoined, join["train"].ambiguous) == (1, 1, 1)
    assert join["train"].resolved_by_impression == 1
    assert (join["test"].joined, join["test"].ambiguous, join["test"].impression_mismatch) == (2, 1, 1)
    assert join["validate"].joined == 1
    assert report.reports is not None and report.reports.skipped == Counter({"empty_findings": 1})
    assert "join train" in report.summary()
    json.dumps(report.to_dict())


def test_benchmark_join_one_report_per_row(tmp_path: Path) -> None:
    reports = write_csv(tmp_path / "r.csv", [row(1, FINDINGS_A, "Ok."), row(2, FINDINGS_A, "Ok.")])
    bench = make_bench(
        tmp_path / "b",
        {
            "train": [(0, FINDINGS_A, "Ok."), (1, FINDINGS_A, "Ok."), (2, FINDINGS_A, "Ok.")],
            "validate": [(3, FINDINGS_B, "x")],
            "test": [(4, FINDINGS_C, "y")],
        },
    )
    dd, report = load_benchmark(bench, reports)
    assert dd["train"]["report_id"] == ["1", "2", "opi-2"]
    assert dd["train"][2]["indication"] == "Cough."  # clinical data still copied
    assert report.join["train"].shared_report == 1


def test_benchmark_without_reports_and_errors(tmp_path: Path) -> None:
    bench = make_bench(
        tmp_path / "b",
        {"train": [(0, FINDINGS_A, "Ok.")], "validate": [(1, FINDINGS_B, "x")], "test": [(2, FINDINGS_C, "y")]},
    )
    dd, report = load_benchmark(bench)
    assert dd["train"]["report_id"] == ["opi-0"] and report.join == {}
    (bench / "test.jsonl").write_text(json.dumps({"idx": 0, "inputs": "a", "target": "b"}) + "\n")
    with pytest.raises(DataValidationError, match="occurs in both train.jsonl and test.jsonl"):
        load_benchmark(bench)
    (bench / "test.jsonl").unlink()
    with pytest.raises(DataValidationError, match="benchmark split file missing"):
        load_benchmark(bench)


def test_benchmark_strict_names_line(tmp_path: Path) -> None:
    bench = make_bench(
        tmp_path / "b", {"train": [(0, FINDINGS_A, "Ok."), (1, FINDINGS_B, "")], "validate": [], "test": []}
    )
    (bench / "validate.jsonl").write_text("")
    with pytest.raises(DataValidationError, match=r"train.jsonl: row 2 \(1-based line number\), field 'impression'"):
        load_benchmark(bench, strict=True)


# ---------------------------------------------------------------------------------------
# Leakage guard
# ---------------------------------------------------------------------------------------


def _ds(findings: list[str]) -> datasets.Dataset:
    records = [
        {
            "report_id": str(i),
            "modality": "",
            "body_part": "",
            "indication": "",
            "comparison": "",
            "findings": f,
            "impression": "x",
            "radiologist_id": None,
            "split": "",
            "mesh": [],
            "problems": [],
            "source": f"t:{i}",
        }
        for i, f in enumerate(findings)
    ]
    return records_to_dataset(records)


def test_normalize_findings() -> None:
    assert normalize_findings("  The Heart\n is  NORMAL.\t") == "the heart is normal."
    assert normalize_findings("") == ""


def test_remove_test_leakage() -> None:
    train = _ds(
        [FINDINGS_A, FINDINGS_B, " the heart is normal in size.  the lungs are clear. no xxxx effusion.", FINDINGS_C]
    )
    test = _ds([FINDINGS_A.upper(), "Something else."])
    kept, removed = remove_test_leakage(train, test)
    assert removed == 2
    assert kept["findings"] == [FINDINGS_B, FINDINGS_C]
    same, none_removed = remove_test_leakage(kept, test)
    assert none_removed == 0 and same is kept


# ---------------------------------------------------------------------------------------
# Data location
# ---------------------------------------------------------------------------------------


@pytest.fixture
def data_fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake checkout at tmp/work/main with no data folder anywhere; cwd elsewhere."""
    root = tmp_path / "work" / "main"
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname='x'\n")
    monkeypatch.setattr(locate, "PROJECT_ROOT", root)
    monkeypatch.setattr(loading, "PROJECT_ROOT", root)
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return root


def test_resolve_data_dir_precedence(data_fake_root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = data_fake_root
    with pytest.raises(DataNotFoundError) as info:
        resolve_data_dir()
    assert "RADIMPRESS_DATA" in str(info.value) and "make data" in str(info.value)
    local = root / "data"
    local.mkdir()
    assert resolve_data_dir() == local.resolve()
    shared = root.parent / "shared" / "data"
    shared.mkdir(parents=True)
    assert resolve_data_dir() == shared.resolve()
    env_dir = tmp_path / "env-data"
    env_dir.mkdir()
    monkeypatch.setenv(data.ENV_DATA_DIR, str(env_dir))
    assert resolve_data_dir() == env_dir.resolve()
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    assert resolve_data_dir(explicit) == explicit.resolve()
    assert resolve_data_dir("data") == local.resolve()  # relative: cwd first, then the project root
    with pytest.raises(DataNotFoundError, match="data_dir parameter"):
        resolve_data_dir(tmp_path / "nope")
    monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path / "missing"))
    with pytest.raises(DataNotFoundError, match=r"\$RADIMPRESS_DATA"):
        resolve_data_dir()


# ---------------------------------------------------------------------------------------
# Download (never the network)
# ---------------------------------------------------------------------------------------


def _fake_sources(tmp_path: Path) -> tuple[dict[str, bytes], dict[str, str]]:
    files = {
        "openi": write_tgz(tmp_path / "src.tgz", {"ecgen-radiology/1.xml": openi_xml(1).encode()}).read_bytes(),
    }
    sha = {}
    for idx, split in enumerate(("train", "validate", "test")):
        body = json.dumps({"idx": idx, "inputs": FINDINGS_A, "target": split}).encode() + b"\n"
        files[split] = body
        (tmp_path / f"{split}.jsonl").write_bytes(body)
        sha[f"{split}.jsonl"] = file_sha256(tmp_path / f"{split}.jsonl")
    return files, sha


def test_download_with_fake_opener(tmp_path: Path) -> None:
    files, sha = _fake_sources(tmp_path)
    calls: list[str] = []

    def opener(url: str, timeout: float) -> io.BytesIO:
        calls.append(url)
        key = "openi" if url.endswith(".tgz") else url.rsplit("/", 1)[1].split(".")[0]
        return io.BytesIO(files[key])

    dest = tmp_path / "dest"
    out = download_openi(dest, benchmark_sha256=sha, opener=opener, log=lambda s: None)
    assert out["openi"] == dest / "openi" / "NLMCXR_reports.tgz"
    assert (dest / "opi-benchmark" / "test.jsonl").read_bytes() == files["test"]
    assert len(calls) == 4
    assert calls[1].startswith(
        "https://raw.githubusercontent.com/StanfordMIMI/clin-summ/e8ce6372f667efbe61ca69636790b2389cef1b38/"
    )
    # Second run: everything present and valid, nothing fetched.
    download_openi(dest, benchmark_sha256=sha, opener=opener, log=lambda s: None)
    assert len(calls) == 4
    # The downloaded layout loads.
    dd, report = load_benchmark(dest / "opi-benchmark", reports_xml=out["openi"])
    assert dd["test"]["report_id"] == ["1"] and report.join["test"].joined == 1
    # A corrupted file is fetched again.
    (dest / "opi-benchmark" / "train.jsonl").write_bytes(b"corrupt")
    download_openi(dest, benchmark_sha256=sha, opener=opener, log=lambda s: None)
    assert len(calls) == 5 and (dest / "opi-benchmark" / "train.jsonl").read_bytes() == files["train"]


def test_download_file_url_and_checksum_mismatch(tmp_path: Path) -> None:
    files, sha = _fake_sources(tmp_path)
    base = tmp_path.as_uri()
    dest = tmp_path / "dest"
    download_openi(dest, openi_url=f"{base}/src.tgz", benchmark_base_url=base, benchmark_sha256=sha, log=lambda s: None)
    assert file_sha256(dest / "opi-benchmark" / "validate.jsonl") == sha["validate.jsonl"]
    other = tmp_path / "other"
    with pytest.raises(DownloadError, match="does not match the pinned"):
        download_openi(other, openi_url=f"{base}/src.tgz", benchmark_base_url=base, log=lambda s: None)
    assert not (other / "opi-benchmark" / "train.jsonl").exists()
    assert not list((other / "opi-benchmark").glob("*.part"))
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"<html>not found</html>")
    with pytest.raises(DownloadError, match="not a readable tar"):
        download_openi(
            tmp_path / "third",
            openi_url=bad.as_uri(),
            benchmark_base_url=base,
            benchmark_sha256=sha,
            log=lambda s: None,
        )
    with pytest.raises(DownloadError, match="failed"):
        download_openi(tmp_path / "fourth", openi_url=f"{base}/absent.tgz", log=lambda s: None)
    assert set(BENCHMARK_SHA256) == {"train.jsonl", "validate.jsonl", "test.jsonl"}


def test_cli_download_prints_existing_data(
    data_fake_root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = data_fake_root.parent / "shared" / "data"
    make_bench(shared / "opi-benchmark", {s: [(0, "a", "b")] for s in ("train", "validate", "test")})
    (shared / "openi").mkdir(parents=True)
    write_csv(shared / "openi" / "indiana_reports.csv", [row(1)])

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("must not download")

    monkeypatch.setattr(loading, "download_openi", fail)
    assert data.main(["download", "--dest", "data"]) == 0
    assert f"data folder found at {shared.resolve()}" in capsys.readouterr().out


def test_cli_download_when_nothing_found(data_fake_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[Path] = []
    monkeypatch.setattr(loading, "download_openi", lambda dest: got.append(Path(dest)))
    assert data.main(["download"]) == 0
    assert got == [data_fake_root / "data"]


# ---------------------------------------------------------------------------------------
# load_from_config
# ---------------------------------------------------------------------------------------


@pytest.fixture
def data_synthetic_dir(tmp_path: Path) -> Path:
    """A data folder laid out like ../shared/data, with 12 reports."""
    root = tmp_path / "data"
    (root / "openi").mkdir(parents=True)
    findings = [f"Finding number {i}." for i in range(10)]
    rows = [row(i + 1, f, f"Impression {i}.") for i, f in enumerate(findings)]
    rows.append(row(11, findings[8], "Impression 8 again."))  # same findings as a test report
    rows.append(row(12, "", "No findings section."))
    write_csv(root / "openi" / "indiana_reports.csv", rows)
    make_bench(
        root / "opi-benchmark",
        {
            "train": [(i, findings[i], f"Impression {i}.") for i in range(6)]
            + [(6, findings[8].upper(), "Impression 8 again.")],
            "validate": [(7, findings[6], "Impression 6."), (8, findings[7], "Impression 7.")],
            "test": [(9, findings[8], "Impression 8."), (10, findings[9], "Impression 9.")],
        },
    )
    return root


def test_load_from_config_benchmark(data_synthetic_dir: Path) -> None:
    dd, report = load_from_config(data_synthetic_dir, "benchmark")
    assert report["leakage_removed"] == {"train": 1, "validate": 0}
    assert report["split_sizes"] == {"train": 6, "validate": 2, "test": 2}
    assert report["join"]["train"]["joined"] == 7
    assert [Path(p).name for p in data.data_files_read(report)] == [
        "indiana_reports.csv",
        "train.jsonl",
        "validate.jsonl",
        "test.jsonl",
    ]
    assert data.data_files_for_config(data_synthetic_dir, "benchmark") == data.data_files_read(report)
    json.dumps(report)
    test_keys = {normalize_findings(f) for f in dd["test"]["findings"]}
    assert not any(normalize_findings(f) in test_keys for s in ("train", "validate") for f in dd[s]["findings"])


def test_load_from_config_openi_sources(data_synthetic_dir: Path) -> None:
    dd, report = load_from_config(data_synthetic_dir, "openi_csv")
    assert report["split_assignment"]["test"] == 3  # both reports with findings 8 go to test
    assert sorted(dd["test"]["report_id"]) == ["10", "11", "9"]
    assert report["loads"]["openi_csv"]["skipped"] == {"empty_findings": 1}
    assert all(r["split"] == s for s in dd for r in dd[s])
    # The XML archive of the same reports gives the same splits.
    tgz_files = {
        f"ecgen-radiology/{i + 1}.xml": openi_xml(
            i + 1, findings=f"Finding number {i}.", impression=f"Impression {i}."
        ).encode()
        for i in range(10)
    }
    write_tgz(data_synthetic_dir / "openi" / "NLMCXR_reports.tgz", tgz_files)
    dd_xml, _ = load_from_config(data_synthetic_dir, "openi_xml")
    assert sorted(dd_xml["test"]["report_id"]) == ["10", "9"]


def test_load_from_config_user_seeded_split_and_limits(tmp_path: Path, data_fake_root: Path) -> None:
    rows = [user_row(f"A{i}", f"Finding {i % 40}.", f"Impression {i}.") for i in range(100)]
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    dd, report = load_from_config(None, "user", user_data_path=path, user_column_map=USER_MAP, seed=3)
    assert report["data_dir"] is None and report["split_assignment"]["method"].startswith("seeded")
    sizes = report["split_sizes"]
    assert sum(sizes.values()) == 100 and sizes["test"] >= 10 and sizes["validate"] >= 10
    assert report["leakage_removed"] == {"train": 0, "validate": 0}  # groups never straddle splits
    again, _ = load_from_config(None, "user", user_data_path=path, user_column_map=USER_MAP, seed=3)
    assert again["test"]["report_id"] == dd["test"]["report_id"]
    other, _ = load_from_config(None, "user", user_data_path=path, user_column_map=USER_MAP, seed=4)
    assert other["test"]["report_id"] != dd["test"]["report_id"]
    small, rep = load_from_config(
        None, "user", user_data_path=path, user_column_map=USER_MAP, seed=3, limit_train=5, limit_eval=2
    )
    assert rep["split_sizes"] == {"train": 5, "validate": 2, "test": 2}
    assert set(small["train"]["report_id"]) <= set(dd["train"]["report_id"])
    small2, _ = load_from_config(
        None, "user", user_data_path=path, user_column_map=USER_MAP, seed=3, limit_train=5, limit_eval=2
    )
    assert small2["train"]["report_id"] == small["train"]["report_id"]
    with pytest.raises(ValueError, match="limit_train"):
        load_from_config(None, "user", user_data_path=path, user_column_map=USER_MAP, limit_train=0)


def test_load_from_config_user_split_column_and_errors(tmp_path: Path, data_synthetic_dir: Path) -> None:
    rows = [
        user_row("A", "Finding number 8.", "x", part="train"),  # collides with its test row
        user_row("B", "Other.", "y", part="train"),
        user_row("C", "Finding number 8.", "z", part="test"),
    ]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    dd, report = load_from_config(
        data_synthetic_dir, "user", user_data_path=path, user_column_map={**USER_MAP, "split": "part"}
    )
    assert report["leakage_removed"]["train"] == 1 and dd["train"]["report_id"] == ["B"]
    assert report["split_assignment"]["method"] == "user split column"
    # Benchmark membership is used for user data without a split column when the benchmark is present.
    _, report2 = load_from_config(data_synthetic_dir, "user", user_data_path=path, user_column_map=USER_MAP)
    assert report2["split_assignment"]["test"] == 2
    with pytest.raises(ValueError, match="data_source must be"):
        load_from_config(data_synthetic_dir, "mimic")
    with pytest.raises(ValueError, match="needs user_data_path"):
        load_from_config(data_synthetic_dir, "user")
    with pytest.raises(DataNotFoundError, match="indiana_reports.csv"):
        load_from_config(data_synthetic_dir / "opi-benchmark", "openi_csv")
    empty = write_jsonl(tmp_path / "bad.jsonl", [user_row("A", "", "x")])
    with pytest.raises(DataValidationError, match="no usable row"):
        load_from_config(data_synthetic_dir, "user", user_data_path=empty, user_column_map=USER_MAP)
    with pytest.raises(DataValidationError, match="row 1"):
        load_from_config(data_synthetic_dir, "user", user_data_path=empty, user_column_map=USER_MAP, strict=True)


def test_load_report_dict_and_summary(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", [row(1), row(2, findings="")])
    _, report = load_openi_csv(path)
    d = report.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["rows_read"] == 2 and d["kept"] == 1 and d["skipped"] == {"empty_findings": 1}
    assert d["issues"][0] == {
        "file": str(path),
        "row": 2,
        "field": "findings",
        "reason": "empty_findings",
        "message": "findings is empty",
    }
    text = report.summary()
    assert "rows read: 2" in text and "row 2, findings: [empty_findings]" in text


# ---------------------------------------------------------------------------------------
# Real data (only where a data folder is found)
# ---------------------------------------------------------------------------------------


def _real_data_dir() -> Path | None:
    try:
        root = resolve_data_dir()
    except DataNotFoundError:
        return None
    ok = (root / "openi" / "indiana_reports.csv").is_file() and (root / "opi-benchmark" / "test.jsonl").is_file()
    return root if ok else None


@pytest.mark.skipif(_real_data_dir() is None, reason="no data folder with indiana_reports.csv + opi-benchmark found")
def test_real_data_totals() -> None:
    root = _real_data_dir()
    assert root is not None
    start = time.perf_counter()
    ds, report = load_openi_csv(root / "openi" / "indiana_reports.csv")
    assert time.perf_counter() - start < 5.0
    assert report.rows_read == 3851 and report.kept == len(ds) == 3331
    assert report.skipped == Counter({"empty_findings": 514, "empty_impression": 6})
    dd, bench = load_benchmark(root / "opi-benchmark", root / "openi" / "indiana_reports.csv", strict=True)
    assert {s: len(dd[s]) for s in dd} == {"train": 2735, "validate": 341, "test": 343}
    assert {s: bench.join[s].joined for s in bench.join} == {"train": 2676, "validate": 329, "test": 331}
    all_ids = [i for s in dd for i in dd[s]["report_id"]]
    assert len(all_ids) == len(set(all_ids))
    _, removed_train = remove_test_leakage(dd["train"], dd["test"])
    _, removed_val = remove_test_leakage(dd["validate"], dd["test"])
    _, removed_csv = remove_test_leakage(ds, dd["test"])
    assert (removed_train, removed_val, removed_csv) == (480, 65, 869)


def test_load_from_config_identity_map_keeps_split_column(tmp_path: Path, data_fake_root: Path) -> None:
    path = tmp_path / "canon.csv"
    write_csv(
        path,
        [
            {"report_id": "r1", "findings": FINDINGS_A, "impression": "Ok.", "split": "train"},
            {"report_id": "r2", "findings": FINDINGS_B, "impression": "Ok.", "split": "validation"},
            {"report_id": "r3", "findings": FINDINGS_C, "impression": "Ok.", "split": "test"},
        ],
        header=["report_id", "findings", "impression", "split"],
    )
    dd, report = load_from_config(None, "user", user_data_path=path, user_column_map={})
    assert report["split_assignment"]["method"] == "user split column"
    assert {s: dd[s]["report_id"] for s in dd} == {"train": ["r1"], "validate": ["r2"], "test": ["r3"]}


# ---------------------------------------------------------------------------------------
# Hardening (issue 18): real hospital exports
# ---------------------------------------------------------------------------------------

UNCLOSED_QUOTE = b'report_id,findings,impression\nr1,Heart normal.,"No acute disease.\nr2,Lungs clear.,Normal chest.\nr3,Small effusion.,Effusion.\n'
STRAY_QUOTE = b'report_id,findings,impression\nr1,"Nodule measuring 5" in the RUL.",Nodule.\nr2,Lungs clear.,Normal chest.\nr3,Small effusion.,Effusion.\n'


@pytest.mark.parametrize("content", [UNCLOSED_QUOTE, STRAY_QUOTE], ids=["unclosed", "stray"])
def test_csv_unbalanced_quote_is_reported_not_merged(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "export.csv"
    path.write_bytes(content)
    ds, report = load_user(path)
    assert ds["report_id"] == ["r2", "r3"]  # the rows after the bad quote are read on their own
    assert (report.rows_read, report.kept, report.skipped) == (3, 2, Counter({"malformed_row": 1}))
    issue = report.issues[0]
    assert (issue.row, issue.reason) == (1, "malformed_row")
    assert "file line 2" in issue.message and '"' in issue.message
    with pytest.raises(DataValidationError, match=r"row 1 \(1-based data row, header excluded\).*file line 2") as info:
        load_user(path, strict=True)
    assert (info.value.row, info.value.reason) == (1, "malformed_row")


def test_utf8_bom_is_stripped(tmp_path: Path) -> None:
    csv_path = tmp_path / "bom.csv"
    csv_path.write_bytes(b"\xef\xbb\xbfreport_id,findings,impression\nA1,Heart normal.,Ok.\n")
    ds, report = load_user(csv_path)
    assert ds["report_id"] == ["A1"] and report.kept == 1
    jsonl_path = tmp_path / "bom.jsonl"
    jsonl_path.write_bytes(b'\xef\xbb\xbf{"report_id": "A1", "findings": "Heart normal.", "impression": "Ok."}\n')
    ds, report = load_user(jsonl_path)
    assert ds["report_id"] == ["A1"] and report.issues == []


def test_duplicate_id_of_a_skipped_row_is_reported(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [user_row("A", impression=""), user_row("A", FINDINGS_B)])
    ds, report = load_user(path, USER_MAP)
    assert len(ds) == 0 and report.skipped == Counter({"empty_impression": 1, "duplicate_id": 1})
    dup = [i for i in report.issues if i.reason == "duplicate_id"][0]
    assert dup.row == 2 and "row 1" in dup.message and "skipped" in dup.message


def test_nul_bytes_are_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "n.jsonl", [user_row("A", "Heart\x00 normal."), user_row("B", FINDINGS_B)])
    ds, report = load_user(path, USER_MAP)
    assert ds["report_id"] == ["B"] and report.skipped == Counter({"nul_byte": 1})
    assert (report.issues[0].row, report.issues[0].field) == (1, "findings")
    with pytest.raises(DataValidationError, match=r"row 1 .*field 'findings'.*NUL"):
        load_user(path, USER_MAP, strict=True)


def test_missing_column_names_a_case_only_difference(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text("AccessionNumber,Findings,Impression\nA1,Heart normal.,Ok.\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"'Findings' differs from 'findings' only by case"):
        load_user(path, {"findings": "findings", "impression": "Impression"})


def test_out_of_scope_studies_are_skipped_and_counted(tmp_path: Path) -> None:
    rows = [{"report_id": "a", "modality": "XR", "body_part": "CHEST", "findings": FINDINGS_A, "impression": "Ok."},
            {"report_id": "b", "modality": "CT", "body_part": "HEAD", "findings": FINDINGS_B, "impression": "Ok."},
            {"report_id": "c", "modality": "CR", "body_part": "Chest", "findings": FINDINGS_C, "impression": "Ok."},
            {"report_id": "d", "modality": "MR", "body_part": "CHEST", "findings": "Other.", "impression": "Ok."},
            {"report_id": "e", "findings": "Unknown study.", "impression": "Ok."}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    for strict in (False, True):  # a scope filter, not a data error: strict mode does not raise
        ds, report = load_user(path, strict=strict, modalities=["XR"], body_parts=["CHEST"])
        assert ds["report_id"] == ["a", "c", "e"]  # CR is a radiograph; an unknown study is kept
        assert report.skipped == Counter({"out_of_scope": 2})
        assert {i.row: i.field for i in report.issues} == {2: "modality", 4: "modality"}
        assert "CT HEAD" in report.issues[0].message and "XR CHEST" in report.issues[0].message
    ds, report = load_user(path, modalities=[], body_parts=[])
    assert len(ds) == 5 and not report.skipped


def test_load_from_config_applies_the_study_scope(tmp_path: Path, data_fake_root: Path) -> None:
    rows = [{"report_id": f"r{i}", "modality": "CT" if i % 5 == 0 else "XR", "body_part": "CHEST",
             "findings": f"Finding {i}.", "impression": "Ok."} for i in range(40)]
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    _, report = load_from_config(None, "user", user_data_path=path, modalities=["XR"], body_parts=["CHEST"])
    assert report["loads"]["user"]["skipped"] == {"out_of_scope": 8}
    assert report["scope"] == {"modalities": ["XR"], "body_parts": ["CHEST"]}


def test_user_data_beside_the_benchmark_gets_all_three_splits(tmp_path: Path, data_synthetic_dir: Path) -> None:
    rows = [user_row(f"U{i}", f"Own finding {i}.", f"Impression {i}.") for i in range(50)]
    rows.append(user_row("T", "Finding number 8.", "z"))  # a benchmark test report stays in test
    path = write_jsonl(tmp_path / "own.jsonl", rows)
    dd, report = load_from_config(data_synthetic_dir, "user", user_data_path=path, user_column_map=USER_MAP, seed=1)
    sizes = report["split_sizes"]
    assert sizes["test"] >= 5 and sizes["validate"] >= 5 and sizes["train"] >= 35 and sum(sizes.values()) == 51
    assert "T" in dd["test"]["report_id"]
    assignment = report["split_assignment"]
    assert assignment["benchmark_members"] == {"test": 1}
    assert sum(assignment["seeded"].values()) == 50 and assignment["seed"] == 1
    assert {s: assignment[s] for s in ("train", "validate", "test")} == sizes
    again, _ = load_from_config(data_synthetic_dir, "user", user_data_path=path, user_column_map=USER_MAP, seed=1)
    assert again["test"]["report_id"] == dd["test"]["report_id"]


def test_download_without_network_prints_one_line(
    data_fake_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def offline(dest: Any) -> None:
        try:
            raise OSError("[Errno -3] Temporary failure in name resolution")
        except OSError as exc:
            raise DownloadError(f"downloading https://example.invalid/x.tgz failed: {exc}") from exc

    monkeypatch.setattr(loading, "download_openi", offline)
    assert data.main(["download"]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err + captured.out
    assert "RADIMPRESS_DATA" in lines[0] and "Temporary failure in name resolution" in lines[0]


# ---------------------------------------------------------------------------------------
# Synthetic sample (a newcomer without data)
# ---------------------------------------------------------------------------------------


def test_synthetic_reports_are_templated_labelled_and_seeded() -> None:
    import re

    from radimpress_lib.data import synthetic

    reports = synthetic.synthetic_reports(200, seed=0)
    assert reports == synthetic.synthetic_reports(200, seed=0) != synthetic.synthetic_reports(200, seed=1)
    sentence_patterns = [
        re.escape(t).replace(r"\{Size\}", r"\w+").replace(r"\{side\}", r"\w+").replace(r"\{lobe\}", r"\w+")
        .replace(r"\{degree\}", r"\w+").replace(r"\{mm\}", r"\d+")
        for t in [a["findings"] for a in synthetic._ABNORMAL] + [n for ns in synthetic._NORMAL.values() for n in ns]
    ]
    templated = re.compile("|".join(f"(?:{p})" for p in sentence_patterns))
    for r in reports:
        assert r["synthetic"] is True and (r["modality"], r["body_part"]) == ("XR", "CHEST")
        assert r["radiologist_id"].startswith("synthetic-reader-")
        assert templated.sub("", r["findings"]).strip() == "", r["findings"]  # nothing but template sentences
        for term in r["mesh"]:  # each label names a finding the text states
            label = term.split("/")[0].lower()
            assert label == "normal" or label.split()[-1].rstrip("s") in (r["findings"] + r["impression"]).lower() \
                or (label == "pneumonia" and "consolidation" in r["findings"]) \
                or (label == "cardiomegaly" and "enlarged" in r["findings"]) \
                or (label == "spine" and "spine" in r["findings"])
    assert len({r["findings"] for r in reports}) > 150 and len({r["radiologist_id"] for r in reports}) == 4


def test_synthetic_sample_only_when_no_data_folder_at_all(
    tmp_path: Path, data_fake_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DataNotFoundError):  # not asked for: the error says how to get data, as before
        load_from_config(None, "benchmark")
    dd, report = load_from_config(None, "benchmark", synthetic_fallback=True, seed=42)
    assert report["data_source"] == "synthetic" and "SYNTHETIC" in report["synthetic"]["note"]
    assert Path(report["files_read"][0]) == data_fake_root / ".cache" / "synthetic-data" / "synthetic_reports.jsonl"
    assert min(report["split_sizes"].values()) >= 30
    assert all(rid.startswith("syn-") for s in dd for rid in dd[s]["report_id"])
    # a data folder named but missing is an error, never a reason to use synthetic data
    monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path / "typo"))
    with pytest.raises(DataNotFoundError, match=r"\$RADIMPRESS_DATA"):
        load_from_config(None, "benchmark", synthetic_fallback=True)
    monkeypatch.delenv(data.ENV_DATA_DIR)
    # real data found: the synthetic sample is never used
    shared = data_fake_root.parent / "shared" / "data"
    make_bench(shared / "opi-benchmark", {s: [(10 * k + i, f"Finding {s} {i}.", "Ok.") for i in range(3)]
                                          for k, s in enumerate(("train", "validate", "test"))})
    _, real = load_from_config(None, "benchmark", synthetic_fallback=True)
    assert real["data_source"] == "benchmark" and real["synthetic"] is None


def test_ci_tiny_runs_on_the_synthetic_sample_and_says_so(data_fake_root: Path) -> None:
    from radimpress_lib.core import config

    params = config.load_params("ci-tiny")
    assert params.data.synthetic_fallback and not config.load_params("smollm2-135m").data.synthetic_fallback
    dd, info = data.load_data(params)
    assert info["summary"].startswith("SYNTHETIC data")
    assert info["totals"]["synthetic"] is True and info["data_files"][0].name == "synthetic_reports.jsonl"
    assert {s: len(dd[s]) for s in dd} == {"train": 48, "validate": 16, "test": 16}  # ci-tiny's limits are met
    ignored = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().splitlines()
    assert ".cache/" in ignored and loading.synthetic_data_dir().relative_to(data_fake_root).parts[0] == ".cache"
