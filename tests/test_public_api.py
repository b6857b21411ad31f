"""The engine as notebooks and scripts see it: the README's example, `help(surgery)`, the layering
rules, and `pip install .` giving the package and the `clip-surgery` command."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
TINY_CLIP = DATA / "parity" / "weights.safetensors"
TINY_SAM = DATA / "sam_tiny.safetensors"


def readme_notebook_example() -> str:
    """The Python example of docs/api.md ("From Python"), which the README links to."""
    readme = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    section = readme.split("## From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_notebook_example_runs_on_the_tiny_checkpoints(tmp_path):
    """The example as printed, with the two hub names swapped for the README's own local-file forms
    (weights are never downloaded here)."""
    code = readme_notebook_example()
    assert 'surgery.load_clip("ViT-B/16")' in code and 'surgery.load_segmenter("vit_b")' in code
    code = code.replace('surgery.load_clip("ViT-B/16")', f'surgery.load_clip(checkpoint=r"{TINY_CLIP}")')
    code = code.replace('surgery.load_segmenter("vit_b")', f'surgery.load_segmenter(checkpoint=r"{TINY_SAM}")')
    code = code.replace('"assets/rocket.jpg"', f'r"{ROOT / "assets" / "rocket.jpg"}"')  # run outside the clone
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CLIP_SURGERY_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    assert [line.split()[0] for line in printed] == ["rocket", "smoke", "cat+grass"]
    result = json.loads((tmp_path / "out" / "rocket" / "result.json").read_text())
    assert result["threshold"] == 0.1 and result["sam_model"] == TINY_SAM.name
    assert [entry["label"] for entry in result["labels"]] == ["rocket", "smoke", "cat+grass"]
    with np.load(tmp_path / "out" / "rocket" / "maps.npz") as maps:
        assert maps["surgery"].shape[0] == 3 and maps["masks"].shape[0] == 3
    found = [entry for entry in result["labels"] if entry["found"]]
    assert all(entry["mask_area"] is not None for entry in found)
    assert all((tmp_path / "out" / "rocket" / f"sam_{entry['label']}.png").is_file() for entry in found)


def test_help_shows_the_public_api():
    done = subprocess.run([sys.executable, "-c", "import surgery; help(surgery)"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PAGER": "cat"})
    assert done.returncode == 0, done.stderr
    for name in ("load_clip", "load_segmenter", "load_image", "compute_maps", "apply_threshold", "add_masks",
                 "write_outputs"):
        assert re.search(rf"^\s+{name}\(", done.stdout, re.M), name


def test_the_engine_has_no_gradio_and_its_layers_point_one_way():
    """`surgery/` never imports gradio or the app; `method` imports no other layer, `hub` only
    `method`-free basics, and `clip`/`sam` never import `output`."""
    allowed = {  # layer -> engine subpackages it may import
        "method": set(),
        "hub": set(),
        "clip": {"method", "hub"},
        "sam": {"method", "hub"},
        "output": {"method"},
    }
    for path in (ROOT / "surgery").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import gradio|from gradio)", text, re.M), path
        assert not re.search(r"^\s*(import explorer|from explorer)", text, re.M), path
        layer = path.relative_to(ROOT / "surgery").parts[0]
        if layer in allowed:
            imported = set(re.findall(r"^\s*from \.\.(\w+)", text, re.M)) | set(
                re.findall(r"^\s*from surgery\.(\w+)", text, re.M))
            layers = imported & set(allowed)
            assert layers <= allowed[layer], f"{path.relative_to(ROOT)} imports {layers - allowed[layer]}"
        if path.name != "__main__.py":  # the command line is the top: nothing below it imports it
            assert not re.search(r"^\s*from (\.+|surgery\.)cli import|^\s*import surgery\.cli", text, re.M), path


def test_pip_install_gives_the_package_and_the_cli_command(tmp_path):
    """`pip install .` (no dependencies: they are this venv's) into a fresh prefix, then run from
    outside the clone: the installed package (with its data files) and the console command work."""
    clone = tmp_path / "clone"  # what a clone holds for the build, so no build files land in this one
    shutil.copytree(ROOT / "surgery", clone / "surgery", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, clone / name)
    prefix = tmp_path / "prefix"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--prefix", str(prefix), str(clone)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr
    site = next(prefix.glob("lib/python3*/site-packages"))
    assert (site / "surgery" / "method" / "prompt_templates.txt").is_file()
    assert not (site / "explorer").exists() and not (site / "tests").exists()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1",
           "CLIP_SURGERY_CACHE": str(tmp_path / "cache")}
    where = subprocess.run([sys.executable, "-c", "import surgery; print(surgery.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120)
    assert Path(where.stdout.strip()).resolve().is_relative_to(site.resolve()), where.stdout + where.stderr
    command = prefix / "bin" / "clip-surgery"
    out = tmp_path / "out"
    ran = subprocess.run([str(command), "explain", str(ROOT / "assets" / "rocket.jpg"), "--labels", "rocket, sky",
                          "--clip-checkpoint", str(TINY_CLIP), "--no-sam", "--resolution", "224", "--out", str(out)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    result = json.loads((out / "rocket" / "result.json").read_text())
    assert [entry["label"] for entry in result["labels"]] == ["rocket", "sky"]
