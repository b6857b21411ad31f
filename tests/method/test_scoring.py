"""Scoring maps and masks against a person's mask (docs/method.md §10), checked against tests/iou_reference.py,
a re-implementation written from the document: bilinear half-pixel resizing in float64, the region rules, IoU."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from surgery.errors import InputError
from surgery.method.scoring import TruthMask, truth_mask_array, truth_scores
from surgery.method.views import apply_threshold
from surgery.request import build_request

from iou_reference import bilinear, close_counts, overlap as iou, stretched


@pytest.fixture(scope="module")
def maps(explainer, rocket):
    request = build_request("rocket, sky+smoke", resolution=224, methods="clip, surgery, naclip")
    return explainer.compute_maps(rocket, request.labels, request.maps)


def truth_box(height: int, width: int) -> np.ndarray:
    truth = np.zeros((height, width), bool)
    truth[height // 4: height // 2, width // 3: 2 * width // 3] = True
    return truth


def test_scores_with_the_threshold_off_use_each_stretched_map(maps):
    explanation = apply_threshold(maps, None)
    height, width = maps.height, maps.width
    truth = truth_box(height, width)
    record = truth_scores(explanation, TruthMask("rocket", truth), with_masks=False)
    assert record["label"] == "rocket" and record["area"] == int(truth.sum()) and record["sam_mask"] is None
    for method in ("clip", "surgery", "naclip"):
        raw = maps.labels[0].maps[method]
        expected = bilinear(stretched(raw), height, width) >= 0.5
        got = record["maps"][method]
        assert (got["region"], got["cut"]) == ("stretched", 0.5)
        assert close_counts(got, iou(expected, truth), height * width), (method, got)
        assert got["iou"] == pytest.approx(got["intersection"] / got["union"], abs=1e-6)


def test_with_a_threshold_the_points_map_is_cut_at_it_and_an_a_plus_b_label_at_any_part(maps):
    surgery = maps.labels[1].parts["surgery"]  # sky+smoke: two parts
    threshold = float(np.quantile(surgery, 0.9))
    explanation = apply_threshold(maps, threshold)
    height, width = maps.height, maps.width
    truth = truth_box(height, width)
    record = truth_scores(explanation, TruthMask("sky+smoke", truth), with_masks=False)
    expected = (bilinear(surgery[0], height, width) >= threshold) | (bilinear(surgery[1], height, width) >= threshold)
    got = record["maps"]["surgery"]
    assert (got["region"], got["cut"]) == ("threshold", threshold)
    assert close_counts(got, iou(expected, truth), height * width), got
    clip = record["maps"]["clip"]  # not on the threshold's scale: stretched, mean of the parts' stretched maps
    parts = maps.labels[1].parts["clip"]
    expected = bilinear((stretched(parts[0]) + stretched(parts[1])) / 2, height, width) >= 0.5
    assert clip["region"] == "stretched" and close_counts(clip, iou(expected, truth), height * width)


def test_a_label_with_no_mask_scores_zero_and_the_sam_mask_is_scored(maps):
    explanation = apply_threshold(maps, 9.0)  # nothing reaches 9: no region, no mask
    truth = truth_box(maps.height, maps.width)
    record = truth_scores(explanation, TruthMask("rocket", truth), with_masks=True)
    assert record["maps"]["surgery"]["iou"] == 0.0 and record["maps"]["surgery"]["area"] == 0
    assert record["sam_mask"] == {"area": 0, "intersection": 0, "union": int(truth.sum()), "iou": 0.0}


def png(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, "PNG")
    return buffer.getvalue()


def test_masks_are_read_from_white_pixels_or_from_painted_ones():
    grey = np.zeros((20, 30), np.uint8)
    grey[5:10, 5:20] = 255
    grey[0, 0] = 127  # below the middle: not the label's
    assert (truth_mask_array(png(grey, "L")) == (grey >= 128)).all()
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[2:4, 2:4] = (0, 0, 0, 255)  # painted black on a clear layer still counts
    assert truth_mask_array(png(rgba, "RGBA")).sum() == 4
    opaque = np.dstack([np.repeat(grey[:, :, None], 3, axis=2), np.full((20, 30), 255, np.uint8)])
    assert (truth_mask_array(png(opaque, "RGBA")) == (grey >= 128)).all()  # no transparency: brightness


def test_the_mask_is_fitted_to_the_working_image_or_refused():
    mask = np.zeros((60, 90), np.uint8)
    mask[:30, :45] = 255
    request = build_request("cat, dog", truth_label="Dog", truth_mask=mask)
    assert request.truth.label == "dog"
    fitted = request.for_image(30, 20).truth.mask  # the same shape at a third of the size
    assert fitted.shape == (20, 30) and fitted.sum() == 150
    with pytest.raises(InputError, match="not the image's shape"):
        request.for_image(30, 30)
    for kwargs, words in ((dict(truth_label="cat"), "or neither"), (dict(truth_mask=mask), "or neither"),
                          (dict(truth_label="fish", truth_mask=mask), "not one of the labels"),
                          (dict(truth_label="cat", truth_mask=np.zeros((9, 9), np.uint8)), "marks no pixel"),
                          (dict(truth_label="cat", truth_mask=b"not a picture"), "not an image")):
        with pytest.raises(InputError, match=words):
            build_request("cat, dog", **kwargs)
