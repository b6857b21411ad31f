"""Behavioural tests for surgery.output's drawing, histogram, file naming and PNG (pure numpy/cv2/PIL; no models)."""

from __future__ import annotations

import io

import re

import cv2
import numpy as np
import pytest
from PIL import Image

from surgery.output import drawing as R
from surgery.output import histogram as H
from surgery.output.files import label_slug
from surgery.output.png import encode_png


def _img(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _grey(h: int = 400, w: int = 400, v: int = 128) -> np.ndarray:
    return np.full((h, w, 3), v, np.uint8)


def _jet_rgb(v: int) -> np.ndarray:
    bgr = cv2.applyColorMap(np.full((1, 1), v, np.uint8), cv2.COLORMAP_JET)[0, 0]
    return bgr[::-1].astype(np.float64)


# ---------------------------------------------------------------------- heat_overlay


def test_heat_overlay_all_ones_is_exact_blend_with_jet_red():
    img = _img()
    out = R.heat_overlay(img, np.ones(img.shape[:2], np.float32))
    jet = _jet_rgb(255)
    assert jet[0] > 100 and jet[2] == 0  # JET(255) is dark red in RGB order
    expected = (0.4 * img.astype(np.float64) + 0.6 * jet).astype(np.uint8)
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out, expected)


def test_heat_overlay_channel_order_red_for_hot_blue_for_cold():
    black = np.zeros((8, 8, 3), np.uint8)
    hot = R.heat_overlay(black, np.ones((8, 8), np.float32))
    cold = R.heat_overlay(black, np.zeros((8, 8), np.float32))
    assert (hot[..., 0] > hot[..., 2]).all()  # a BGR/RGB swap would make it blue
    assert (cold[..., 2] > cold[..., 0]).all()  # "nothing found": blue tint


def test_heat_overlay_matches_reference_bgr_pipeline():
    img = _img(60, 80, seed=3)
    m = np.random.default_rng(4).random((60, 80)).astype(np.float32)
    # CLIP Surgery demo: blend in BGR, truncate, then convert to RGB.
    cv2_img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    vis = cv2.applyColorMap((m * 255).astype("uint8"), cv2.COLORMAP_JET)
    ref = cv2.cvtColor((cv2_img * 0.4 + vis * 0.6).astype("uint8"), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(R.heat_overlay(img, m), ref)


def test_heat_overlay_rejects_wrong_map_shape_and_keeps_input():
    img = _img()
    before = img.copy()
    R.heat_overlay(img, np.full(img.shape[:2], 0.5, np.float32))
    np.testing.assert_array_equal(img, before)
    with pytest.raises(ValueError):
        R.heat_overlay(img, np.zeros((10, 10), np.float32))


# ----------------------------------------------------------------------- draw_points


def test_point_colours_are_distinct():
    pos, neg = np.array(R.POSITIVE_RGB), np.array(R.NEGATIVE_RGB)
    assert np.abs(pos - neg).sum() > 300


def test_points_drawn_at_xy_in_their_colours_with_dark_outline_and_sign():
    img = _grey()
    pts = np.array([[100, 150, 1], [300, 60, 0]])
    out = R.draw_points(img, pts, radius=10)
    # rows are y, columns are x: a swapped x/y would put colours elsewhere (off the signs' strokes)
    assert tuple(out[150 - 4, 100 - 4]) == R.POSITIVE_RGB
    assert tuple(out[60 - 4, 300 - 4]) == R.NEGATIVE_RGB
    assert tuple(out[100, 150]) == (128, 128, 128)
    assert tuple(out[300, 60]) == (128, 128, 128)
    # a dark + on the positive (both strokes), a dark − on the negative (the bar only)
    assert out[150, 100].max() < 60 and out[150 - 4, 100].max() < 60 and out[150, 100 + 4].max() < 60
    assert out[60, 300].max() < 60 and out[60, 300 + 4].max() < 60 and tuple(out[60 - 4, 300]) == R.NEGATIVE_RGB
    # inside the disc the fill colour, then a dark ring (outline 3 px), then the image
    assert tuple(out[150 + 8, 100]) == R.POSITIVE_RGB
    assert out[150, 100 + 12].max() < 60
    assert tuple(out[150, 100 + 16]) == (128, 128, 128)
    assert out[60 - 12, 300].max() < 60
    np.testing.assert_array_equal(img, _grey())  # input untouched


def test_a_persons_points_get_a_white_ring():
    img = _grey()
    out = R.draw_points(img, [[100, 150, 1], [300, 60, 0]], radius=10, marked=[[300, 60, 0]])
    assert tuple(out[60, 300 + 15]) == (255, 255, 255)  # outside the dark outline of the marked point
    assert tuple(out[150, 100 + 15]) == (128, 128, 128)  # the other has none


def test_point_radius_scales_with_the_long_side():
    big = R.draw_points(_grey(800, 1280), [[400, 400, 1]])  # radius 1280 / 64 = 20
    assert tuple(big[400 + 18, 400]) == R.POSITIVE_RGB
    assert tuple(big[400 + 30, 400]) == (128, 128, 128)
    small = R.draw_points(_grey(160, 160), [[80, 80, 0]])  # radius max(4, 2.5) = 4
    assert tuple(small[80 - 3, 80]) == R.NEGATIVE_RGB
    assert tuple(small[80 + 8, 80]) == (128, 128, 128)


def test_points_legend_drawn_bottom_left_only_when_there_are_points():
    img = _grey()
    np.testing.assert_array_equal(R.draw_points(img, np.zeros((0, 3), int)), img)
    np.testing.assert_array_equal(R.draw_points(img, None), img)
    out = R.draw_points(img, [[200, 100, 1]])
    corner = out[-40:, :120]
    assert (corner != 128).any()  # legend box
    assert (corner == R.POSITIVE_RGB).all(axis=2).any()
    assert (corner == R.NEGATIVE_RGB).all(axis=2).any()
    assert (out[:40, -120:] == 128).all()  # other corners untouched


def test_padding_label_points_are_not_drawn():
    img = _grey()
    out = R.draw_points(img, [[200, 200, -1]])
    np.testing.assert_array_equal(out, img)


def test_draw_points_on_tiny_image_does_not_crash():
    out = R.draw_points(_grey(12, 20), [[5, 5, 1], [50, 50, 0]])
    assert out.shape == (12, 20, 3) and out.dtype == np.uint8


# ------------------------------------------------------------------------- draw_mask


def test_mask_tints_only_inside_the_mask():
    img = _img(200, 300, seed=1)
    mask = np.zeros((200, 300), bool)
    mask[50:120, 80:200] = True
    colour = (255, 0, 0)
    out = R.draw_mask(img, mask, None, colour)
    inner = np.zeros_like(mask)
    inner[55:115, 85:195] = True  # well inside, away from the contour
    expected = np.rint(img.astype(np.float32) * 0.5 + np.array(colour, np.float32) * 0.5)
    np.testing.assert_array_equal(out[inner], expected.astype(np.uint8)[inner])
    near = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    np.testing.assert_array_equal(out[~near], img[~near])
    # the contour is drawn in the mask colour on the mask's border
    assert tuple(out[50, 140]) == colour


def test_mask_empty_leaves_image_and_points_go_on_top():
    img = _grey(200, 300)
    np.testing.assert_array_equal(R.draw_mask(img, np.zeros((200, 300), bool), None), img)
    mask = np.zeros((200, 300), bool)
    mask[20:180, 100:280] = True
    out = R.draw_mask(img, mask, np.array([[190, 100, 1]]), (0, 0, 255))
    assert tuple(out[100 - 2, 190 - 2]) == R.POSITIVE_RGB  # off the + sign's strokes
    with pytest.raises(ValueError):
        R.draw_mask(img, np.zeros((10, 10), bool), None)


# ------------------------------------------------------------------ palette, legend


def test_palette_deterministic_distinct_and_valid():
    p = R.palette(30)
    assert p == R.palette(30) and len(p) == 30 and R.palette(0) == []
    assert len(set(p)) == 30
    assert all(isinstance(v, int) and 0 <= v <= 255 for c in p for v in c)
    assert R.palette(5) == p[:5]
    arr = np.array(p[:12], float)
    d = np.linalg.norm(arr[:, None] - arr[None], axis=2) + np.eye(12) * 1e9
    assert d.min() > 40


def test_masks_legend_colours_masks_and_leaves_rest():
    img = _img(300, 400, seed=2)
    a = np.zeros((300, 400), bool)
    a[200:280, 250:380] = True
    out = R.draw_masks_legend(img, [a, None], ["cat", "dog"])
    c0 = np.array(R.palette(2)[0], np.float32)
    inner = np.zeros_like(a)
    inner[205:275, 255:375] = True
    exp = np.rint(img.astype(np.float32) * 0.5 + c0 * 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out[inner], exp[inner])
    # the legend sits top-left; far from it and from the mask nothing changes
    free = np.zeros_like(a)
    free[150:190, 240:400] = True
    np.testing.assert_array_equal(out[free], img[free])
    assert (out[:40, :80] != img[:40, :80]).any()


@pytest.mark.parametrize("names", [
    ["chat é", "猫", "🐶 dog", "Ωμέγα"],
    ["\ud800 lone surrogate", "line\nbreak", "", "x" * 500],
])
def test_masks_legend_unicode_names_do_not_crash(names):
    img = _img(160, 220)
    masks = [None] * len(names)
    masks[0] = np.ones((160, 220), bool)
    out = R.draw_masks_legend(img, masks, names)
    assert out.shape == img.shape and out.dtype == np.uint8


def test_masks_legend_many_labels_small_image_and_errors():
    img = _img(40, 60)
    out = R.draw_masks_legend(img, [None] * 50, [f"label {i}" for i in range(50)])
    assert out.shape == img.shape
    np.testing.assert_array_equal(R.draw_masks_legend(img, [], []), img)
    with pytest.raises(ValueError):
        R.draw_masks_legend(img, [None], ["a", "b"])


# ------------------------------------------------------------------------- histogram


def _cols(img: np.ndarray, colour, rows=slice(-45, -30)) -> np.ndarray:
    hit = (img[rows] == np.array(colour, np.uint8)).all(axis=2).any(axis=0)
    return np.flatnonzero(hit)


def test_histogram_threshold_line_at_right_x():
    v = np.linspace(0.0, 1.0, 2000)
    h0 = H.histogram_image(v, 0.0)
    h1 = H.histogram_image(v, 1.0)
    hq = H.histogram_image(v, 0.25)
    assert h0.shape == (200, 480, 3) and h0.dtype == np.uint8
    bars = _cols(H.histogram_image(v, None), H.HIST_BAR_RGB)
    x0, x1, xq = (_cols(h, H.THRESHOLD_RGB).mean() for h in (h0, h1, hq))
    assert abs(x0 - bars.min()) <= 2 and abs(x1 - bars.max()) <= 2
    assert abs(xq - (x0 + 0.25 * (x1 - x0))) <= 2
    assert len(_cols(H.histogram_image(v, None), H.THRESHOLD_RGB)) == 0


def test_histogram_out_of_range_threshold_clamped_and_suggested_drawn():
    v = np.random.default_rng(0).normal(0.1, 0.02, 5000)
    lo = _cols(H.histogram_image(v, float(v.min())), H.THRESHOLD_RGB).mean()
    hi = _cols(H.histogram_image(v, float(v.max())), H.THRESHOLD_RGB).mean()
    assert _cols(H.histogram_image(v, -5.0), H.THRESHOLD_RGB).mean() == lo
    assert _cols(H.histogram_image(v, 5.0), H.THRESHOLD_RGB).mean() == hi
    img = H.histogram_image(v, 0.1, suggested=0.12, width=300, height=150, title="猫 🐱")
    assert img.shape == (150, 300, 3)
    xs, xt = _cols(img, H.SUGGESTED_RGB).mean(), _cols(img, H.THRESHOLD_RGB).mean()
    assert xs > xt
    assert len(_cols(H.histogram_image(v, 0.1), H.SUGGESTED_RGB)) == 0


def test_histogram_constant_empty_and_nonfinite_inputs():
    c = H.histogram_image(np.full((7, 7), 0.3, np.float32), 0.3)
    bars = _cols(H.histogram_image(np.full(10, 0.3), None), H.HIST_BAR_RGB)
    assert abs(_cols(c, H.THRESHOLD_RGB).mean() - (bars.min() + bars.max()) / 2) <= 2
    assert H.histogram_image(np.array([]), 0.1).shape == (200, 480, 3)
    assert H.histogram_image(np.array([0.1, np.inf, np.nan, 0.2]), np.nan).shape == (200, 480, 3)


# ------------------------------------------------------------------------ label_slug

_LABELS = ["cat", "Cat", "CAT", "cat dog", "cat_dog", "cat/dog", "cat\\dog", "cat+grass",
           "..", ".", "", " ", "../../etc/passwd", "猫", "犬", "chat é", "chat è", "🐶",
           "a" * 60, "a" * 61, "a" * 100, "a" * 101, "-rf", ".hidden", "x.", "a..b", "con"]


def test_label_slug_is_safe():
    for label in _LABELS:
        s = label_slug(label)
        assert s and len(s) <= 60, (label, s)
        assert re.fullmatch(r"[A-Za-z0-9_+.-]+", s), (label, s)
        assert ".." not in s and "/" not in s and "\\" not in s
        assert not s.startswith((".", "-")) and s not in {".", ".."}
        assert s == label_slug(label)  # deterministic


def test_label_slug_keeps_simple_and_separates_distinct_labels():
    assert label_slug("cat+grass") == "cat+grass"
    assert label_slug("cat_dog") == "cat_dog"
    assert label_slug("cat dog").startswith("cat_dog")
    slugs = [label_slug(x) for x in _LABELS]
    assert len(set(slugs)) == len(_LABELS)
    # no two differ only by case (case-insensitive file systems)
    assert len({s.lower() for s in slugs}) == len(_LABELS)


# ------------------------------------------------------------------------ encode_png


def test_encode_png_roundtrip():
    img = _img(30, 40)
    back = np.asarray(Image.open(io.BytesIO(encode_png(img))).convert("RGB"))
    np.testing.assert_array_equal(back, img)
    with pytest.raises(ValueError):
        encode_png(img.astype(np.float32))
