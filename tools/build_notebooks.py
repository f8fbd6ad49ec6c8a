"""Regenerate the parameters cell of every numbered notebook and strip outputs.

Notebooks are edited in JupyterLab; the parameters cell only chooses the run (the params file
name and an overrides mapping), so every notebook carries the same two lines
(:data:`radimpress_lib.notebook.runner.PARAMETERS_CELL`). Run: python tools/build_notebooks.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from radimpress_lib.notebook.runner import PARAMETERS_CELL, numbered_notebooks  # noqa: E402


def sync(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            if "parameters" in cell.metadata.get("tags", []):
                cell.source = PARAMETERS_CELL
    nbformat.write(nb, path)


if __name__ == "__main__":
    for nb_path in numbered_notebooks():
        sync(nb_path)
        print("synced", nb_path.relative_to(ROOT))
