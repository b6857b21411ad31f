"""`<method>+sam`: the combination rule on hand-made masks, and a run with the tiny SAM checkpoint through
the real loaders (one SAM encoding per image, one decoder call per class the dense prediction found)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from surgery.cli import main
from surgery.evaluate.sam import class_points, combine_masks, found_classes

ROOT = Path(__file__).resolve().parents[2]
DATASET = ROOT / "tests" / "data" / "evaluate" / "voc_tiny"
TINY_CLIP = ROOT / "tests" / "data" / "parity" / "weights.safetensors"
TINY_SAM = ROOT / "tests" / "data" / "sam_tiny.safetensors"


def test_overlaps_go_to_the_most_probable_class_and_uncovered_pixels_to_the_background():
    prediction = np.array([[1, 1, 2, 2, 0]], dtype=np.uint8)
    probabilities = torch.tensor([[[0.1, 0.1, 0.1, 0.1, 0.9]],
                                  [[0.6, 0.3, 0.3, 0.2, 0.05]],
                                  [[0.3, 0.6, 0.6, 0.7, 0.05]]])
    masks = {1: np.array([[1, 1, 1, 0, 0]], bool), 2: np.array([[0, 1, 1, 0, 0]], bool)}
    with_background = combine_masks(prediction, masks, probabilities, has_background=True)
    # pixel 0: only class 1's mask; pixels 1, 2: both masks, class 2 more probable; pixels 3, 4: no mask -> 0
    assert with_background.tolist() == [[1, 2, 2, 0, 0]]
    without = combine_masks(prediction, masks, probabilities, has_background=False)
    assert without.tolist() == [[1, 2, 2, 2, 0]]  # uncovered pixels keep the dense prediction
    tie = torch.full((3, 1, 5), 0.5)
    assert combine_masks(prediction, masks, tie, True).tolist() == [[1, 1, 1, 0, 0]]  # ties: lowest class
    assert combine_masks(prediction, {}, probabilities, True).tolist() == [[0, 0, 0, 0, 0]]


def test_found_classes_leave_out_the_background_only_where_there_is_one():
    prediction = np.array([[0, 3, 3, 7]], dtype=np.uint8)
    assert found_classes(prediction, True) == [3, 7]
    assert found_classes(prediction, False) == [0, 3, 7]


def test_points_come_from_the_strongest_cells_of_the_class_map():
    probability = torch.zeros(60, 80)
    probability[10:20, 50:70] = 1.0
    points = class_points(probability, width=80, height=60)
    positives = points[points[:, 2] == 1]
    assert len(positives) > 0 and len(points) == 2 * len(positives)
    assert ((positives[:, 0] >= 45) & (positives[:, 0] < 75) & (positives[:, 1] >= 5) & (positives[:, 1] < 25)).all()


def test_sam_scores_each_method_with_one_encoding_per_image(tmp_path, calls):
    out = tmp_path / "out"
    calls.clear()
    code = main(["evaluate", str(DATASET), "--dataset", "voc21", "--methods", "maskclip,sclip", "--sam",
                 "--clip-checkpoint", str(TINY_CLIP), "--sam-checkpoint", str(TINY_SAM), "--device", "cpu",
                 "--save-predictions", "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["methods"]) == ["maskclip", "sclip", "maskclip+sam", "sclip+sam"]
    assert calls.count("SAM image encoder") == 2  # once per image, shared by the methods
    decoder_calls = 0
    for sample in ("2007_000001", "2007_000002"):
        for method in ("maskclip", "sclip"):
            dense = np.array(Image.open(out / "predictions" / method / f"{sample}.png"))
            refined = np.array(Image.open(out / "predictions" / f"{method}+sam" / f"{sample}.png"))
            found = found_classes(dense, True)
            decoder_calls += len(found)
            assert refined.shape == dense.shape
            assert set(np.unique(refined)) <= set(found) | {0}  # SAM only places classes the method found
    assert calls.count("SAM mask decoder") == decoder_calls
    assert all(metrics["methods"][name]["mIoU"] is not None for name in metrics["methods"])
