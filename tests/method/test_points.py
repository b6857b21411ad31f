"""SAM prompt points (docs/method.md §6), map normalisation with a threshold (§5), and
`explain.view_label`, on raw maps built by hand so every expectation is worked out here.

Helper facts used throughout:
- The 14 -> 7 bilinear down-sampling (align_corners=False) samples source position
  2j + 0.5, i.e. it is exactly the mean of each 2x2 block; a map made with
  `np.kron(small, ones((2, 2)))` therefore down-samples back to `small` exactly.
- With W = H = 70 and a 7x7 grid each cell is 10 px: cell i -> (10*(i%7) + 5, 10*(i//7) + 5).
"""

from __future__ import annotations

import numpy as np
import pytest

from surgery.method.results import LabelMaps
from surgery.method.views import view_label
from surgery.method.labels import Label
from surgery.method.maps import is_found, mean_of_normalised, minmax, normalise_map
from surgery.method.points import combined_points, downsample, points_for_sam


def up(small: np.ndarray) -> np.ndarray:
    """(7, 7) -> (14, 14) raw map whose 2x2 down-sampling is `small` again."""
    return np.kron(np.asarray(small, dtype=np.float32), np.ones((2, 2), dtype=np.float32))


def grid7(values: dict[int, float], rest: float = 0.0) -> np.ndarray:
    small = np.full(49, rest, dtype=np.float32)
    for cell, value in values.items():
        small[cell] = value
    return small.reshape(7, 7)


def cell70(i: int) -> tuple[int, int]:
    return 10 * (i % 7) + 5, 10 * (i // 7) + 5


def split(points: np.ndarray) -> tuple[set, set]:
    assert points.ndim == 2 and points.shape[1] == 3
    assert np.issubdtype(points.dtype, np.integer)
    assert set(points[:, 2].tolist()) <= {0, 1}
    pos = {(int(x), int(y)) for x, y, lab in points if lab == 1}
    neg = {(int(x), int(y)) for x, y, lab in points if lab == 0}
    return pos, neg


def n_pos_neg(points: np.ndarray) -> tuple[int, int]:
    return int((points[:, 2] == 1).sum()), int((points[:, 2] == 0).sum())


# --- down-sampling -------------------------------------------------------------

def test_downsample_is_the_2x2_block_mean():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(14, 14)).astype(np.float32)
    expected = raw.reshape(7, 2, 7, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(downsample(raw), expected, atol=1e-6)


# --- positions and counts --------------------------------------------------------

def blob_map() -> np.ndarray:
    """14x14: bright 4x4 blob top-left (rows/cols 0-3), dark 4x4 bottom-right (rows/cols 10-13)."""
    raw = np.zeros((14, 14), dtype=np.float32)
    raw[0:4, 0:4] = 1.0
    raw[10:14, 10:14] = -1.0
    return raw


def test_positives_in_the_bright_blob_negatives_in_the_dark_corner_rocket_size():
    # W=640, H=427: w = h = 7, W/w = 91.43, H/h = 61.
    # Blob -> down-sampled cells 0, 1, 7, 8 (value 1); dark -> cells 40, 41, 47, 48 (value -1);
    # min-max: blob 1, dark 0, rest 0.5 -> k = min(4, 24) = 4.
    # cell 0: x = 0.5*640/7 = 45.7 -> 45, y = 0.5*61 = 30.5 -> 30; cell 1: x = 1.5*640/7 = 137.1 -> 137;
    # cell 7: y = 1.5*61 = 91.5 -> 91; cell 40: x = 5.5*640/7 = 502.9 -> 502, y = 5.5*61 = 335.5 -> 335;
    # cell 41: x = 6.5*640/7 = 594.3 -> 594; cell 47: y = 6.5*61 = 396.5 -> 396.
    points = points_for_sam(blob_map(), 640, 427)
    pos, neg = split(points)
    assert n_pos_neg(points) == (4, 4)
    assert pos == {(45, 30), (137, 30), (45, 91), (137, 91)}
    assert neg == {(502, 335), (594, 335), (502, 396), (594, 396)}
    # The blob covers pixels [0, 4*640/14) x [0, 4*427/14) of the image; the dark corner the rest.
    for x, y in pos:
        assert x < 4 * 640 / 14 and y < 4 * 427 / 14
    for x, y in neg:
        assert x >= 10 * 640 / 14 and y >= 10 * 427 / 14
    # positives first, then negatives
    assert points[:4, 2].tolist() == [1] * 4 and points[4:, 2].tolist() == [0] * 4


def test_pixel_formula_for_the_last_cell_stays_inside_the_image():
    # Only cell 48 bright, cell 0 dark: x = 6.5*W/7, y = 6.5*H/7, truncated, always < W, H.
    for width, height in [(640, 427), (7, 7), (9, 5), (1000, 13)]:
        raw = up(grid7({48: 1.0, 0: -1.0}))
        points = points_for_sam(raw, width, height)
        pos, neg = split(points)
        assert pos == {(int(6.5 * width / 7), int(6.5 * height / 7))}
        assert neg == {(int(0.5 * width / 7), int(0.5 * height / 7))}
        assert all(0 <= x < width and 0 <= y < height for x, y in pos | neg)


def test_count_rule_counts_cells_at_or_above_point_eight_after_minmax():
    # min 0 (cell 48), max 1 (cell 10): min-max is the identity. Cells >= 0.8: 10, 11, 12, 17 (0.8 itself
    # counts); 18 at 0.79 does not. Others 0.3 + 0.001*i, so the 4 lowest are 48, 0, 1, 2.
    small = np.array([0.3 + 0.001 * i for i in range(49)], dtype=np.float32)
    small[[10, 11, 12, 17, 18, 48]] = [1.0, 0.9, 0.85, 0.8, 0.79, 0.0]
    points = points_for_sam(up(small.reshape(7, 7)), 70, 70)
    pos, neg = split(points)
    assert n_pos_neg(points) == (4, 4)
    assert pos == {cell70(i) for i in (10, 11, 12, 17)}
    assert neg == {cell70(i) for i in (48, 0, 1, 2)}


def test_count_rule_is_independent_of_offset_and_scale():
    small = np.array([0.3 + 0.001 * i for i in range(49)], dtype=np.float32)
    small[[10, 11, 12, 17, 18, 48]] = [1.0, 0.9, 0.85, 0.81, 0.79, 0.0]
    base = points_for_sam(up(small.reshape(7, 7)), 70, 70)
    shifted = points_for_sam(up(small.reshape(7, 7) * 0.05 - 0.3), 70, 70)
    assert split(base) == split(shifted)


def test_count_is_capped_at_half_the_cells():
    # 30 bright cells -> k = min(30, 49 // 2) = 24: 24 positives, 24 negatives.
    bright = list(range(30))
    points = points_for_sam(up(grid7({i: 1.0 for i in bright}, rest=0.0)), 70, 70)
    pos, neg = split(points)
    assert n_pos_neg(points) == (24, 24)
    assert pos <= {cell70(i) for i in bright}
    # The 24 lowest: all 19 dark cells and 5 of the bright ones.
    assert {cell70(i) for i in range(30, 49)} <= neg


def test_single_bright_cell_gives_one_pair():
    points = points_for_sam(up(grid7({24: 2.0, 3: -1.0}, rest=0.5)), 70, 70)
    assert split(points) == ({cell70(24)}, {cell70(3)})


def test_constant_map_gives_no_points_and_no_nan():
    for raw in (np.zeros((14, 14), np.float32), np.full((14, 14), 0.37, np.float32)):
        points = points_for_sam(raw, 640, 427)
        assert points.shape == (0, 3)
        assert points_for_sam(raw, 640, 427, threshold=0.1).shape == (0, 3)


# --- threshold -------------------------------------------------------------------

def graded_map() -> np.ndarray:
    """Raw range [-0.2, 0.3]: min-max >= 0.8 means raw >= 0.2. Cells 3, 4, 5, 6 are
    0.30, 0.27, 0.22, 0.21; cell 42 is the minimum -0.2, cells 43, 44, 45 next (-0.19, -0.18, -0.17)."""
    small = np.array([-0.1 + 0.002 * i for i in range(49)], dtype=np.float32)  # -0.1 .. -0.004
    small[[3, 4, 5, 6]] = [0.30, 0.27, 0.22, 0.21]
    small[[42, 43, 44, 45]] = [-0.2, -0.19, -0.18, -0.17]
    return up(small.reshape(7, 7))


def test_without_threshold_all_relatively_strong_cells_are_positive():
    pos, neg = split(points_for_sam(graded_map(), 70, 70))
    assert pos == {cell70(i) for i in (3, 4, 5, 6)}
    assert neg == {cell70(i) for i in (42, 43, 44, 45)}


def test_threshold_in_the_middle_keeps_only_cells_at_or_above_it():
    points = points_for_sam(graded_map(), 70, 70, threshold=0.25)
    pos, neg = split(points)
    assert pos == {cell70(3), cell70(4)}  # 0.30 and 0.27; 0.22 and 0.21 are below 0.25
    assert neg == {cell70(42), cell70(43)}  # as many negatives as positives: the two lowest
    assert n_pos_neg(points) == (2, 2)
    # a threshold exactly at a cell's value includes it
    pos, _ = split(points_for_sam(graded_map(), 70, 70, threshold=0.27))
    assert pos == {cell70(3), cell70(4)}


def test_threshold_below_everything_is_like_no_threshold():
    raw = graded_map()
    assert split(points_for_sam(raw, 70, 70, threshold=-5.0)) == split(points_for_sam(raw, 70, 70))


def test_threshold_above_the_maximum_gives_nothing():
    raw = graded_map()
    t = 0.31
    assert not is_found(raw, t)
    assert points_for_sam(raw, 640, 427, threshold=t).shape == (0, 3)
    display = normalise_map(raw, t)
    assert display.shape == raw.shape and not display.any()


def test_threshold_is_compared_with_the_down_sampled_map():
    # One pixel at 1.0 in the top-left 2x2 block (cell mean 0.25), a 2x2 block of 0.3 bottom-right:
    # the raw maximum passes t = 0.5 but no down-sampled cell does -> no positives.
    raw = np.zeros((14, 14), dtype=np.float32)
    raw[0, 0] = 1.0
    raw[12:14, 12:14] = 0.3
    assert is_found(raw, 0.5)
    assert points_for_sam(raw, 70, 70, threshold=0.5).shape == (0, 3)
    # at t = 0.3 the bottom-right cell (mean 0.3) qualifies, the top-left one (0.25) does not
    pos, neg = split(points_for_sam(raw, 70, 70, threshold=0.3))
    assert pos == {cell70(48)} and len(neg) == 1


def test_is_found():
    raw = np.array([[0.1, 0.2], [0.3, 0.25]], dtype=np.float32)
    assert is_found(raw, None)
    assert is_found(raw, 0.3)  # the maximum reaching t counts
    assert is_found(raw, -1.0)
    assert not is_found(raw, 0.3001)


# --- display normalisation -------------------------------------------------------

def test_minmax_and_normalise_map_without_threshold():
    raw = np.array([[0.0, 1.0], [2.0, 4.0]], dtype=np.float32)
    expected = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(minmax(raw), expected)
    np.testing.assert_allclose(normalise_map(raw), expected)
    np.testing.assert_allclose(normalise_map(raw - 7.0), expected)  # stretches any range


def test_normalise_map_with_threshold_scales_between_t_and_max():
    raw = np.array([[0.0, 0.5], [1.0, 2.0], [3.0, -4.0]], dtype=np.float32)
    out = normalise_map(raw, 1.0)
    # below t -> 0; (v - 1) / (3 - 1) for the rest
    np.testing.assert_allclose(out, np.array([[0, 0], [0, 0.5], [1, 0]], dtype=np.float32), atol=1e-7)
    assert out.dtype == np.float32


def test_normalise_map_with_threshold_is_monotonic_with_max_one():
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(14, 14)).astype(np.float32)
    t = float(np.quantile(raw, 0.6))
    out = normalise_map(raw, t)
    assert out.shape == raw.shape
    assert np.all(np.isfinite(out))
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out[np.unravel_index(raw.argmax(), raw.shape)] == pytest.approx(1.0)
    assert np.all(out[raw < t] == 0)
    assert np.all(out[raw > t] > 0)
    order = np.argsort(raw, axis=None, kind="stable")
    assert np.all(np.diff(out.reshape(-1)[order]) >= 0)


def test_constant_map_normalises_to_zeros_without_nan():
    for value in (0.0, 0.37, -2.0):
        raw = np.full((14, 14), value, dtype=np.float32)
        out = normalise_map(raw)
        assert np.all(out == 0) and out.shape == raw.shape
        assert np.all(minmax(raw) == 0)
        for t in (value - 1.0, value, value + 1.0):
            assert np.all(np.isfinite(normalise_map(raw, t)))
        assert not normalise_map(raw, value + 1.0).any()


def test_mean_of_normalised_parts():
    a = np.array([[0.0, 2.0], [1.0, 2.0]], dtype=np.float32)   # min-max: 0, 1, .5, 1
    b = np.array([[10.0, 10.0], [30.0, 20.0]], dtype=np.float32)  # min-max: 0, 0, 1, .5
    np.testing.assert_allclose(mean_of_normalised(np.stack([a, b])),
                               np.array([[0.0, 0.5], [0.75, 0.75]], dtype=np.float32))


# --- combined targets --------------------------------------------------------------

def combined_parts() -> np.ndarray:
    """Part A (large scale): cell 0 = 100, cell 42 = -100, cell 44 = -80, rest 0.
    Part B (small scale): cell 6 = 1, cell 48 = -1, cell 44 = -0.9, cell 42 = -0.5, rest 0.

    Own maps: A has 1 cell >= 0.8 (cell 0, lowest 42); B has 1 (cell 6, lowest 48).
    Min-max: A: 0 -> 1, 42 -> 0, 44 -> 0.1, rest 0.5;  B: 6 -> 1, 48 -> 0, 44 -> 0.05, 42 -> 0.25, rest 0.5.
    Mean: 0 and 6 -> 0.75, 44 -> 0.075, 42 -> 0.125, 48 -> 0.25, rest 0.5
    -> 2 cells >= 0.8 after min-max, negatives = the 2 lowest: 44 and 42.
    (The mean of the *raw* parts would have 1 strong cell; each part's own negatives would be 42 and 48.)
    """
    a = grid7({0: 100.0, 42: -100.0, 44: -80.0})
    b = grid7({6: 1.0, 48: -1.0, 44: -0.9, 42: -0.5})
    return np.stack([up(a), up(b)])


def test_combined_points_positives_per_part_negatives_from_the_normalised_mean():
    points = combined_points(combined_parts(), 70, 70)
    pos, neg = split(points)
    assert n_pos_neg(points) == (2, 2)
    assert pos == {cell70(0), cell70(6)}
    assert neg == {cell70(44), cell70(42)}


def test_combined_positives_are_the_union_of_each_parts_positives():
    parts = combined_parts()
    own = [split(points_for_sam(part, 70, 70))[0] for part in parts]
    pos, _ = split(combined_points(parts, 70, 70))
    assert pos == own[0] | own[1]


def test_combined_part_below_threshold_contributes_no_positives():
    parts = combined_parts()
    points = combined_points(parts, 70, 70, threshold=2.0)  # A's max 100 passes, B's max 1 does not
    pos, neg = split(points)
    assert pos == {cell70(0)}
    assert neg and neg <= {cell70(44), cell70(42)}


def test_combined_all_parts_below_threshold_gives_no_points():
    assert combined_points(combined_parts(), 70, 70, threshold=101.0).shape == (0, 3)


# --- view_label -------------------------------------------------------------------------

def label_maps(parts_text: tuple[str, ...], raw_parts: np.ndarray) -> LabelMaps:
    label = Label(parts_text)
    surgery_map = mean_of_normalised(raw_parts) if label.is_combined else raw_parts[0]
    clip_map = np.linspace(0, 1, 196, dtype=np.float32).reshape(14, 14)
    return LabelMaps(label, parts={"clip": clip_map[None], "surgery": raw_parts},
                     maps={"clip": clip_map, "surgery": surgery_map}, presence=0.5, points_from="surgery")


def test_view_label_single_found_and_not_found():
    lm = label_maps(("rocket",), blob_map()[None])
    found = view_label(lm, 640, 427, None)
    assert found.found and found.text == "rocket"
    assert split(found.points) == split(points_for_sam(blob_map(), 640, 427))
    np.testing.assert_allclose(found.displays["surgery"], minmax(blob_map()))

    missing = view_label(lm, 640, 427, 1.5)  # max is 1.0
    assert not missing.found
    assert missing.points.shape == (0, 3)
    assert not missing.displays["surgery"].any()


def test_view_label_found_only_with_points():
    raw = np.zeros((14, 14), dtype=np.float32)
    raw[0, 0] = 1.0  # raw max passes 0.5, no down-sampled cell does
    view = view_label(label_maps(("x",), raw[None]), 70, 70, 0.5)
    assert not view.found and view.points.shape == (0, 3)


def test_view_label_combined_all_parts_below_threshold_is_not_found():
    lm = label_maps(("cat", "grass"), combined_parts())
    view = view_label(lm, 70, 70, 150.0)
    assert not view.found
    assert view.points.shape == (0, 3)
    assert not view.displays["surgery"].any()


def test_view_label_combined_found():
    lm = label_maps(("cat", "grass"), combined_parts())
    view = view_label(lm, 70, 70, None)
    assert view.found
    assert split(view.points) == ({cell70(0), cell70(6)}, {cell70(44), cell70(42)})
    one_part = view_label(lm, 70, 70, 2.0)
    assert one_part.found and split(one_part.points)[0] == {cell70(0)}


def test_fit_long_side_scales_only_larger_images():
    from surgery.images import fit_long_side

    wide = np.random.default_rng(0).integers(0, 256, size=(1000, 3000, 3), dtype=np.uint8)
    working = fit_long_side(wide, 1024)
    scaled = working.rgb
    assert scaled.shape == (341, 1024, 3) and scaled.dtype == np.uint8 and scaled.flags.c_contiguous
    assert working.scaled and working.source_size == (1000, 3000)
    assert "3000×1000" in working.note and "1024×341" in working.note
    assert abs(float(scaled.mean()) - float(wide.mean())) < 1.0  # area averaging, not a crop
    tall = wide.transpose(1, 0, 2)
    assert fit_long_side(tall, 1024).rgb.shape == (1024, 341, 3)
    assert fit_long_side(np.zeros((10, 3000, 3), np.uint8), 1024).rgb.shape == (8, 1024, 3)  # never under 8 px
    for image, limit in ((wide[:600, :800], 1024), (wide, 0)):
        kept = fit_long_side(image, limit)
        assert kept.rgb is image and kept.note is None and not kept.scaled


@pytest.mark.parametrize("requested, patch, expected", [
    (512, 16, 512), (500, 16, 496), ("1020", 16, 1024), (1024, 14, 1022), (230, 32, 224),
    (224, 30, 240),  # the nearest multiple (210) is under the minimum: one step up
    (1024, 40, 1000),  # the nearest multiple (1040) is over the maximum: one step down
])
def test_resolution_choice_snaps_to_a_usable_multiple_of_the_patch(requested, patch, expected):
    from surgery.method.options import resolution_value, snap_resolution

    snapped, note = snap_resolution(resolution_value(requested), patch)
    assert snapped == expected and snapped % patch == 0 and 224 <= snapped <= 1024
    assert (note is None) == (snapped == int(requested))
