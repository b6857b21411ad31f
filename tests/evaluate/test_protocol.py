"""The protocol's steps on hand-made inputs, against docs/evaluation.md (EVALUATION.md §3-§6)'s own
examples and rules: resize sizes, window starts, the synonym max, the area and probability rules,
PAMR against a kernel-by-kernel transcription, and the metrics on counts worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from surgery.clip.guided_methods import pamr
from surgery.evaluate.metrics import image_areas, summarise
from surgery.evaluate.protocol import (area_rule, class_probabilities, classify, keep_ratio_size, merge_windows,
                                       pad_for_patches, resize_image, window_boxes, window_spans)


@pytest.mark.parametrize("width, height, scale, expected", [
    (500, 375, (2048, 336), (448, 336)),
    (333, 500, (2048, 336), (336, 505)),  # 504.5 rounds up
    (500, 255, (2048, 336), (659, 336)),
    (255, 320, (2048, 336), (336, 422)),  # enlarged
    (448, 336, (2048, 336), (448, 336)),
    (2048, 1024, (2048, 560), (1120, 560)),
    (3000, 400, (2048, 336), (2048, 273)),  # aspect ratio above 6.1: the long side caps the scale
])
def test_keep_ratio_sizes_are_the_documented_ones(width, height, scale, expected):
    new_height, new_width = keep_ratio_size(height, width, short_side=scale[1], long_side=scale[0])
    assert (new_width, new_height) == expected


def test_resize_is_opencv_bilinear_on_uint8_and_a_no_op_at_the_same_size():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    assert resize_image(image, (7, 9)) is image
    resized = resize_image(image, (14, 18))
    assert resized.dtype == np.uint8 and resized.shape == (14, 18, 3)
    # OpenCV's bilinear at scale 2: output pixel centre (i + 0.5) / 2 - 0.5 in the source, rounded to uint8
    y, x = 5, 7
    sy, sx = (y + 0.5) / 2 - 0.5, (x + 0.5) / 2 - 0.5
    y0, x0 = int(math.floor(sy)), int(math.floor(sx))
    fy, fx = sy - y0, sx - x0
    src = image.astype(np.float64)
    value = ((1 - fy) * (1 - fx) * src[y0, x0] + (1 - fy) * fx * src[y0, x0 + 1]
             + fy * (1 - fx) * src[y0 + 1, x0] + fy * fx * src[y0 + 1, x0 + 1])
    assert np.abs(resized[y, x].astype(int) - np.round(value)).max() <= 1


@pytest.mark.parametrize("length, starts", [(336, [0, 112]), (422, [0, 112, 198]), (505, [0, 112, 224, 281]),
                                            (659, [0, 112, 224, 336, 435]), (224, [0]), (150, [0])])
def test_window_starts_are_the_documented_ones(length, starts):
    spans = window_spans(length, 224, 112)
    assert [a for a, _ in spans] == starts
    assert all(b - a == min(224, length) for a, b in spans) and spans[-1][1] == length


def test_windows_cover_rows_outer_columns_inner_and_whole_image_mode():
    boxes = window_boxes(336, 659, 224, 112)
    assert len(boxes) == 2 * 5 and boxes[0] == (0, 224, 0, 224) and boxes[4] == (0, 224, 435, 659)
    assert boxes[5] == (112, 336, 0, 224)
    assert window_boxes(336, 448, 0, 112) == [(0, 336, 0, 448)]


def test_merging_averages_upsampled_windows_where_they_overlap():
    first = torch.zeros(1, 2, 2)
    second = torch.full((1, 2, 2), 4.0)
    merged = merge_windows([first, second], [(0, 4, 0, 4), (0, 4, 2, 6)], (4, 6))
    assert torch.equal(merged[0, :, :2], torch.zeros(4, 2))
    assert torch.equal(merged[0, :, 2:4], torch.full((4, 2), 2.0))
    assert torch.equal(merged[0, :, 4:], torch.full((4, 2), 4.0))
    ramp = torch.tensor([[[0.0, 1.0]]])  # (1, 1, 2) -> 4 wide, half-pixel centres, edges clamped
    assert merge_windows([ramp], [(0, 1, 0, 4)], (1, 4))[0, 0].tolist() == [0.0, 0.25, 0.75, 1.0]


def test_pad_for_patches_centres_the_padding():
    assert pad_for_patches(224, 224, 16) == (0, 0, 0, 0)
    assert pad_for_patches(100, 37, 16) == (5, 6, 6, 6)  # width 37 -> 48 (5 left, 6 right), height 100 -> 112


def _logits(*columns):
    """(Q, 1, N) logits from per-pixel columns of query scores."""
    return torch.tensor(np.array(columns, dtype=np.float32).T[:, None, :])


def test_class_probability_is_the_max_over_synonyms_of_a_softmax_over_all_queries():
    logits = _logits([0.2, 0.1, 0.3, 0.0], [0.0, 0.5, 0.4, 0.1])
    query_class = (0, 1, 1, 2)  # class 1 has two synonyms
    probabilities = class_probabilities(logits, query_class, 3, logit_scale=10.0)
    softmax = torch.softmax(logits * 10.0, dim=0)
    assert torch.allclose(probabilities[0], softmax[0])
    assert torch.allclose(probabilities[1], torch.maximum(softmax[1], softmax[2]))
    assert torch.allclose(probabilities[2], softmax[3])


def test_area_rule_removes_small_object_classes_relative_to_object_pixels_only():
    # 10 pixels: argmax background on 4, class 1 on 5, class 2 on 1. N = 6 object pixels, 0.1 * N = 0.6,
    # so class 2 (1 pixel) stays (1 > 0.6); with threshold 0.2 (1.2) it goes.
    probs = torch.zeros(3, 1, 10)
    probs[0, 0, :4], probs[1, 0, 4:9], probs[2, 0, 9] = 0.9, 0.8, 0.7
    probs[1, 0, 9] = 0.2  # the removed pixel's best remaining class is 1, not the background
    assert torch.equal(area_rule(probs, 0.1), probs)
    zeroed = area_rule(probs, 0.2)
    assert zeroed[2].abs().sum() == 0 and torch.equal(zeroed[:2], probs[:2])
    assert classify(torch.log(probs + 1e-9), (0, 1, 2), 3, 1.0, 0.0, 0.2)[0].tolist() == [0] * 4 + [1] * 6
    # strict: exactly at the threshold is removed (5 of 10 object pixels at 0.5)
    tie = torch.zeros(3, 1, 10)
    tie[1, 0, :5], tie[2, 0, 5:] = 1.0, 0.9
    assert area_rule(tie, 0.5)[1:].abs().sum() == 0
    none = torch.zeros(3, 1, 4)
    none[0] = 1.0  # no object pixel: N = 0, every object class removed, background kept
    assert area_rule(none, 0.1)[0].sum() == 4


def test_probability_rule_runs_after_the_area_rule_on_the_zeroed_probabilities():
    # One pixel: classes 1 and 2 nearly tied; class 2 is removed by the area rule, so the pixel falls
    # back to class 1, whose probability is below the threshold -> background.
    logits = torch.log(torch.tensor([[[0.02, 0.9, 0.9]], [[0.05, 0.05, 0.04]], [[0.93, 0.05, 0.06]]]))
    prediction = classify(logits, (0, 1, 2), 3, logit_scale=1.0, prob_threshold=0.1, area_threshold=0.4)
    # argmax before the rules: pixel 0 -> 2, pixels 1, 2 -> 0: object pixels N = 1, class 2 has 1 > 0.4: kept
    assert prediction[0].tolist() == [2, 0, 0]
    logits = torch.log(torch.tensor([[[0.02, 0.05, 0.01]], [[0.05, 0.2, 0.9]], [[0.93, 0.75, 0.09]]]))
    # argmax: pixels 0, 1 -> class 2, pixel 2 -> class 1; area rule 0.5 keeps class 2 (2 > 1.5), removes 1
    prediction = classify(logits, (0, 1, 2), 3, logit_scale=1.0, prob_threshold=0.1, area_threshold=0.5)
    assert prediction[0].tolist() == [2, 2, 0]  # pixel 2: class 1 removed, best left is class 2 at 0.09 < 0.1
    no_rules = classify(logits, (0, 1, 2), 3, logit_scale=1.0, prob_threshold=0.0, area_threshold=None)
    assert no_rules[0].tolist() == [2, 2, 1]


def test_ties_go_to_the_lowest_class():
    logits = torch.zeros(3, 1, 2)
    assert classify(logits, (0, 1, 2), 3, 40.0, 0.0, None)[0].tolist() == [0, 0]


def _pamr_by_kernels(image: torch.Tensor, mask: torch.Tensor, steps: int, dilations: tuple[int, ...]) -> torch.Tensor:
    """PAMR written as the upstream module computes it: 3x3 shift kernels applied with conv2d at each dilation."""
    def kernels(centre: bool) -> torch.Tensor:
        positions = [(i, j) for i in range(3) for j in range(3) if centre or (i, j) != (1, 1)]
        weight = torch.zeros(len(positions), 1, 3, 3)
        for k, (i, j) in enumerate(positions):
            weight[k, 0, i, j] = 1
        return weight

    def apply(x, weight):
        b, k, h, w = x.shape
        flat = x.reshape(b * k, 1, h, w)
        out = [F.conv2d(F.pad(flat, [d] * 4, mode="replicate"), weight, dilation=d) for d in dilations]
        return torch.cat(out, dim=1).reshape(b, k, -1, h, w)

    centre_minus = kernels(False) * -1
    centre_minus[:, 0, 1, 1] = 1
    aff = apply(image, centre_minus).abs()
    std = apply(image, kernels(True)).std(dim=2, keepdim=True)
    weights = torch.softmax((-aff / (1e-8 + 0.1 * std)).mean(dim=1, keepdim=True), dim=2)
    for _ in range(steps):
        mask = (apply(mask, kernels(False)) * weights).sum(dim=2)
    return mask


def test_pamr_matches_the_kernel_formulation():
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, 23, 29, generator=generator)
    mask = torch.randn(1, 5, 23, 29, generator=generator)
    expected = _pamr_by_kernels(image, mask, 3, (1, 4))
    assert torch.allclose(pamr(image, mask, 3, (1, 4), channels_per_pass=2), expected, atol=1e-5)
    assert torch.equal(pamr(image, mask, 3, (1, 4), channels_per_pass=2), pamr(image, mask, 3, (1, 4)))  # chunks
    assert not torch.allclose(expected, mask, atol=1e-2)  # it does change the logits


def test_metrics_follow_mmseg_on_counts_worked_out_by_hand():
    label = np.array([[0, 0, 1, 1], [0, 255, 1, 2], [3, 3, 255, 2]], dtype=np.uint8)  # 4 classes
    prediction = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [3, 0, 2, 2]], dtype=np.uint8)
    areas = image_areas(prediction, label, num_classes=5)
    # valid pixels (gt != 255): 10. class 0: I=2, P=3, G=3; 1: I=3, P=5, G=3; 2: I=1, P=1, G=2; 3: I=1, P=1, G=2;
    # class 4: nothing (NaN, left out)
    assert areas.tolist() == [[2, 3, 1, 1, 0], [3, 5, 1, 1, 0], [3, 3, 2, 2, 0]]
    metrics = summarise(areas, ["a", "b", "c", "d", "e"])
    ious = [2 / 4, 3 / 5, 1 / 2, 1 / 2]
    assert metrics["per_class"] == pytest.approx({"a": 50.0, "b": 60.0, "c": 50.0, "d": 50.0, "e": None})
    assert metrics["per_class"]["e"] is None
    assert metrics["mIoU"] == pytest.approx(100 * sum(ious) / 4, abs=1e-12)
    assert metrics["aAcc"] == pytest.approx(100 * 7 / 10, abs=1e-12)
    assert metrics["mAcc"] == pytest.approx(100 * (2 / 3 + 1 + 1 / 2 + 1 / 2) / 4, abs=1e-12)
    # a class predicted but absent from the ground truth counts with IoU 0
    absent = summarise(image_areas(np.array([[4, 0]], np.uint8), np.array([[0, 0]], np.uint8), 5), list("abcde"))
    assert absent["per_class"]["e"] == 0.0 and absent["mIoU"] == pytest.approx(25.0)
