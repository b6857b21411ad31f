"""The per-window encoder against the engine's own functions (tiny CLIP): one pass gives every method's
features, equal to each method's separate computation; rectangular windows run every method; a proxy
method needs its proxy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from surgery.clip import dense
from surgery.clip.trunk import record_trunk
from surgery.clip.vit import encode_image_tokens
from surgery.errors import InputError
from surgery.evaluate.features import SCORED_METHODS, WindowEncoder, window_logits
from surgery.method.feature_surgery import surgery_across_labels

BLOCK = ("maskclip", "sclip", "clearclip", "naclip", "scclip", "resclip")
ALL = tuple(m for m in SCORED_METHODS if m != "proxyclip")


@pytest.fixture(scope="module")
def visual(explainer):
    return explainer.model.visual


@pytest.fixture(scope="module")
def queries(visual):
    return F.normalize(torch.randn(5, visual.proj.shape[1], generator=torch.Generator().manual_seed(1)), dim=-1)


def _pixels(height: int, width: int, seed: int = 0, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("side", [224, 256])  # native grid 14, and 16 (positional embeddings resized)
def test_one_pass_gives_each_methods_own_features_on_square_windows(visual, queries, side, calls):
    pixels = _pixels(side, side)
    calls.clear()
    windows = WindowEncoder(visual, ALL, label_features=queries).encode(pixels)
    assert calls.count("CLIP image encoder") == 1  # every method from one call
    grid = side // 16
    assert all(windows.grids[m] == (grid, grid) for m in ALL)
    record = record_trunk(visual, pixels, attention_blocks=dense.DENSE_METHODS["resclip"].attention_blocks(8),
                          hidden_blocks=dense.DENSE_METHODS["scclip"].hidden_blocks(8))
    inputs = dense.DenseInputs(visual, record, pixels, queries)
    for name in BLOCK:
        assert torch.allclose(windows.tokens[name], dense.method_features(inputs, name), atol=1e-5), name
    surgery = encode_image_tokens(visual, pixels)  # CLIP Surgery's dual path, its bilinear positions
    assert torch.allclose(windows.tokens["surgery"], surgery.surgery_tokens[:, 1:], atol=1e-5)
    assert torch.allclose(windows.tokens["surgery_fs"], surgery.surgery_tokens[:, 1:], atol=1e-5)
    assert torch.allclose(windows.tokens["clip"], surgery.clip_tokens[:, 1:], atol=1e-5)
    assert torch.allclose(windows.cls, surgery.clip_tokens[:, 0], atol=1e-5)
    fs = window_logits(windows, "surgery_fs", queries)
    expected_fs = surgery_across_labels(surgery.surgery_tokens, queries)[:, 1:]
    assert torch.allclose(fs, expected_fs.transpose(1, 2).reshape(2, 5, grid, grid), atol=1e-5)
    cosine = window_logits(windows, "sclip", queries)
    assert torch.allclose(cosine, (windows.tokens["sclip"] @ queries.T).transpose(1, 2).reshape(2, 5, grid, grid))


def test_rectangular_windows_run_every_method(visual, queries, calls):
    pixels = _pixels(150, 224)  # a window cut short by the image's border: grid 9 x 14
    calls.clear()
    windows = WindowEncoder(visual, ALL, label_features=queries).encode(pixels)
    assert calls.count("CLIP image encoder") == 1
    for name in ALL:
        assert windows.grids[name] == (9, 14)
        assert windows.tokens[name].shape == (2, 9 * 14, visual.proj.shape[1])
        assert torch.allclose(windows.tokens[name].norm(dim=-1), torch.ones(2, 9 * 14), atol=1e-5)
    only_block = WindowEncoder(visual, BLOCK, label_features=queries).encode(pixels)
    for name in BLOCK:  # the DINO-positions trunk does not depend on which other methods ran
        assert torch.allclose(only_block.tokens[name], windows.tokens[name], atol=1e-6)


def test_a_proxy_method_needs_its_proxy(visual):
    with pytest.raises(InputError, match="ProxyCLIP takes its attention from SAM's image encoder"):
        WindowEncoder(visual, ("clip", "proxyclip"))
