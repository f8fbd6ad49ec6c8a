"""Params files <-> typed configs <-> notebook parameters stay in 1:1 correspondence."""

from __future__ import annotations

import papermill as pm
import pytest
import yaml

from radimpress_lib import config
from radimpress_lib.paths import PARAMS_DIR
from radimpress_lib.runner import numbered_notebooks

PARAM_FILES = sorted(PARAMS_DIR.glob("*.yaml"))
NOTEBOOKS = numbered_notebooks()
REQUIRED_MODELS = {"smollm2-135m", "llama-3b", "llama-7b", "mistral-7b", "ci-tiny"}


def test_required_params_files_exist():
    assert REQUIRED_MODELS <= {p.stem for p in PARAM_FILES}


def test_there_are_notebooks():
    assert NOTEBOOKS, "no numbered notebooks found"
    assert NOTEBOOKS[0].name == "01_explore.ipynb"


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: p.stem)
def test_yaml_keys_are_the_declared_config_fields(path):
    keys = set(yaml.safe_load(path.read_text()))
    assert keys == set(config.param_names())
    params = config.load_params(path)  # types validate
    assert params.run.run_name == path.stem
    assert params.run.run_output_dir == f"outputs/{path.stem}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: p.stem)
def test_yaml_keys_are_notebook_parameters(notebook, path):
    declared = set(pm.inspect_notebook(str(notebook)))
    keys = set(yaml.safe_load(path.read_text()))
    assert keys - declared == set(), f"{path.name} keys not declared in {notebook.name}"
    assert declared - keys == set(), f"{notebook.name} parameters missing from {path.name}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_defaults_validate(notebook):
    defaults = {name: eval(spec["default"]) for name, spec in pm.inspect_notebook(str(notebook)).items()}  # literals only (test_notebooks)
    config.from_mapping(defaults, source=notebook.name)


def test_unknown_and_missing_keys_are_named(tmp_path):
    values = yaml.safe_load(config.params_path("ci-tiny").read_text())
    values["sft_learning_rat"] = 1e-4
    del values["data_source"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(values))
    with pytest.raises(config.ParamsError) as err:
        config.load_params(bad)
    assert "sft_learning_rat" in str(err.value) and "data_source" in str(err.value)
    assert "bad.yaml" in str(err.value)


def test_type_errors_name_the_key(tmp_path):
    values = yaml.safe_load(config.params_path("ci-tiny").read_text())
    values["data_max_chars"] = "many"
    values["data_source"] = "ftp"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(values))
    with pytest.raises(config.ParamsError) as err:
        config.load_params(bad)
    assert "data_max_chars" in str(err.value) and "data_source" in str(err.value)


def test_missing_params_file_lists_available():
    with pytest.raises(config.ParamsError, match="smollm2-135m"):
        config.load_params(config.params_path("no-such-model"))


def test_params_hash_tracks_values():
    a = config.load_params(config.params_path("ci-tiny"))
    b = config.from_mapping(a.flat() | {"run_seed": 7})
    assert a.params_hash("model") == b.params_hash("model")
    assert a.params_hash() != b.params_hash()
    assert a.flat() == config.from_mapping(a.flat()).flat()
