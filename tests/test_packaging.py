"""What the repository declares about installing and running it: the Python it needs, and which file
pins what (pyproject: the engine as a library, in ranges; requirements.txt: the Space's tested set)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _requirements() -> dict[str, str]:
    """requirements.txt's packages (lower-case, without extras) -> their specifier."""
    found = {}
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, spec = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*(.*)", line).groups()
            found[name.lower().replace("_", "-")] = spec
    return found


def test_the_spacefile_runs_the_python_the_project_requires():
    """The Spacefile ran python3.9 while pyproject requires 3.11 or newer."""
    required = re.fullmatch(r">=\s*3\.(\d+)", _pyproject()["project"]["requires-python"]).group(1)
    micro = yaml.safe_load((ROOT / "Spacefile").read_text(encoding="utf-8"))["micros"][0]
    engine = micro["engine"]
    if engine.startswith("python"):
        assert int(engine.removeprefix("python3.")) >= int(required), engine
    else:  # a custom engine: its build makes an environment of a Python the project accepts, and runs that
        versions = [int(v) for v in re.findall(r"--python 3\.(\d+)", " ".join(micro["commands"]))]
        assert versions and all(v >= int(required) for v in versions), micro["commands"]
        assert micro["run"].startswith(".venv/bin/python ") and ".venv" in micro["include"]


def test_pyproject_gives_ranges_and_requirements_pin_the_tested_set():
    """pyproject repeated requirements.txt pin by pin (torch exactly, for a library)."""
    pinned = _requirements()
    for dependency in _pyproject()["project"]["dependencies"]:
        name, spec = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*(.*)", dependency).groups()
        assert "==" not in spec, dependency
        assert name.lower().replace("_", "-") in pinned, f"{name} is not in requirements.txt"
    assert pinned["torch"].startswith("==") and pinned["torchvision"].startswith("==")
