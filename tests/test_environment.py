"""environment.yml (the conda entry point) lists every runtime dependency of pyproject.toml with
the same version constraint, so the two install routes cannot drift apart (issue 16)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
# pyproject (PyPI) name -> conda-forge name, where they differ
CONDA_NAME = {"torch": "pytorch", "matplotlib": "matplotlib-base", "lmdb": "python-lmdb"}
SPEC = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(.*?)\s*$")


def _split(req: str) -> tuple[str, str]:
    """'torch==2.14.1' -> ('torch', '==2.14.1'); conda's single '=' pin is read as '=='."""
    name, spec = SPEC.match(req.split("#")[0]).groups()
    spec = spec.replace(" ", "")
    return name.lower(), ("=" + spec if re.match(r"^=[^=]", spec) else spec)


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _environment() -> tuple[dict[str, str], dict[str, str], list[str]]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda, pip = {}, {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip.update(_split(d) for d in dep["pip"])
        else:
            conda.update([_split(dep)])
    return conda, pip, env["channels"]


def test_environment_lists_every_runtime_dependency_with_the_same_pin():
    conda, pip, _ = _environment()
    missing, differ = [], []
    for req in _pyproject()["dependencies"]:
        name, spec = _split(req)
        cname = CONDA_NAME.get(name, name)
        got = conda.get(cname, pip.get(name))
        if got is None:
            missing.append(name)
        elif got != spec:
            differ.append(f"{name}: pyproject {spec!r}, environment.yml {got!r}")
    assert not missing, f"environment.yml lacks {missing}"
    assert not differ, differ


def test_environment_uses_conda_forge_and_pytorch_channels_and_the_cluster_extra():
    conda, pip, channels = _environment()
    assert channels[:2] == ["conda-forge", "pytorch"]
    assert conda["python"] == ">=" + _pyproject()["requires-python"].lstrip(">=")
    for req in _pyproject()["optional-dependencies"]["cluster"]:
        name, spec = _split(req)
        assert pip.get(name) == spec, name
