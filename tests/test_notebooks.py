"""Notebook hygiene (stored stripped, one literal parameters cell, no logic) and a papermill run on ci-tiny."""

from __future__ import annotations

import ast
import csv
import json

import nbformat
import pytest

from radimpress_lib import runner
from radimpress_lib.paths import NOTEBOOKS_DIR

NOTEBOOKS = runner.numbered_notebooks()
ALL_NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))


def _code_cells(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs(path):
    for cell in _code_cells(path):
        assert cell.outputs == [], f"{path.name}: strip outputs before committing"
        assert cell.execution_count is None, f"{path.name}: execution counts left in"


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.stem)
def test_exactly_one_parameters_cell_of_literals(path):
    cells = [c for c in _code_cells(path) if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    tree = ast.parse(cells[0].source)
    for stmt in tree.body:
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name), (
            f"{path.name}: parameters cell holds only `name = literal` lines, got {ast.unparse(stmt)!r}")
        ast.literal_eval(stmt.value)  # raises on anything but a literal


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.stem)
def test_no_logic_or_installs_in_notebooks(path):
    for cell in _code_cells(path):
        lines = cell.source.splitlines()
        assert not any(l.lstrip().startswith(("!pip", "%pip", "!conda", "%conda")) for l in lines), path.name
        tree = ast.parse("\n".join(l for l in lines if not l.lstrip().startswith(("%", "!"))))
        defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        assert not defs, f"{path.name}: move {[d.name for d in defs]} into radimpress_lib"


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_uses_the_project_kernel(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == runner.KERNEL_NAME


@pytest.mark.notebook
def test_chain_runs_on_ci_tiny(tmp_path):
    """Every numbered notebook executes under papermill with params/ci-tiny.yaml."""
    out = tmp_path / "ci-tiny"
    timings = runner.run("ci-tiny", output_dir=out)
    assert set(timings) == {nb.stem for nb in NOTEBOOKS}
    for nb in NOTEBOOKS:
        assert (out / nb.name).is_file() and (out / nb.with_suffix(".html").name).is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 42
    assert {"explore", "sft", "evaluate"} <= set(manifest["stages"])
    assert any(f["name"].endswith("train.jsonl") and len(f["sha256"]) == 64 for f in manifest["data_files"])
    explore = json.loads((out / "explore.json").read_text())
    assert explore["split_sizes"]["train"] == 48 and explore["split_sizes"]["test"] == 16
    assert explore["load"]["rows_read"] == explore["load"]["kept"] + sum(explore["load"]["skipped"].values())
    figures = {p.stem for p in (out / "figures").iterdir()}
    assert {"token_lengths", "indication_categories", "mesh_terms", "impression_templates"} <= figures
    assert json.loads((out / "timings.json").read_text()).keys() == timings.keys()
    metrics = json.loads((out / "metrics.json").read_text())
    for system in ("sft_graph_text", "sft_graph_gnn"):  # notebook 09, the entity-graph ablation
        assert {"rougeL", "rougeL_ci", "graph_f1", "graph_f1_ci", "negation_flip_rate", "hallucinated_finding_rate",
                "omitted_finding_rate"} <= set(metrics[system])
    # notebook 05's factual guard: guarded systems scored beside the raw ones, with the labeler's flip rate
    guard_rows = {r["system"]: r for r in csv.DictReader((out / "factual_guard.csv").open())}
    assert {"sft_guarded", "fine_dpo_guarded", "fine_rl_guarded"} <= set(guard_rows)
    for name, row in guard_rows.items():
        assert int(row["n_fixed"]) + int(row["n_unresolved"]) == int(row["n_flagged"]) <= 16
        assert {"rougeL", "negation_flip_rate", "negation_flip_rate_labeler"} <= set(metrics[name])
        assert "negation_flip_rate_labeler" in metrics[name.removesuffix("_guarded")]
    ablation = json.loads((out / "graph_ablation.json").read_text())
    assert [r["system"] for r in ablation["table"]] == ["sft", "sft_graph_text", "sft_graph_gnn"]
    assert all(ablation["train"][s]["wall_time_s"] > 0 for s in ("sft", "sft_graph_text", "sft_graph_gnn"))
