"""Project-relative locations (never hard-coded absolute paths)."""

from __future__ import annotations

import os
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


def shared_data_dir(root: Path | None = None) -> Path:
    """The data folder beside the checkout ``root`` (``../shared/data``), found without ``$RADIMPRESS_DATA``
    (:func:`radimpress_lib.data.locate.resolve_data_dir`)."""
    return (root if root is not None else PROJECT_ROOT).parent / "shared" / "data"


def _roots(data_root: str | os.PathLike[str] | None) -> list[tuple[str, str]]:
    roots: list[tuple[str, str]] = []
    shared = shared_data_dir()
    for folder in (data_root, os.environ.get("RADIMPRESS_DATA") or None, shared if shared.is_dir() else None):
        if folder:
            resolved = str(Path(folder).expanduser().resolve())
            roots += [(resolved + os.sep, "$RADIMPRESS_DATA/"), (resolved, "$RADIMPRESS_DATA")]
    root = str(PROJECT_ROOT)
    roots += [(root + os.sep, ""), (root, ".")]
    home = str(Path.home())
    if home not in ("/", ""):
        roots += [(home + os.sep, "~/")]
    return roots


def portable_text(text: str, data_root: str | os.PathLike[str] | None = None) -> str:
    """``text`` without absolute machine paths: the data folder (``data_root``, ``$RADIMPRESS_DATA`` or the
    ``../shared/data`` folder found beside the checkout) becomes ``$RADIMPRESS_DATA``, the checkout
    becomes relative (``outputs/...``), the home folder ``~``. Used on every result file and rendered output."""
    for prefix, label in _roots(data_root):
        text = text.replace(prefix, label)
    return text


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as shown to a user or written to a result file (see :func:`portable_text`)."""
    return portable_text(str(Path(path).expanduser().resolve()))
