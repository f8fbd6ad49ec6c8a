"""Regenerate the parameters cell of every numbered notebook from params/smollm2-135m.yaml.

Notebooks are edited in JupyterLab; this keeps their single `parameters` cell in step
with radimpress_lib/config.py after a parameter is added (run: python tools/build_notebooks.py).
Outputs and execution counts are stripped on the way.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from radimpress_lib import config  # noqa: E402
from radimpress_lib.runner import numbered_notebooks  # noqa: E402


def parameters_source() -> str:
    values = yaml.safe_load(config.params_path("smollm2-135m").read_text())
    lines = ["# Parameters: papermill injects params/<model>.yaml after this cell. Defaults = smollm2-135m."]
    for stage, cls in config.STAGES.items():
        lines.append(f"# --- {stage}")
        lines.extend(f"{name} = {values[name]!r}" for name in cls.model_fields)
    return "\n".join(lines)


def sync(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            if "parameters" in cell.metadata.get("tags", []):
                cell.source = parameters_source()
    nbformat.write(nb, path)


if __name__ == "__main__":
    for nb_path in numbered_notebooks():
        sync(nb_path)
        print("synced", nb_path.relative_to(ROOT))
