"""The methods table through the engine: each method's raw map equals the official one, the trunk is
shared where the math allows, the points come from the chosen map, and refusals are clear."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from surgery.method.table import METHOD_TABLE, check_methods
from surgery.errors import InputError
from surgery.method.labels import parse_labels
from surgery.method.points import points_for_sam
from surgery.method.options import MapOptions
from surgery.method.views import apply_threshold

DATA = Path(__file__).resolve().parents[1] / "data"
FIRST_SIX = ("clip", "surgery", "maskclip", "sclip", "clearclip", "naclip")  # the fixture of tests/data/methods
ALL = tuple(name for name, row in METHOD_TABLE.items() if not row.proxy)  # ProxyCLIP needs SAM: test_guided_engine


@pytest.fixture(scope="module")
def cases():
    return json.loads((DATA / "methods" / "methods.json").read_text())


@pytest.fixture(scope="module")
def official():
    with np.load(DATA / "methods" / "methods.npz") as data:
        return {key: data[key] for key in data.files}


def test_every_method_through_the_engine_equals_the_official_maps(cases, official, rocket):
    from surgery.loading import load_clip

    explainer = load_clip(checkpoint=DATA / "parity" / "weights.safetensors")  # a fresh one: nothing cached
    for number, case in enumerate(cases):
        labels = parse_labels(", ".join(case["labels"])).labels
        maps = explainer.compute_maps(rocket, labels, MapOptions(case["resolution"], "labels", methods=ALL))
        assert maps.options.methods == ALL
        assert all(lm.maps[m].shape == (case["grid"], case["grid"]) for lm in maps.labels for m in ALL)
        for method in FIRST_SIX[2:]:
            got = np.stack([lm.maps[method] for lm in maps.labels])
            np.testing.assert_allclose(got, official[f"case{number}_{method}"], atol=1e-5, rtol=0, err_msg=method)
        alone = explainer.compute_maps(rocket, labels, MapOptions(case["resolution"], "labels"))
        for lm, plain in zip(maps.labels, alone.labels):  # the other two are the same maps as without the comparison
            np.testing.assert_array_equal(lm.maps["surgery"], plain.maps["surgery"])
            np.testing.assert_array_equal(lm.maps["clip"], plain.maps["clip"])


def test_the_trunk_is_shared_at_the_native_grid_and_computed_once_elsewhere(explainer, calls):
    image = np.random.default_rng(7).integers(0, 255, (120, 160, 3), dtype=np.uint8)  # new to every cache
    labels = parse_labels("rocket, smoke").labels
    explainer.compute_maps(image, labels, MapOptions(224, "labels", methods=FIRST_SIX))
    encoders = [line for line in calls.lines if "image encoder" in line]
    assert len(encoders) == 1, encoders  # 224 px is the native grid: one forward for all six
    assert calls.count("last block") == 4
    calls.clear()
    explainer.compute_maps(image, labels, MapOptions(336, "labels", methods=FIRST_SIX))
    encoders = [line for line in calls.lines if "image encoder" in line]
    assert len(encoders) == 2 and sum("trunk" in line for line in encoders) == 1, encoders
    calls.clear()
    explainer.compute_maps(image, labels, MapOptions(336, "labels", methods=("surgery", "naclip"),
                                                     points_from="naclip"))
    assert calls.lines == []  # everything cached: tokens, trunk, last blocks and label features


def test_points_and_found_come_from_the_chosen_map(explainer, rocket):
    labels = parse_labels("rocket, smoke, sky+cloud").labels
    maps = explainer.compute_maps(rocket, labels, MapOptions(224, "labels", methods=ALL, points_from="clearclip"))
    view = apply_threshold(maps, None)
    plain = view.labels[0]
    expected = points_for_sam(plain.maps.parts["clearclip"][0], maps.width, maps.height, None)
    np.testing.assert_array_equal(plain.points, expected)
    top = float(plain.maps.parts["clearclip"].max())
    hidden = apply_threshold(maps, top + 1e-3)
    assert not hidden.labels[0].found
    surgery_view = apply_threshold(explainer.compute_maps(rocket, labels, MapOptions(224, "labels")), top + 1e-3)
    assert surgery_view.labels[0].found == (float(surgery_view.labels[0].maps.parts["surgery"].max()) >= top + 1e-3)
    combined = view.labels[2]
    assert combined.maps.parts["clearclip"].shape[0] == 2  # one raw map per part


@pytest.mark.parametrize("methods, points_from, message", [
    ("clip,surgery,dino", None, "Unknown method 'dino'"),
    ("clip", "surgery", "not among the chosen methods"),
    ("", "naclip", "not among the chosen methods"),
    (["clip", 3], None, "Methods must be names"),
    ("surgery", "nope", "Unknown method 'nope'"),
])
def test_bad_method_choices_are_refused_clearly(methods, points_from, message):
    with pytest.raises(InputError, match=message):
        check_methods(methods, points_from)


def test_resnet_backbones_refuse_the_last_block_methods():
    from surgery.loading import load_clip

    resnet = load_clip("RN50", DATA / "parity-rn" / "weights.safetensors")
    with pytest.raises(InputError, match="MaskCLIP, NACLIP work on ViT backbones only"):
        resnet.check_fits(MapOptions(224, "labels", methods=("clip", "surgery", "maskclip", "naclip")))
    resnet.check_fits(MapOptions(224, "labels", methods=("clip", "surgery")))  # both have a ResNet form


@pytest.mark.parametrize("methods, points_from", [
    ("sclip", "sclip"), ("naclip,clearclip", "clearclip"), ("clip", "clip"), ("maskclip,surgery", "surgery"),
])
def test_without_a_points_method_named_the_points_come_from_surgery_or_else_the_first_chosen(methods, points_from):
    """`--methods sclip` alone was refused (the points defaulted to CLIP Surgery, not computed)."""
    assert check_methods(methods, None)[1] == points_from
    assert MapOptions(methods=methods).points_from == points_from
