"""Runner helpers: notebook selection and widget-state stripping before rendering."""

from __future__ import annotations

import nbformat
import pytest

from radimpress_lib import runner


def test_render_html_strips_widget_state(tmp_path) -> None:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("w")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        "text/plain": "IntSlider(value=3)", runner.WIDGET_VIEW_MIME: {"model_id": "abc", "version_major": 2}})]
    nb.cells = [cell, nbformat.v4.new_code_cell("1")]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"abc": {"x": "y" * 10_000}}}}
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    html = runner.render_html(path)
    saved = nbformat.read(path, as_version=4)
    assert "widgets" not in saved.metadata
    assert saved.cells[0].outputs[0]["data"] == {"text/plain": "IntSlider(value=3)"}
    assert "IntSlider(value=3)" in html.read_text() and "y" * 10_000 not in html.read_text()


def test_select_notebooks(tmp_path) -> None:
    paths = [tmp_path / "01_explore.ipynb", tmp_path / "02_sft.ipynb"]
    assert runner.select_notebooks(paths, ["02"]) == paths[1:]
    assert runner.select_notebooks(paths, None) == paths
    with pytest.raises(SystemExit, match="unknown notebooks"):
        runner.select_notebooks(paths, ["09"])
