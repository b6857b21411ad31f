"""`<method>+sam`: the demo's own pipeline on a benchmark image, turned into one label map.

For each class the method's dense prediction finds (every class present in its class map; the
background, class 0, is not prompted where the dataset has one):

1. its probability map C[c] (after the area rule, as the prediction used it) is averaged down to a
   `POINT_GRID` x `POINT_GRID` grid (the demo's grid at 512 px) and turned into SAM points by the
   engine's `points_for_sam` (the strongest cells positive, as many weakest negative);
2. SAM's best-scoring mask for those points (one decoder call) is the class's mask; a class that
   yields no points keeps its dense region as its mask.

Combination (`combine_masks`), per pixel:
- covered by one class's mask: that class;
- covered by several: the one with the highest C[c] there (ties: the lowest class index);
- covered by none: the background (0) where the dataset has one, else the dense prediction.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..method.points import points_for_sam

POINT_GRID = 32


def found_classes(prediction: np.ndarray, has_background: bool) -> list[int]:
    """The classes a dense prediction contains, background excluded where there is one."""
    present = [int(c) for c in np.unique(prediction)]
    return [c for c in present if not (has_background and c == 0)]


def class_points(probability: torch.Tensor, width: int, height: int) -> np.ndarray:
    """SAM points (n, 3) [x, y, label] for one class's (H, W) probability map."""
    grid = F.adaptive_avg_pool2d(probability.float()[None, None], (POINT_GRID, POINT_GRID))[0, 0]
    return points_for_sam(grid.cpu().numpy().astype(np.float32), width, height)


def combine_masks(prediction: np.ndarray, masks: dict[int, np.ndarray], probabilities: torch.Tensor,
                  has_background: bool) -> np.ndarray:
    """One (H, W) uint8 label map from per-class boolean masks, by the module's rule."""
    combined = np.zeros_like(prediction) if has_background else prediction.copy()
    if not masks:
        return combined
    classes = sorted(masks)
    stacked = np.stack([masks[c] for c in classes])  # (K, H, W)
    scores = probabilities[classes].float().cpu().numpy()
    scores = np.where(stacked, scores, -np.inf)
    best = np.asarray(classes, dtype=np.uint8)[scores.argmax(axis=0)]  # first maximum: lowest class
    covered = stacked.any(axis=0)
    combined[covered] = best[covered]
    return combined


def sam_prediction(segmenter, embedding, prediction: np.ndarray, probabilities: torch.Tensor,
                   has_background: bool) -> np.ndarray:
    """The `+sam` label map of one method on one image (`embedding` from `segmenter.embed(image)`)."""
    height, width = prediction.shape
    masks: dict[int, np.ndarray] = {}
    for c in found_classes(prediction, has_background):
        points = class_points(probabilities[c], width, height)
        if len(points) == 0:
            masks[c] = prediction == c
            continue
        mask = segmenter.predict(embedding, points)
        masks[c] = np.asarray(mask.candidates[mask.best], dtype=bool)
    return combine_masks(prediction, masks, probabilities, has_background)
