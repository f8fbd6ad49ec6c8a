"""Tests for radimpress_lib.core.manifest (run manifests)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from radimpress_lib.core import manifest as mf


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    (folder / "opi").mkdir(parents=True)
    (folder / "opi" / "train.jsonl").write_text('{"idx": 1, "inputs": "a", "target": "b"}\n')
    (folder / "reports.csv").write_bytes(b"uid,findings\n1,clear lungs\n")
    return folder


def _write(out: Path, data_dir: Path, stage: str, seed: int = 0, **kw) -> dict:
    path = mf.write_manifest(
        out,
        stage=stage,
        seed=seed,
        config=kw.pop("config", {"lr": 1e-4}),
        data_files=kw.pop("data_files", [data_dir / "opi" / "train.jsonl"]),
        data_dir=data_dir,
        **kw,
    )
    assert path == out / "manifest.json"
    return json.loads(path.read_text())


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    payload = b"findings: no acute disease\n" * 100_000  # > 1 chunk
    f = tmp_path / "x.bin"
    f.write_bytes(payload)
    assert mf.sha256_file(f) == hashlib.sha256(payload).hexdigest()
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        mf.sha256_file(tmp_path / "missing.bin")


def test_merge_keeps_other_stages_and_replaces_own(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    first = _write(out, data_dir, "01_data", seed=1, config={"max_len": 512})
    _write(out, data_dir, "03_sft", seed=2, config={"lr": 2e-4}, effective_batch=16)
    third = _write(out, data_dir, "01_data", seed=3, config={"max_len": 256})

    assert set(third["stages"]) == {"01_data", "03_sft"}
    assert third["stages"]["01_data"]["seed"] == 3
    assert third["stages"]["01_data"]["config"] == {"max_len": 256}
    assert third["stages"]["03_sft"]["seed"] == 2
    assert third["stages"]["03_sft"]["config"] == {"lr": 2e-4}
    assert third["stages"]["03_sft"]["effective_batch"] == 16
    assert third["stages"]["01_data"]["effective_batch"] is None
    assert third["created_utc"] == first["created_utc"]
    assert (third["seed"], third["last_stage"]) == (3, "01_data")
    assert third["schema_version"] == mf.MANIFEST_SCHEMA_VERSION
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", third["updated_utc"])


def test_data_files_hashed_and_relative(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    files = [data_dir / "opi" / "train.jsonl", data_dir / "reports.csv"]
    got = _write(out, data_dir, "01_data", data_files=files)
    entries = got["stages"]["01_data"]["data_files"]
    assert [e["name"] for e in entries] == ["opi/train.jsonl", "reports.csv"]
    assert all(e["root"] == "data" for e in entries)
    for entry, f in zip(entries, files, strict=True):
        assert entry["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
        assert entry["size_bytes"] == f.stat().st_size
    assert str(tmp_path) not in (out / "manifest.json").read_text()


def test_top_level_data_files_union_and_conflicts(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    train = data_dir / "opi" / "train.jsonl"
    _write(out, data_dir, "01_data", data_files=[train, data_dir / "reports.csv"])
    got = _write(out, data_dir, "03_sft", data_files=[train])
    rows = {r["name"]: r for r in got["data_files"]}
    assert rows["opi/train.jsonl"]["stages"] == ["01_data", "03_sft"]
    assert rows["reports.csv"]["stages"] == ["01_data"]
    assert not any(r["conflict"] for r in got["data_files"])

    train.write_text("changed\n")  # a later stage read different contents under the same name
    got = _write(out, data_dir, "04_eval", data_files=[train])
    versions = [r for r in got["data_files"] if r["name"] == "opi/train.jsonl"]
    assert len(versions) == 2 and all(r["conflict"] for r in versions)
    assert {tuple(r["stages"]) for r in versions} == {("01_data", "03_sft"), ("04_eval",)}


def test_data_files_without_data_dir_use_common_parent(tmp_path: Path, data_dir: Path, monkeypatch) -> None:
    monkeypatch.delenv("RADIMPRESS_DATA", raising=False)
    path = mf.write_manifest(
        tmp_path / "run", stage="s", seed=0, config={},
        data_files=[data_dir / "opi" / "train.jsonl", data_dir / "reports.csv"],
    )
    text = path.read_text()
    entries = json.loads(text)["stages"]["s"]["data_files"]
    assert [(e["name"], e["root"]) for e in entries] == [
        ("opi/train.jsonl", "common-parent"), ("reports.csv", "common-parent")
    ]
    assert str(tmp_path) not in text


def test_data_dir_from_environment(tmp_path: Path, data_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("RADIMPRESS_DATA", str(data_dir))
    path = mf.write_manifest(
        tmp_path / "run", stage="s", seed=0, config={}, data_files=[data_dir / "reports.csv"]
    )
    entry = json.loads(path.read_text())["stages"]["s"]["data_files"][0]
    assert (entry["name"], entry["root"]) == ("reports.csv", "data")


def test_absolute_paths_in_config_are_made_portable(tmp_path: Path, data_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", "/nonexistent-home")  # tmp_path must not count as under ~
    outside = tmp_path / "elsewhere" / "weights.safetensors"
    outside.parent.mkdir()
    got = _write(
        tmp_path / "run",
        data_dir,
        "02_train",
        config={
            "data": data_dir / "opi" / "train.jsonl",
            "data_str": str(data_dir / "reports.csv"),
            "data_dir": str(data_dir),
            "ckpt": outside,
            "nested": [{"p": str(outside)}],
            "relative": Path("outputs/x"),
            "not_a_path": "/no_such_top_level_dir_xyz/keep",
        },
        extra={"dtype": "float32", "nan": float("nan")},
    )
    cfg = got["stages"]["02_train"]["config"]
    assert cfg["data"] == "$RADIMPRESS_DATA/opi/train.jsonl"
    assert cfg["data_str"] == "$RADIMPRESS_DATA/reports.csv"
    assert cfg["data_dir"] == "$RADIMPRESS_DATA"
    assert cfg["ckpt"] == "<external>/weights.safetensors"
    assert cfg["nested"] == [{"p": "<external>/weights.safetensors"}]
    assert cfg["relative"] == "outputs/x"
    assert cfg["not_a_path"] == "/no_such_top_level_dir_xyz/keep"
    assert got["stages"]["02_train"]["extra"] == {"dtype": "float32", "nan": "nan"}
    assert str(tmp_path) not in (tmp_path / "run" / "manifest.json").read_text()


def test_environment_and_packages(tmp_path: Path, data_dir: Path) -> None:
    got = _write(tmp_path / "run", data_dir, "s")
    assert set(got["packages"]) == set(mf.TRACKED_PACKAGES)
    assert got["packages"]["torch"] is not None
    assert got["packages"]["radimpress_lib"] is not None
    env = got["environment"]
    assert env["python"].count(".") == 2
    assert env["cpu"]["logical_cores"] >= 1
    assert env["torch"]["version"] == got["packages"]["torch"]
    assert got["stages"]["s"]["torch_device"].startswith(("cpu", "cuda"))
    assert mf.package_versions(["surely-not-installed-pkg-xyz"]) == {"surely-not-installed-pkg-xyz": None}


def test_timestamps_and_elapsed(tmp_path: Path, data_dir: Path) -> None:
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    got = _write(tmp_path / "run", data_dir, "s", started_at=start)
    stage = got["stages"]["s"]
    assert stage["elapsed_seconds"] >= 5
    assert stage["started_utc"].endswith("Z") and stage["finished_utc"].endswith("Z")
    with pytest.raises(ValueError, match="timezone"):
        _write(tmp_path / "run2", data_dir, "s", started_at=dt.datetime.now())


def test_bad_inputs_are_reported(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        _write(out, data_dir, "s", data_files=[data_dir / "nope.jsonl"])
    with pytest.raises(TypeError, match=r"config\.fn"):
        _write(out, data_dir, "s", config={"fn": object()})
    with pytest.raises(ValueError, match="stage"):
        _write(out, data_dir, "")
    with pytest.raises(ValueError, match="effective_batch"):
        _write(out, data_dir, "s", effective_batch=0)


def test_corrupt_manifest_is_not_overwritten(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(mf.ManifestError, match="manifest.json"):
        _write(out, data_dir, "s")
    assert (out / "manifest.json").read_text() == "{not json"


def test_non_git_folder_gives_nulls(tmp_path: Path, data_dir: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert mf.git_info(plain) == {"sha": None, "dirty": None}
    got = _write(tmp_path / "run", data_dir, "s", repo_dir=plain)
    assert got["git"] == {"sha": None, "dirty": None}
    assert got["stages"]["s"]["git"] == {"sha": None, "dirty": None}


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_sha_and_dirty_flag(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
            cwd=repo, check=True, capture_output=True, text=True,
        ).stdout.strip()

    git("init", "-q")
    assert mf.git_info(repo) == {"sha": None, "dirty": False}  # no commit yet
    (repo / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("commit", "-q", "-m", "init")
    sha = git("rev-parse", "HEAD")
    assert mf.git_info(repo) == {"sha": sha, "dirty": False}
    (repo / "outputs").mkdir()
    (repo / "outputs" / "metrics.json").write_text("{}\n")
    git("add", "outputs/metrics.json")
    git("commit", "-q", "-m", "reference outputs")
    sha = git("rev-parse", "HEAD")
    (repo / "outputs" / "metrics.json").write_text('{"a": 1}\n')
    assert mf.git_info(repo) == {"sha": sha, "dirty": False}  # a run rewriting its outputs is not a code change
    (repo / "a.txt").write_text("two\n")
    assert mf.git_info(repo) == {"sha": sha, "dirty": True}


def test_the_data_folder_beside_the_checkout_is_made_portable(tmp_path: Path, monkeypatch) -> None:
    """A reference run that finds ../shared/data without $RADIMPRESS_DATA still writes no machine path."""
    from radimpress_lib.core import paths

    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    monkeypatch.delenv("RADIMPRESS_DATA", raising=False)
    monkeypatch.setattr(paths, "PROJECT_ROOT", tmp_path / "checkout")
    assert paths.shared_data_dir() == shared
    text = f"data folder: {shared}  source: benchmark\nreports: {shared / 'reports.csv'}"
    assert paths.portable_text(text) == ("data folder: $RADIMPRESS_DATA  source: benchmark\n"
                                         "reports: $RADIMPRESS_DATA/reports.csv")
    monkeypatch.setattr(paths, "PROJECT_ROOT", tmp_path / "elsewhere" / "checkout")  # no data folder beside it
    assert paths.portable_text(text) == text
