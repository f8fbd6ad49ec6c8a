"""Project-relative locations (never hard-coded absolute paths)."""

from __future__ import annotations

from pathlib import Path


def _find_root(start: Path) -> Path:
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "radimpress_lib").is_dir():
            return folder
    # Installed as a wheel: fall back to the current folder.
    return Path.cwd()


#: The checkout root (folder holding pyproject.toml and radimpress_lib/).
PROJECT_ROOT: Path = _find_root(Path(__file__).resolve().parent)
NOTEBOOKS_DIR: Path = PROJECT_ROOT / "notebooks"
PARAMS_DIR: Path = PROJECT_ROOT / "params"
OUTPUTS_DIR: Path = PROJECT_ROOT / "outputs"
