"""The per-window encoder against the engine's own functions (tiny CLIP): one pass gives every method's
tokens, equal to each method's separate computation; rectangular grids use the per-axis positional
resizes and NACLIP's bias on the rectangle; the trunk is shared at the native grid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from surgery.clip import last_blocks as dense_methods
from surgery.clip.vit import encode_image_tokens, positional_embedding_for_grid
from surgery.evaluate.features import (SCORED_METHODS, WindowEncoder, bilinear_positional_embedding_2d,
                                       dino_positional_embedding_2d, naclip_block_2d, neighbourhood_bias_2d,
                                       window_logits)
from surgery.method.feature_surgery import surgery_across_labels

DENSE = ("maskclip", "sclip", "clearclip", "naclip")
ALL = tuple(SCORED_METHODS)


@pytest.fixture(scope="module")
def visual(explainer):
    return explainer.model.visual


def _pixels(height: int, width: int, seed: int = 0, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("side", [224, 256])  # native grid 14, and 16 (positional embeddings resized)
def test_one_pass_gives_each_methods_own_tokens_on_square_windows(visual, side, calls):
    pixels = _pixels(side, side)
    calls.clear()
    windows = WindowEncoder(visual, ALL).encode(pixels)
    assert calls.count("CLIP image encoder") == 1  # every method from one call
    grid = side // 16
    assert windows.grid == (grid, grid)
    trunk = dense_methods.trunk(visual, pixels)
    for name in DENSE:
        expected = dense_methods.patch_tokens(
            visual, {"maskclip": lambda: dense_methods.maskclip_block(visual.transformer.resblocks[-1], trunk),
                     "sclip": lambda: dense_methods.sclip_block(visual.transformer.resblocks[-1], trunk),
                     "clearclip": lambda: dense_methods.clearclip_block(visual.transformer.resblocks[-1], trunk),
                     "naclip": lambda: dense_methods.naclip_block(visual.transformer.resblocks[-1], trunk, grid)}[name]())
        assert torch.allclose(windows.tokens[name], expected, atol=1e-5), name
    surgery = encode_image_tokens(visual, pixels)  # CLIP Surgery's dual path, its bilinear positions
    assert torch.allclose(windows.tokens["surgery"], surgery.surgery_tokens[:, 1:], atol=1e-5)
    assert torch.allclose(windows.tokens["surgery_fs"], surgery.surgery_tokens[:, 1:], atol=1e-5)
    assert torch.allclose(windows.tokens["clip"], surgery.clip_tokens[:, 1:], atol=1e-5)
    assert torch.allclose(windows.cls, surgery.clip_tokens[:, 0], atol=1e-5)
    text = F.normalize(torch.randn(5, windows.tokens["clip"].shape[-1], generator=torch.Generator().manual_seed(1)), dim=-1)
    fs = window_logits(windows, "surgery_fs", text)
    expected_fs = surgery_across_labels(surgery.surgery_tokens, text)[:, 1:]
    assert torch.allclose(fs, expected_fs.transpose(1, 2).reshape(2, 5, grid, grid), atol=1e-5)
    cosine = window_logits(windows, "sclip", text)
    assert torch.allclose(cosine, (windows.tokens["sclip"] @ text.T).transpose(1, 2).reshape(2, 5, grid, grid))


def test_positional_embeddings_per_axis_match_the_square_ones(visual):
    pe = visual.positional_embedding
    assert torch.equal(dino_positional_embedding_2d(pe, 16, 16), dense_methods.dino_positional_embedding(pe, 16))
    assert torch.allclose(bilinear_positional_embedding_2d(pe, 16, 16), positional_embedding_for_grid(pe.float(), 16))
    rect = dino_positional_embedding_2d(pe, 9, 20)
    assert rect.shape == (1 + 9 * 20, pe.shape[1]) and torch.equal(rect[0], pe[0].float())
    # the DINO resize with per-axis factors (g + 0.1) / s, as SCLIP's interpolate_pos_encoding
    grid = pe[1:].float().reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, scale_factor=(9.1 / 14, 20.1 / 14), mode="bicubic", align_corners=False)
    assert torch.allclose(rect[1:], expected.permute(0, 2, 3, 1).reshape(180, -1))


def test_naclip_bias_on_a_rectangle(visual):
    omega = neighbourhood_bias_2d(2, 3, 5.0, torch.float64, "cpu")
    assert omega.shape == (7, 7) and omega[0].abs().sum() == 0 and omega[:, 0].abs().sum() == 0
    # patches (0, 0) and (1, 2): squared distance 1 + 4
    assert omega[1, 1 + 1 * 3 + 2].item() == pytest.approx(torch.exp(torch.tensor(-5 / 50.0)).item())
    block = visual.transformer.resblocks[-1]
    h = torch.randn(1, 1 + 14 * 14, block.attn.embed_dim, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(naclip_block_2d(block, h, 14, 14), dense_methods.naclip_block(block, h, 14))


def test_rectangular_windows_run_every_method(visual, calls):
    pixels = _pixels(150, 224)  # a window cut short by the image's border: grid 9 x 14
    calls.clear()
    windows = WindowEncoder(visual, ALL).encode(pixels)
    assert windows.grid == (9, 14) and calls.count("CLIP image encoder") == 1
    for name in ALL:
        assert windows.tokens[name].shape == (2, 9 * 14, visual.proj.shape[1])
        assert torch.allclose(windows.tokens[name].norm(dim=-1), torch.ones(2, 9 * 14), atol=1e-5)
    only_dense = WindowEncoder(visual, DENSE).encode(pixels)
    for name in DENSE:  # the DINO-positions trunk does not depend on which other methods ran
        assert torch.allclose(only_dense.tokens[name], windows.tokens[name], atol=1e-6)
