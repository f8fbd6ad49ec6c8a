"""Runner helpers: notebook selection and widget-state stripping before rendering."""

from __future__ import annotations

import nbformat
import pytest

from radimpress_lib.notebook import runner


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


def test_html_hides_parameters_and_opens_on_the_summary(tmp_path) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('params = "smollm2-135m"\noverrides = {}')
    params.metadata["tags"] = ["parameters"]
    injected = nbformat.v4.new_code_cell('params = "ci-tiny"')
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# 05 · Evaluate"), params, injected, nbformat.v4.new_code_cell("x = 41")]
    path = tmp_path / "05_evaluate.ipynb"
    nbformat.write(nb, path)
    record = {"commit": "0123456789abcdef", "dirty": False, "status": "ok", "seconds": 12.3,
              "finished_utc": "2026-12-04T18:00:00+00:00"}
    entry = {"extra": {"params_file": "ci-tiny", "overrides": {"sft": {"max_steps": 2}},
                       "summary": {"ROUGE-L sft": 58.91}, "guards_failed": ["rl: length ratio 0.45 outside [0.5, 2.0]"]}}
    html = runner.render_html(path, summary=runner.summary_markdown("05_evaluate", record, entry),
                              banner="**Mixed run**: test").read_text()
    assert "overrides" not in html.replace("with overrides", "") and "smollm2-135m" not in html  # parameters hidden
    assert html.index("Mixed run") < html.index("ROUGE-L sft") < html.index('<span class="mi">41</span>')
    assert "0123456789" in html and "Guard failed" in html and "58.9" in html
    kept = nbformat.read(path, as_version=4)
    assert [c.metadata.get("tags") for c in kept.cells if c.cell_type == "code"][:2] == [["parameters"],
                                                                                          ["injected-parameters"]]


def test_one_commit_per_output_folder() -> None:
    head = {"sha": "b" * 40, "dirty": False}
    log = {"01_explore": {"commit": "a" * 40}, "02_sft": {"commit": "b" * 40}}
    runner.check_one_commit(log, ["01_explore", "02_sft"], head)  # re-running everything is fine
    with pytest.raises(runner.MixedCommitsError, match="01_explore"):
        runner.check_one_commit(log, ["02_sft"], head)
    assert runner.commits_banner({"01_explore": {"commit": "b" * 40}, "02_sft": {"commit": "b" * 40}}) is None
    banner = runner.commits_banner(log)
    assert "Mixed run" in banner and "aaaaaaaaaa" in banner and "bbbbbbbbbb" in banner


def test_outputs_lose_machine_paths(tmp_path, monkeypatch) -> None:
    from radimpress_lib.core.paths import PROJECT_ROOT

    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("RADIMPRESS_DATA", str(data))
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(1)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout",
                                           text=f"wrote {PROJECT_ROOT}/outputs/x.json from {data}/openi/r.csv\n")]
    nb.cells = [cell]
    nb.metadata["papermill"] = {"input_path": str(PROJECT_ROOT / "notebooks" / "x.ipynb")}
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    html = runner.render_html(path).read_text()
    text = path.read_text()
    for out in (html, text):
        assert str(PROJECT_ROOT) not in out and str(data) not in out
    assert "wrote outputs/x.json from $RADIMPRESS_DATA/openi/r.csv" in text


def test_resumed_trainings_are_found_in_json_written_since_the_notebook_started(tmp_path) -> None:
    import json
    import os

    from radimpress_lib.notebook.runner import resumed_trainings

    old = tmp_path / "sft" / "sft_result.json"
    old.parent.mkdir()
    old.write_text(json.dumps({"resumed_from": "outputs/x/sft/checkpoints/checkpoint-30"}))
    os.utime(old, (1_000, 1_000))  # written by an earlier notebook
    fresh = tmp_path / "graph_ablation.json"
    fresh.write_text(json.dumps({"train": {"sft_graph_none": {"resumed_from": "checkpoint-30", "wall_time_s": 6.4},
                                           "sft_graph_gnn": {"resumed_from": None}}, "list": [{"resumed_from": ""}]}))
    (tmp_path / "broken.json").write_text("{not json")
    found = resumed_trainings(tmp_path, since=2_000)
    assert found == {"graph_ablation.json:train.sft_graph_none": "checkpoint-30"}
    assert resumed_trainings(tmp_path, since=0) == found | {"sft/sft_result.json:.": "outputs/x/sft/checkpoints/checkpoint-30"}
