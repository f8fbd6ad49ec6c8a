"""One source of defaults: typed stage configs; params files hold only what differs; notebooks choose the run."""

from __future__ import annotations

import ast

import nbformat
import papermill as pm
import pytest
import yaml

from radimpress_lib.core import config
from radimpress_lib.core.paths import PARAMS_DIR
from radimpress_lib.notebook.runner import numbered_notebooks

PARAM_FILES = sorted(PARAMS_DIR.glob("*.yaml"))
NOTEBOOKS = numbered_notebooks()
REQUIRED_MODELS = {"smollm2-135m", "llama-3b", "llama-7b", "mistral-7b", "ci-tiny"}


def test_required_params_files_exist():
    assert REQUIRED_MODELS <= {p.stem for p in PARAM_FILES}


def test_there_are_notebooks():
    assert NOTEBOOKS, "no numbered notebooks found"
    assert NOTEBOOKS[0].name == "01_explore.ipynb"


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: p.stem)
def test_params_files_validate_and_name_the_run(path):
    params = config.load_params(path.stem)
    assert params.run.name == path.stem
    assert params.run.output_dir == f"outputs/{path.stem}"
    assert config.load_params(path) == params  # a path works as well as a name


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: p.stem)
def test_params_files_hold_only_what_differs(path):
    """Every value a params file sets differs from what the run would have without it (defaults / inherited)."""
    raw = yaml.safe_load(path.read_text()) or {}
    parent = raw.pop("inherit", None)
    base = config.load_params(parent).to_dict() if parent else config.defaults(path.stem)
    for stage, values in raw.items():
        assert stage in config.STAGES, f"{path.name}: unknown stage {stage}"
        got = config.from_mapping({"run": {"name": "x"}, stage: values}).to_dict()[stage]
        for key, value in values.items():
            assert got[key] != base[stage][key], f"{path.name}: {stage}.{key} = {value!r} is already the default; drop it"


def test_default_model_params_are_the_defaults():
    """The typed configs' defaults are the default model's settings, so its params file is a few lines."""
    path = config.params_path("smollm2-135m")
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) <= 5
    assert config.load_params("smollm2-135m").to_dict() | {"run": {}} == config.defaults("smollm2-135m") | {"run": {}}


def test_inherit_starts_from_the_other_file():
    seven = config.load_params("llama-7b")
    three = config.load_params("llama-3b")
    assert seven.model.name == "llama-7b" and three.model.name == "llama-3b"
    assert seven.to_dict() | {"run": {}, "model": {}} == three.to_dict() | {"run": {}, "model": {}}


def test_inherit_cycles_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "PARAMS_DIR", tmp_path)
    (tmp_path / "a.yaml").write_text("inherit: b\n")
    (tmp_path / "b.yaml").write_text("inherit: a\n")
    with pytest.raises(config.ParamsError, match="inherit"):
        config.load_params("a")


def test_unknown_stage_and_keys_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft: {learning_rat: 1.0e-4}\nsfft: {max_steps: 2}\n")
    with pytest.raises(config.ParamsError) as err:
        config.load_params(bad)
    message = str(err.value)
    assert "bad.yaml" in message and "sft.learning_rat" in message and "'sfft'" in message


def test_type_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {max_chars: many, source: ftp}\n")
    with pytest.raises(config.ParamsError) as err:
        config.load_params(bad)
    assert "data.max_chars" in str(err.value) and "data.source" in str(err.value) and "bad.yaml" in str(err.value)


def test_broken_yaml_names_the_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("sft: {learning_rate: 1e-4\nmodel: [\n")
    with pytest.raises(config.ParamsError, match=r"broken\.yaml: not valid YAML \(line"):
        config.load_params(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(config.ParamsError, match="broken.yaml: expected a mapping"):
        config.load_params(bad)


def test_missing_params_file_lists_available():
    with pytest.raises(config.ParamsError, match="smollm2-135m"):
        config.load_params("no-such-model")


def test_overrides_apply_validate_and_are_recorded():
    params = config.load_params("ci-tiny", {"sft": {"max_steps": 3}, "run": {"seed": 7}})
    assert params.sft.max_steps == 3 and params.run.seed == 7 and params.sft.learning_rate == 1e-3
    assert params.provenance == {"params": "ci-tiny", "overrides": {"sft": {"max_steps": 3}, "run": {"seed": 7}}}
    with pytest.raises(config.ParamsError, match=r"overrides: unknown key sft\.max_step"):
        config.load_params("ci-tiny", {"sft": {"max_step": 3}})
    with pytest.raises(config.ParamsError, match="unknown stage"):
        config.load_params("ci-tiny", {"sft_max_steps": 3})


def test_params_hash_tracks_values():
    a = config.load_params("ci-tiny")
    b = a.override({"run": {"seed": 7}})
    assert a.params_hash("model") == b.params_hash("model")
    assert a.params_hash() != b.params_hash()
    assert config.from_mapping(a.to_dict()).to_dict() == a.to_dict()


def _parameters_cell(notebook):
    cells = [c for c in nbformat.read(notebook, as_version=4).cells
             if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    return cells[0].source


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_only_chooses_the_run(notebook):
    """papermill's parameters: the params name and an overrides mapping, in at most 10 lines."""
    source = _parameters_cell(notebook)
    assert len(source.splitlines()) <= 10
    assert set(pm.inspect_notebook(str(notebook))) == {"params", "overrides"}
    values = {stmt.targets[0].id: ast.literal_eval(stmt.value) for stmt in ast.parse(source).body}
    assert values["params"] == "smollm2-135m" and values["overrides"] == {}
    config.load_params(values["params"], values["overrides"])
