"""Where the data folder is: parameter, ``$RADIMPRESS_DATA``, ``../shared/data``, ``data/``."""

from __future__ import annotations

import os
from pathlib import Path

from radimpress_lib.core.paths import PROJECT_ROOT, shared_data_dir
from radimpress_lib.core.schema import SPLITS
from radimpress_lib.data.download import OPENI_ARCHIVE_NAME

#: Environment variable naming the data folder.
ENV_DATA_DIR = "RADIMPRESS_DATA"


OPENI_CSV_NAME = "indiana_reports.csv"


OPENI_XML_DIR_NAME = "ecgen-radiology"


BENCHMARK_DIR_NAME = "opi-benchmark"


class DataNotFoundError(FileNotFoundError):
    """No data folder could be found; the message says how to provide one."""


def default_download_dir() -> Path:
    """``<project root>/data``, where :func:`download_openi` puts the data by default."""
    return PROJECT_ROOT / "data"


def _how_to_fix() -> str:
    return (
        f"Fix: pass data_dir=..., or set {ENV_DATA_DIR}=/path/to/data, or run "
        f"`make data` (= python -m radimpress_lib.data download) to download the public data into "
        f"{default_download_dir()}."
    )


def _as_existing_dir(value: str | os.PathLike[str], origin: str) -> Path:
    path = Path(value).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, PROJECT_ROOT / path]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise DataNotFoundError(f"data folder from {origin} does not exist (tried {tried}). {_how_to_fix()}")


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Find the data folder.

    Precedence: ``data_dir`` when given; else ``$RADIMPRESS_DATA`` when set and non-empty;
    else ``<project root>/../shared/data`` when it exists; else ``<project root>/data``
    (the download folder). A relative ``data_dir`` / variable is looked up from the
    current folder, then from the project root. The project root is the checkout folder
    holding ``pyproject.toml`` (:data:`radimpress_lib.core.paths.PROJECT_ROOT`).

    Raises:
        DataNotFoundError: the chosen folder does not exist (message says how to fix it).
    """
    if data_dir is not None and str(data_dir) != "":
        return _as_existing_dir(data_dir, "the data_dir parameter")
    env = os.environ.get(ENV_DATA_DIR, "").strip()
    if env:
        return _as_existing_dir(env, f"${ENV_DATA_DIR}")
    shared = shared_data_dir(PROJECT_ROOT)
    if shared.is_dir():
        return shared.resolve()
    local = default_download_dir()
    if local.is_dir():
        return local.resolve()
    raise DataNotFoundError(
        f"no data folder found: no data_dir parameter, ${ENV_DATA_DIR} unset, neither {shared} nor {local} exists. "
        + _how_to_fix()
    )


def _has_data(root: Path) -> bool:
    """Whether ``root`` holds the benchmark split and some Open-i reports."""
    bench = root / BENCHMARK_DIR_NAME
    has_bench = all((bench / f"{s}.jsonl").is_file() for s in SPLITS)
    openi = root / "openi"
    has_reports = any(
        p.exists() for p in (openi / OPENI_CSV_NAME, openi / OPENI_ARCHIVE_NAME, openi / OPENI_XML_DIR_NAME)
    )
    return has_bench and has_reports


def _openi_paths(root: Path) -> dict[str, Path]:
    openi = root / "openi"
    out: dict[str, Path] = {}
    if (openi / OPENI_CSV_NAME).is_file():
        out["csv"] = openi / OPENI_CSV_NAME
    if (openi / OPENI_ARCHIVE_NAME).is_file():
        out["xml"] = openi / OPENI_ARCHIVE_NAME
    elif (openi / OPENI_XML_DIR_NAME).is_dir():
        out["xml"] = openi / OPENI_XML_DIR_NAME
    return out


def _bench_paths(root: Path) -> list[Path] | None:
    paths = [root / BENCHMARK_DIR_NAME / f"{s}.jsonl" for s in SPLITS]
    return paths if all(p.is_file() for p in paths) else None


def _find_existing_data() -> Path | None:
    try:
        root = resolve_data_dir(None)
    except DataNotFoundError:
        return None
    return root if _has_data(root) else None
