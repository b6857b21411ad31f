"""MaskCLIP, ClearCLIP, SCLIP and NACLIP raw maps (surgery/clip/dense_methods.py, docs/method.md §9).

(a) parity with the official code's maps (tests/data/methods, made by each method's
official implementation on the tests/data/parity checkpoint and image); (b) an
independent port (tests/dense_reference.py) at resolutions the fixture lacks, odd and
even grids; (c) the DINO positional resize; (d) the shared trunk at the native size.
"""

from __future__ import annotations

import json
from pathlib import Path

import dense_reference as ref
import numpy as np
import pytest
import torch
from conftest import DATA, PARITY, TINY_CLIP

import surgery.method
from surgery.clip import last_blocks as dm
from surgery.clip.trunk import dino_positional_embedding, record_trunk
from surgery.clip.preprocess import clip_input
from surgery.clip.text import prompt_ensemble
from surgery.clip.vit import positional_embedding_for_grid

METHODS_DATA = DATA / "methods"
TOLERANCE = 1e-5
METHODS = ("maskclip", "clearclip", "sclip", "naclip")
# the product's copy of the 80 OpenAI ImageNet templates, the four methods' prompt ensemble
IMAGENET_TEMPLATES_FILE = Path(surgery.method.__file__).parent / "imagenet_templates.txt"


@pytest.fixture(scope="module")
def model():
    from surgery.loading import load_clip

    return load_clip(checkpoint=TINY_CLIP).model


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    from surgery.images import load_image

    return load_image(PARITY / "rocket.png")


@pytest.fixture(scope="module")
def templates() -> tuple[str, ...]:
    with open(IMAGENET_TEMPLATES_FILE, encoding="utf-8") as handle:
        found = tuple(line.strip() for line in handle if line.strip())
    assert len(found) == 80 and len(set(found)) == 80 and all(t.count("{}") == 1 for t in found)
    return found


@pytest.fixture(scope="module")
def cases() -> list[dict]:
    return json.loads((METHODS_DATA / "methods.json").read_text())


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(METHODS_DATA / "methods.npz") as data:
        return {key: data[key] for key in data.files}


def method_tokens(visual, method: str, h: torch.Tensor, grid: int) -> torch.Tensor:
    block = visual.transformer.resblocks[-1]
    if method == "naclip":
        out = dm.naclip_block(block, h, (grid, grid))
    else:
        out = {"maskclip": dm.maskclip_block, "clearclip": dm.clearclip_block, "sclip": dm.sclip_block}[method](block, h)
    return dm.patch_tokens(visual, out)


def raw_map(tokens: torch.Tensor, features: torch.Tensor, grid: int) -> np.ndarray:
    """(K, g, g) cosine of each normalised patch token with each label feature."""
    return (tokens[0] @ features.T).T.reshape(-1, grid, grid).numpy()


def test_fixture_covers_every_method(cases, expected):
    assert [c["resolution"] for c in cases] == [224, 448]
    for i, case in enumerate(cases):
        for method in METHODS:
            stored = expected[f"case{i}_{method}"]
            assert stored.dtype == np.float32
            assert stored.shape == (len(case["labels"]), case["grid"], case["grid"])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case_index", [0, 1])
def test_official_parity(model, image, templates, cases, expected, case_index, method):
    case = cases[case_index]
    visual = model.visual
    pixels = clip_input(image, case["resolution"])
    grid = case["grid"]
    assert pixels.shape[-1] // visual.conv1.kernel_size[0] == grid
    features = prompt_ensemble(model, case["labels"], templates=templates)
    h = record_trunk(visual, pixels).last
    assert h.shape == (1, grid * grid + 1, visual.conv1.out_channels)
    tokens = method_tokens(visual, method, h, grid)
    assert tokens.shape == (1, grid * grid, visual.proj.shape[1])
    np.testing.assert_allclose(raw_map(tokens, features, grid), expected[f"case{case_index}_{method}"],
                               atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("resolution", [336, 640])  # grids 21 (odd) and 40 (even)
def test_independent_port(model, image, templates, resolution):
    visual = model.visual
    pixels = clip_input(image, resolution)
    grid = resolution // 16
    features = prompt_ensemble(model, ["rocket", "sky"], templates=templates)
    h = record_trunk(visual, pixels).last
    reference_trunk = ref.reference_trunk(visual, pixels)
    torch.testing.assert_close(h[0], reference_trunk, atol=1e-4, rtol=1e-5)  # pre-LN scale: loose
    for method in METHODS:
        tokens = method_tokens(visual, method, h, grid)
        expected_tokens = ref.reference_patch_tokens(visual, pixels, method, trunk_tokens=reference_trunk)
        assert tokens.shape == (1, grid * grid, visual.proj.shape[1])
        np.testing.assert_allclose(tokens[0].numpy(), expected_tokens.numpy(), atol=TOLERANCE, rtol=0,
                                   err_msg=method)
        np.testing.assert_allclose(raw_map(tokens, features, grid), raw_map(expected_tokens[None], features, grid),
                                   atol=TOLERANCE, rtol=0, err_msg=method)


def test_naclip_sigma_changes_the_map(model, image):
    visual = model.visual
    h = record_trunk(visual, clip_input(image, 336)).last
    block = visual.transformer.resblocks[-1]
    default = dm.naclip_block(block, h, (21, 21))
    assert torch.equal(default, dm.naclip_block(block, h, (21, 21), sigma=5.0))
    assert (default - dm.naclip_block(block, h, (21, 21), sigma=3.0)).abs().max() > 1e-4
    with pytest.raises(ValueError):
        dm.naclip_block(block, h, (20, 20))
    assert torch.equal(default, dm.naclip_block(block, h, (21, 21)))


def test_dino_positional_embedding(model):
    pe = model.visual.positional_embedding
    native = 14
    assert dino_positional_embedding(pe, native) is pe
    for grid in (14, 15, 20, 21, 28, 40, 64):
        resized = dino_positional_embedding(pe, grid)
        assert resized.shape == (1 + grid * grid, pe.shape[1])
        assert torch.equal(resized[0], pe[0])
        torch.testing.assert_close(resized, ref.dino_resize(pe.detach(), grid), atol=1e-6, rtol=0)
        if grid != native:
            bilinear = positional_embedding_for_grid(pe, grid)
            assert (resized - bilinear).abs().max() > 1e-3


def test_trunk_is_the_plain_forward_at_native_size(model, image):
    visual = model.visual
    pixels = clip_input(image, 224)
    captured = []
    handle = visual.transformer.resblocks[-2].register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.inference_mode():
            visual(pixels)
    finally:
        handle.remove()
    assert len(captured) == 1
    torch.testing.assert_close(record_trunk(visual, pixels).last, captured[0], atol=1e-6, rtol=0)


def test_functions_leave_the_model_unchanged(model, image):
    visual = model.visual
    before = {k: v.clone() for k, v in visual.state_dict().items()}
    h = record_trunk(visual, clip_input(image, 336)).last
    block = visual.transformer.resblocks[-1]
    for out in (dm.maskclip_block(block, h), dm.clearclip_block(block, h), dm.sclip_block(block, h),
                dm.naclip_block(block, h, (21, 21))):
        dm.patch_tokens(visual, out)
    after = visual.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_rectangular_grids_resize_each_axis_and_bias_the_right_neighbours(model, image):
    """A (rows, cols) grid: the DINO resize per axis (square ones are the same as before), and NACLIP's
    neighbourhood bias between patches of that grid (a transposed grid is a different bias)."""
    pe = model.visual.positional_embedding
    wide = dino_positional_embedding(pe, 14, 20)
    assert wide.shape == (1 + 14 * 20, pe.shape[1]) and torch.equal(wide[0], pe[0])
    assert torch.equal(dino_positional_embedding(pe, 20, 20), dino_positional_embedding(pe, 20))
    rows, cols = 3, 4
    omega = dm._neighbourhood_bias(rows, cols, 5.0, torch.float64, torch.device("cpu"))
    # patch 0 is (0, 0); patch 4 is (1, 0): one row apart; patch 3 is (0, 3): three columns apart
    assert omega[1, 1 + 4] == pytest.approx(np.exp(-1 / 50)) and omega[1, 1 + 3] == pytest.approx(np.exp(-9 / 50))
    assert (omega[0] == 0).all() and (omega[:, 0] == 0).all()
