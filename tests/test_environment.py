"""The two ways to install the course name the same packages."""

import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {r: _name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted.update({r: _name(r) for r in extra})

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_pip = [r for r in pip_section if not r.startswith("-e")]

    assert sorted(conda_pip) == sorted(wanted), (
        "environment.yml and pyproject.toml disagree; "
        f"only in environment.yml: {sorted(set(conda_pip) - set(wanted))}, "
        f"only in pyproject.toml: {sorted(set(wanted) - set(conda_pip))}"
    )
    assert any(r.startswith("-e .") for r in pip_section), "environment.yml must install course_lib itself"


def test_python_versions_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    minor = python.split("=")[1]
    assert minor in {"3.10", "3.11", "3.12"}
    assert project["requires-python"] == ">=3.10,<3.13"


def test_makefile_torch_pin_is_a_variable():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^TORCH \?= torch==", makefile, re.M), "the torch pin must be overridable: TORCH ?= ..."
    assert "$(TORCH)" in makefile
