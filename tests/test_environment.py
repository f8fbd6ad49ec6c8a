"""environment.yml (conda) and pyproject.toml (pip) declare the same dependencies."""

from __future__ import annotations

import tomllib

import yaml
from packaging.requirements import Requirement

from radimpress_lib.core.paths import PROJECT_ROOT


def _norm(spec: str) -> tuple[str, str]:
    req = Requirement(spec)
    return req.name.lower().replace("_", "-"), str(req.specifier)


def _pyproject() -> dict:
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())


def _conda_pip() -> list[str]:
    env = yaml.safe_load((PROJECT_ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip section"
    return pip_sections[0]


def test_environment_matches_pyproject():
    project = _pyproject()["project"]
    expected = {_norm(s) for s in project["dependencies"] + project["optional-dependencies"]["dev"]}
    conda = [s for s in _conda_pip() if not s.startswith("-e")]
    assert len(conda) == len(set(conda)), "duplicate entries in environment.yml"
    assert {_norm(s) for s in conda} == expected


def test_environment_installs_the_package_and_python_311():
    env = yaml.safe_load((PROJECT_ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    assert "-e ." in _conda_pip()


def test_gpu_extra_holds_unsloth_only_there():
    project = _pyproject()["project"]
    assert any(_norm(s)[0] == "unsloth" for s in project["optional-dependencies"]["gpu"])
    assert not any(_norm(s)[0] == "unsloth" for s in project["dependencies"])
