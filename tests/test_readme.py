"""Every command of the README's quickstart on the tiny checkpoints runs as printed: the page starts and
loads its models, and explain, calibrate and evaluate exit 0 and write what the README says. (The install
commands are not run: they need the network; CI's `.ci/run` installs the same requirements.)

The commands run in a folder that holds the clone's files as links, so `out/` lands there; the only
substitution is the interpreter (`.venv/bin/python`, the README's virtual environment, becomes this
test's).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app_server import free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def quickstart_commands() -> list[list[str]]:
    """The commands of the README's tiny-checkpoint block, one argument list each."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```bash\n(.*?)```", section, re.S)[1]
    joined = block.replace("\\\n", " ")
    commands = [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [shlex.split(command) for command in commands]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("readme")
    for name in ("app.py", "assets", "explorer", "surgery", "tests"):
        (folder / name).symlink_to(ROOT / name)
    return folder


def _interpreter(command: list[str]) -> list[str]:
    assert command[0] == ".venv/bin/python", command
    return [sys.executable, *command[1:]]


def test_the_quickstart_has_the_page_and_the_three_commands():
    commands = quickstart_commands()
    assert [c[1] for c in commands] == ["app.py", "-m", "-m", "-m"]
    assert [c[3] for c in commands[1:]] == ["explain", "calibrate", "evaluate"]
    assert all("tests/data/parity/weights.safetensors" in c for c in commands)


@pytest.mark.parametrize("index, command", [(1, "explain"), (2, "calibrate"), (3, "evaluate")])
def test_each_command_runs_as_printed(clone, index, command):
    args = quickstart_commands()[index]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    done = subprocess.run(_interpreter(args), cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = clone / "out" / command
    if command == "explain":
        for stem in ("rocket", "chelsea"):
            result = json.loads((out / stem / "result.json").read_text())
            assert [entry["label"] for entry in result["labels"]] == ["rocket", "cat", "cat+grass"]
            assert (out / stem / "maps.npz").is_file()
    elif command == "calibrate":
        assert json.loads((out / "summary.json").read_text())["explained"] == len(list((ROOT / "assets").glob("*.jpg")))
        assert (out / "report.html").is_file()
    else:
        metrics = json.loads((out / "metrics.json").read_text())
        assert set(metrics["methods"]) == {"clip", "surgery", "sclip", "naclip"} and metrics["images"] == 2
        assert (out / "report.html").is_file()


def test_the_page_command_starts_and_loads_its_models(clone, tmp_path):
    args = quickstart_commands()[0]
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_SERVER_PORT": str(port), "PYTHONUNBUFFERED": "1",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    log = tmp_path / "app.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(_interpreter(args), cwd=clone, env=env, stdout=handle, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while "loaded and ready" not in log.read_text(errors="replace"):
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.5)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
                assert response.status == 200
        finally:
            process.terminate()
            process.wait(timeout=30)
