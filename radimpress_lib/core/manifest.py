"""Run manifests: what code, environment, seed, config and data produced an output.

Every notebook stage calls :func:`write_manifest` once at the end.  The file
``<output_dir>/manifest.json`` is *merged*, not overwritten: each stage owns the
entry ``manifest["stages"][stage]`` and re-running a stage replaces only that
entry, so a single manifest describes the whole pipeline that wrote into one
output folder.

Layout of ``manifest.json`` (``schema_version`` 1)::

    {
      "schema_version": 1,
      "created_utc": "...",                 # first write
      "updated_utc": "...",                 # latest write
      "seed": 42, "last_stage": "03_sft",   # of the latest write
      "git": {"sha": ..., "dirty": ...},    # latest write (null outside git)
      "environment": {python, platform, cpu, torch},   # latest write
      "packages": {"torch": "2.x", ..., "papermill": null},  # null = not installed
      "data_files": [                       # union over stages
        {"name": "opi-benchmark/train.jsonl", "root": "data", "sha256": "...",
         "size_bytes": 123, "stages": ["01_explore", "03_sft"], "conflict": false}],
      "stages": {
        "<stage>": {
          "seed": 42, "config": {...}, "effective_batch": 16 | null,
          "started_utc": ... | null, "finished_utc": ..., "elapsed_seconds": ... | null,
          "git": {"sha": ..., "dirty": ...},
          "torch_device": "cpu" | "cuda: <name>",
          "data_files": [{"name": ..., "root": ..., "sha256": ..., "size_bytes": ...}],
          "extra": {...}
        }
      }
    }

``conflict`` is true when two stages read different contents under one name
(both versions are listed).

No absolute host path is ever written.  Data files are named relative to the
data folder (``root: "data"``; ``data_dir`` argument or ``$RADIMPRESS_DATA``),
else to the project root (``"project"``), else to the deepest folder shared by
the listed files (``"common-parent"``).  Absolute paths found inside
``config``/``extra`` are rewritten as ``"$RADIMPRESS_DATA/..."``,
project-relative, ``"~/..."`` or, failing all of those,
``"<external>/<file name>"``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock

import radimpress_lib
from radimpress_lib.core.jsonio import write_json

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_SCHEMA_VERSION",
    "TRACKED_PACKAGES",
    "ManifestError",
    "cpu_info",
    "git_info",
    "package_versions",
    "project_root",
    "read_manifest",
    "sha256_file",
    "torch_info",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1

#: Distribution names whose versions are recorded (``None`` when not installed).
TRACKED_PACKAGES: tuple[str, ...] = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "datasets",
    "accelerate",
    "papermill",
    "numpy",
    "pandas",
    "rouge-score",
    "sacrebleu",
    "scikit-learn",
    "seaborn",
    "radimpress_lib",
)

_HASH_CHUNK = 1 << 20


class ManifestError(RuntimeError):
    """An existing manifest cannot be read or merged."""


# --------------------------------------------------------------------------- paths


def project_root() -> Path:
    """Folder holding ``pyproject.toml`` above this file.

    Falls back to the parent of the ``radimpress_lib`` package when no
    ``pyproject.toml`` is found (e.g. a source checkout without packaging).
    """
    here = Path(__file__).resolve().parent
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    return here.parent


def _data_root(data_dir: str | os.PathLike[str] | None) -> Path | None:
    if data_dir is not None:
        return Path(data_dir).expanduser().resolve()
    env = os.environ.get("RADIMPRESS_DATA")
    return Path(env).expanduser().resolve() if env else None


def _relative_to(path: Path, root: Path | None) -> str | None:
    if root is None:
        return None
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return None


def _portable_path(path: Path, data_root: Path | None, proj_root: Path) -> tuple[str, str]:
    """Return ``(relative path, root label)`` for *path*; never an absolute path."""
    resolved = path.expanduser().resolve()
    rel = _relative_to(resolved, data_root)
    if rel is not None:
        return rel, "data"
    rel = _relative_to(resolved, proj_root)
    if rel is not None:
        return rel, "project"
    rel = _relative_to(resolved, Path.home().resolve())
    if rel is not None:
        return rel, "home"
    return resolved.name, "external"


def _render_path(path: Path, data_root: Path | None, proj_root: Path) -> str:
    rel, root = _portable_path(path, data_root, proj_root)
    if root == "data":
        return "$RADIMPRESS_DATA" if rel == "." else f"$RADIMPRESS_DATA/{rel}"
    if root == "project":
        return rel
    if root == "home":
        return f"~/{rel}"
    return f"<external>/{rel}"


# --------------------------------------------------------------------------- hashing


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (streamed, constant memory).

    Raises:
        FileNotFoundError: naming the path when it does not exist or is not a file.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"cannot hash {p}: not an existing file")
    digest = hashlib.sha256()
    with p.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- environment


def git_info(repo_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``{"sha": str|None, "dirty": bool|None}`` of the git work tree at *repo_dir*.

    ``sha`` is ``None`` outside a git repository, in a repository without commits
    or when ``git`` is not installed; ``dirty`` is ``None`` only when the folder
    is not a git work tree at all. ``dirty`` counts changes to tracked files outside
    ``outputs/``: a run rewrites the committed reference outputs as it goes, which says
    nothing about the code it ran.
    """
    cwd = Path(repo_dir) if repo_dir is not None else project_root()

    def _git(*args: str) -> subprocess.CompletedProcess[str] | None:
        try:
            return subprocess.run(
                ["git", *args],
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None

    inside = _git("rev-parse", "--is-inside-work-tree")
    if inside is None or inside.returncode != 0 or inside.stdout.strip() != "true":
        return {"sha": None, "dirty": None}
    head = _git("rev-parse", "--verify", "--quiet", "HEAD")
    sha = head.stdout.strip() if head is not None and head.returncode == 0 else None
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)outputs")
    dirty = bool(status.stdout.strip()) if status is not None and status.returncode == 0 else None
    return {"sha": sha or None, "dirty": dirty}


def cpu_info() -> dict[str, Any]:
    """CPU model name, logical core count and the cores usable by this process."""
    model: str | None = None
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    if not model:
        model = platform.processor() or None
    try:
        usable = len(os.sched_getaffinity(0))  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {"model": model, "logical_cores": os.cpu_count(), "usable_cores": usable}


def torch_info() -> dict[str, Any]:
    """torch version, CUDA build/availability and device name (``None`` on CPU)."""
    try:
        import torch
    except ImportError:
        return {"version": None, "cuda_available": False, "cuda_version": None,
                "device": "cpu", "cuda_device_name": None}
    available = bool(torch.cuda.is_available())
    name = torch.cuda.get_device_name(0) if available else None
    return {
        "version": torch.__version__,
        "cuda_available": available,
        "cuda_version": torch.version.cuda,
        "device": "cuda" if available else "cpu",
        "cuda_device_name": name,
        "num_threads": torch.get_num_threads(),
    }


def _own_version() -> str | None:
    for dist in importlib.metadata.packages_distributions().get("radimpress_lib", []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return radimpress_lib.__version__  # not installed as a distribution (e.g. run from a plain checkout)


def package_versions(names: Iterable[str] = TRACKED_PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution in *names* (``None`` when missing)."""
    versions: dict[str, str | None] = {}
    for name in names:
        if name == "radimpress_lib":
            versions[name] = _own_version()
            continue
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _iso(moment: _dt.datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {moment!r} has no timezone; pass an aware datetime (UTC)")
    return moment.astimezone(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- JSON sanitising


def _looks_like_abs_path(text: str) -> bool:
    """True for strings that are absolute paths on this host (first component exists)."""
    if "\n" in text or not os.path.isabs(text):
        return False
    parts = Path(text).parts
    return len(parts) > 1 and Path(parts[0], parts[1]).exists()


def _jsonable(value: Any, data_root: Path | None, proj_root: Path, where: str) -> Any:
    """Convert *value* to plain JSON types, rewriting absolute paths as portable ones."""
    if value is None or isinstance(value, bool | int | str):
        if isinstance(value, str) and _looks_like_abs_path(value):
            return _render_path(Path(value), data_root, proj_root)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return repr(value)  # JSON has no NaN/inf; keep it visible as a string
        return value
    if isinstance(value, os.PathLike):
        path = Path(value)
        return _render_path(path, data_root, proj_root) if path.is_absolute() else path.as_posix()
    if isinstance(value, _dt.datetime):
        return _iso(value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value), data_root, proj_root, where)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, data_root, proj_root, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [_jsonable(v, data_root, proj_root, f"{where}[{i}]") for i, v in enumerate(items)]
    # numpy / torch scalars and arrays, torch dtypes and devices
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        return _jsonable(value.item(), data_root, proj_root, where)
    if callable(getattr(value, "tolist", None)):
        return _jsonable(value.tolist(), data_root, proj_root, where)
    if type(value).__module__.startswith("torch") and type(value).__name__ in {"dtype", "device"}:
        return str(value)
    raise TypeError(
        f"manifest value at {where} has type {type(value).__name__}, which is not JSON "
        "serialisable; convert it to str/int/float/list/dict first"
    )


# --------------------------------------------------------------------------- read / write


def read_manifest(output_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Load ``<output_dir>/manifest.json`` (``{}`` when it does not exist).

    Raises:
        ManifestError: the file exists but is not a JSON object.
    """
    path = Path(output_dir) / MANIFEST_NAME
    if not path.exists():
        return {}
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "fix or remove it, it will not be overwritten"
        ) from exc
    if not isinstance(loaded, dict):
        raise ManifestError(f"{path}: expected a JSON object, found {type(loaded).__name__}")
    if not isinstance(loaded.get("stages", {}), dict):
        raise ManifestError(f"{path}: field 'stages' must be an object")
    return loaded


def _data_file_entries(
    data_files: Iterable[str | os.PathLike[str]], data_root: Path | None, proj_root: Path
) -> list[dict[str, Any]]:
    """Hash each data file and name it relative to the data folder.

    Names are relative to *data_root* (``root: "data"``), else to the project
    root (``"project"``), else to the deepest folder common to all the files that
    are outside both (``"common-parent"``), so no absolute path is stored.
    """
    paths = [Path(raw).expanduser() for raw in data_files]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"data file listed for the manifest does not exist: {path}")
    resolved = [p.resolve() for p in paths]
    outside = [
        p for p in resolved if _relative_to(p, data_root) is None and _relative_to(p, proj_root) is None
    ]
    common = Path(os.path.commonpath([str(p.parent) for p in outside])) if outside else None
    entries: list[dict[str, Any]] = []
    for path in resolved:
        for root_label, root in (("data", data_root), ("project", proj_root), ("common-parent", common)):
            rel = _relative_to(path, root)
            if rel is not None:
                break
        else:  # pragma: no cover - every outside file is under the common parent
            rel, root_label = path.name, "external"
        entries.append(
            {
                "name": rel,
                "root": root_label,
                "sha256": sha256_file(path),
                "size_bytes": path.stat().st_size,
            }
        )
    return entries


def _merge_data_files(stages: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Union of the stages' data files; the same name with two hashes is listed twice."""
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    for stage_name, entry in stages.items():
        for f in entry.get("data_files", []):
            key = (f.get("root", ""), f["name"], f["sha256"])
            row = merged.setdefault(key, {**f, "stages": []})
            row["stages"].append(stage_name)
    rows = sorted(merged.values(), key=lambda r: (r["root"], r["name"], r["sha256"]))
    names = [(r["root"], r["name"]) for r in rows]
    for row in rows:
        row["conflict"] = names.count((row["root"], row["name"])) > 1
    return rows


def write_manifest(
    output_dir: str | os.PathLike[str],
    *,
    stage: str,
    seed: int,
    config: Mapping[str, Any],
    data_files: Iterable[str | os.PathLike[str]],
    effective_batch: int | None = None,
    extra: Mapping[str, Any] | None = None,
    started_at: _dt.datetime | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    repo_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Merge this stage's provenance into ``<output_dir>/manifest.json``.

    Args:
        output_dir: folder of the run; created if missing.
        stage: name of the notebook stage (e.g. ``"03_sft"``); its entry is replaced,
            entries of other stages are kept.
        seed: the seed the stage used.
        config: the stage's parameters (JSON-able; paths are made portable).
        data_files: files the stage read; each is stored with sha256 and size,
            relative to *data_dir* (or the project root).
        effective_batch: per-device batch x grad-accumulation x devices, if training.
        extra: free-form additional facts (metrics summary, model info...).
        started_at: timezone-aware start time of the stage, to record its duration.
        data_dir: the data folder; defaults to ``$RADIMPRESS_DATA``.
        repo_dir: git work tree to describe; defaults to the project root.

    Returns:
        Path of the written manifest.

    Raises:
        ManifestError: an existing manifest is unreadable (it is left untouched).
        FileNotFoundError: a listed data file does not exist.
        TypeError: *config*/*extra* hold a value that cannot be written as JSON.
    """
    if not stage or not isinstance(stage, str):
        raise ValueError(f"stage must be a non-empty string, got {stage!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if effective_batch is not None and (
        isinstance(effective_batch, bool) or not isinstance(effective_batch, int) or effective_batch < 1
    ):
        raise ValueError(f"effective_batch must be a positive int or None, got {effective_batch!r}")

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_root = _data_root(data_dir)
    proj_root = project_root()
    finished = _utc_now()

    stage_entry: dict[str, Any] = {
        "seed": seed,
        "config": _jsonable(dict(config), data_root, proj_root, "config"),
        "effective_batch": effective_batch,
        "started_utc": _iso(started_at) if started_at is not None else None,
        "finished_utc": _iso(finished),
        "elapsed_seconds": (
            round((finished - started_at).total_seconds(), 3) if started_at is not None else None
        ),
        "git": git_info(repo_dir),
        "data_files": _data_file_entries(data_files, data_root, proj_root),
        "extra": _jsonable(dict(extra or {}), data_root, proj_root, "extra"),
    }
    torch_env = torch_info()
    stage_entry["torch_device"] = (
        f"cuda: {torch_env['cuda_device_name']}" if torch_env["cuda_available"] else "cpu"
    )

    path = out / MANIFEST_NAME
    with FileLock(str(out / f".{MANIFEST_NAME}.lock"), timeout=120):
        manifest = read_manifest(out)
        manifest["schema_version"] = MANIFEST_SCHEMA_VERSION
        manifest.setdefault("created_utc", _iso(finished))
        manifest["updated_utc"] = _iso(finished)
        manifest["git"] = stage_entry["git"]
        manifest["environment"] = {
            "python": sys.version.split()[0],
            "python_implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "cpu": cpu_info(),
            "torch": torch_env,
        }
        manifest["packages"] = package_versions()
        manifest["seed"] = seed
        manifest["last_stage"] = stage
        stages = manifest.setdefault("stages", {})
        stages[stage] = stage_entry
        manifest["stages"] = dict(sorted(stages.items()))
        manifest["data_files"] = _merge_data_files(manifest["stages"])
        write_json(path, manifest)
    return path
