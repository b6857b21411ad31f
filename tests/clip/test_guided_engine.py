"""SC-CLIP, ResCLIP and ProxyCLIP through the engine as people use it: the CLI (maps.npz against the
official maps), the explainer against the independent port of tests/newer_reference.py at
resolutions the fixture lacks, one shared trunk and one cached proxy encoding, and the refusals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import newer_reference as oracle
from checkpoints import write_proxy_sam_checkpoint
from surgery.method.labels import parse_labels
from surgery.method.options import MapOptions
from surgery.method.table import IMAGENET_TEMPLATES

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
TINY_CLIP = DATA / "parity" / "weights.safetensors"
ROCKET = DATA / "parity" / "rocket.png"
TOLERANCE = 1e-5
# ProxyCLIP cuts its attention at 0: an entry within a rounding of the cut flips with the CPU's kernels
# (tests/clip/test_guided_methods.py). 1e-5 where every attention logit of the row is clear of the cut
# (by CLEAR_OF_THE_CUT against the port, run in this process; by OFFICIAL_CLEAR against the official
# maps, made on another machine), PROXY_KERNEL_TOLERANCE everywhere.
PROXY_KERNEL_TOLERANCE = 2e-4
CLEAR_OF_THE_CUT = 2e-6
OFFICIAL_CLEAR = 1e-5
GUIDED = ("scclip", "resclip", "proxyclip")


@pytest.fixture(scope="module")
def proxy_sam(tmp_path_factory) -> Path:
    return write_proxy_sam_checkpoint(tmp_path_factory.mktemp("sam") / "sam_tiny.pth")


@pytest.fixture(scope="module")
def segmenter(proxy_sam):
    from surgery.loading import load_segmenter

    return load_segmenter(checkpoint=proxy_sam, device="cpu")


@pytest.fixture(scope="module")
def port_encoder(proxy_sam):
    """segment_anything's own image encoder module (stock attention) on the same weights, for the port."""
    from surgery.sam.architecture import load_sam

    return load_sam(proxy_sam, fast_attention=False).image_encoder


def _cli(*args: str, out: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "surgery", "explain", *args, "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_cli_writes_each_methods_official_map(tmp_path, proxy_sam, explainer, port_encoder, rocket):
    """The acceptance command: `explain IMG --methods scclip,resclip,proxyclip --points-from scclip
    --resolution R --clip-checkpoint W --sam-checkpoint sam_tiny.pth`; maps.npz holds one array per
    method, named after it, shaped as the fixture's."""
    cases = json.loads((DATA / "methods2" / "methods.json").read_text())
    runs = [_cli(str(ROCKET), "--labels", ", ".join(case["labels"]), "--methods", ",".join(GUIDED),
                 "--points-from", "scclip", "--resolution", str(case["resolution"]), "--clip-checkpoint",
                 str(TINY_CLIP), "--sam-checkpoint", str(proxy_sam), out=tmp_path / f"case{i}")
            for i, case in enumerate(cases)]
    with np.load(DATA / "methods2" / "methods.npz") as data:
        expected = {key: data[key] for key in data.files}
    for i, (run, case) in enumerate(zip(runs, cases)):
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr
        result = json.loads((tmp_path / f"case{i}" / "rocket" / "result.json").read_text())
        assert result["methods"] == list(GUIDED) and result["points_from"] == "scclip"
        with np.load(tmp_path / f"case{i}" / "rocket" / "maps.npz") as maps:
            for method in GUIDED:
                got, want = maps[method], expected[f"case{i}_{method}"]
                assert got.shape == want.shape == (len(case["labels"]), case["grid"][method], case["grid"][method])
                error = np.abs(got - want)
                print(f"case {i} {method}: max error {error.max():.2e}")
                if method == "proxyclip":
                    features = explainer.text_features(case["labels"], IMAGENET_TEMPLATES)
                    _, margin = oracle.proxyclip_outputs(explainer.model, port_encoder, rocket, case["resolution"],
                                                         features)
                    clear = margin >= OFFICIAL_CLEAR
                    assert clear.mean() > 0.8 and error[:, clear].max() <= TOLERANCE
                    assert error.max() <= PROXY_KERNEL_TOLERANCE
                else:
                    assert error.max() <= TOLERANCE, method


@pytest.mark.parametrize("resolution, labels", [
    (288, ("rocket", "smoke", "sky")),
    (336, ("rocket", "sky")),  # N = 441: the LOF threshold is one sample
    (384, ("tower", "night", "light")),  # ResCLIP's first pass mixes labels here: its SFR logic runs
    (320, ("smoke",)),
])
def test_the_explainer_agrees_with_the_independent_port(explainer, segmenter, port_encoder, rocket, resolution,
                                                        labels):
    maps = explainer.compute_maps(rocket, parse_labels(", ".join(labels)).labels,
                                  MapOptions(resolution, methods=GUIDED), proxy=segmenter.proxy)
    features = explainer.text_features(list(labels), IMAGENET_TEMPLATES)
    model = explainer.model
    for method, port in (("scclip", oracle.scclip_map), ("resclip", oracle.resclip_map)):
        got = np.stack([lm.maps[method] for lm in maps.labels])
        error = float(np.abs(got - port(model, rocket, resolution, features)).max())
        print(f"{method} at {resolution}: max error {error:.2e}")
        assert error <= TOLERANCE, method
    want, margin = oracle.proxyclip_outputs(model, port_encoder, rocket, resolution, features)
    got = np.stack([lm.maps["proxyclip"] for lm in maps.labels])
    clear = margin > CLEAR_OF_THE_CUT
    assert clear.mean() > 0.95
    print(f"proxyclip at {resolution}: max error {np.abs(got - want)[:, clear].max():.2e} clear of the cut, "
          f"{np.abs(got - want).max():.2e} everywhere")
    assert np.abs(got - want)[:, clear].max() <= TOLERANCE
    assert np.abs(got - want).max() <= PROXY_KERNEL_TOLERANCE


def test_other_weights_a_twelve_block_tower_at_640_px_agrees_with_the_port(tmp_path, segmenter, port_encoder):
    """Other weights than the fixture's (12 vision blocks, so the layer indices are the published ones,
    width 128), 640 px, five labels, a JPEG of another size: the maps through the CLI's loader agree
    with the independent port."""
    from checkpoints import write_random_clip_checkpoint
    from surgery.images import load_image
    from surgery.loading import load_clip

    explainer = load_clip(checkpoint=write_random_clip_checkpoint(tmp_path / "clip12.safetensors", 12, 128, seed=12),
                          device="cpu")
    assert len(explainer.model.visual.transformer.resblocks) == 12
    image = load_image(ROOT / "assets" / "rocket.jpg")
    labels = ("rocket", "smoke", "sky", "tower", "light")
    maps = explainer.compute_maps(image, parse_labels(", ".join(labels)).labels, MapOptions(640, methods=GUIDED),
                                  proxy=segmenter.proxy)
    features = explainer.text_features(list(labels), IMAGENET_TEMPLATES)
    for method, port in (("scclip", oracle.scclip_map), ("resclip", oracle.resclip_map)):
        got = np.stack([lm.maps[method] for lm in maps.labels])
        assert got.shape == (5, 40, 40)
        assert float(np.abs(got - port(explainer.model, image, 640, features)).max()) <= TOLERANCE, method
    want, margin = oracle.proxyclip_outputs(explainer.model, port_encoder, image, 640, features)
    got = np.stack([lm.maps["proxyclip"] for lm in maps.labels])
    clear = margin > CLEAR_OF_THE_CUT
    assert clear.mean() > 0.95 and np.abs(got - want)[:, clear].max() <= TOLERANCE
    assert np.abs(got - want).max() <= PROXY_KERNEL_TOLERANCE


def test_one_trunk_for_every_method_and_one_proxy_encoding_per_image_and_resolution(segmenter, calls):
    from surgery.loading import load_clip

    explainer = load_clip(checkpoint=TINY_CLIP, device="cpu")  # nothing cached
    image = np.random.default_rng(3).integers(0, 255, (200, 260, 3), dtype=np.uint8)
    methods = ("clip", "surgery", "maskclip", "naclip", "scclip", "resclip", "proxyclip")
    explainer.compute_maps(image, parse_labels("rocket, smoke").labels, MapOptions(336, methods=methods),
                           proxy=segmenter.proxy)
    assert calls.count("CLIP image encoder (trunk") == 1, calls.lines  # shared by the five that replace the block
    assert calls.count("ProxyCLIP proxy") == 1 and calls.count("last block") == 5
    calls.clear()
    explainer.compute_maps(image, parse_labels("rocket, smoke").labels, MapOptions(336, methods=methods),
                           proxy=segmenter.proxy)
    assert calls.lines == []  # everything cached
    explainer.compute_maps(image, parse_labels("rocket, cloud").labels, MapOptions(336, methods=methods),
                           proxy=segmenter.proxy)
    # ResCLIP depends on the label list: its block runs again (with a trunk pass, for the attention it reads);
    # the others' features and the proxy encoding are reused
    assert calls.count("last block") == 1 and calls.count("ProxyCLIP proxy") == 0, calls.lines


def test_refusals_are_one_line(tmp_path):
    no_sam = _cli(str(ROCKET), "--labels", "rocket, sky", "--methods", "proxyclip", "--clip-checkpoint",
                  str(TINY_CLIP), "--no-sam", "--resolution", "224", out=tmp_path / "no_sam")
    resnet = _cli(str(ROCKET), "--labels", "rocket, sky", "--methods", "clip,scclip,resclip", "--model", "RN50",
                  "--clip-checkpoint", str(DATA / "parity-rn" / "weights.safetensors"), "--no-sam",
                  "--resolution", "224", out=tmp_path / "resnet")
    for run, message in ((no_sam, "ProxyCLIP takes its attention from SAM's image encoder, so it needs SAM"),
                         (resnet, "SC-CLIP, ResCLIP work on ViT backbones only")):
        _, stderr = run.communicate(timeout=300)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert run.returncode == 2 and len(lines) == 1 and message in lines[0], stderr
