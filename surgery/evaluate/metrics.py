"""mmseg `IoUMetric` semantics (docs/evaluation.md §6): per-image areas, summed over the dataset.

`image_areas` gives one image's (3, C) int64 counts [intersection, predicted, ground truth] per class
after dropping ignored pixels (255); like mmseg's `histc`, values outside 0..C-1 count nowhere (a
prediction on such a pixel still counts as predicted). `summarise` turns summed areas into
IoU / Acc per class and mIoU, mAcc (NaN classes left out), aAcc, in percent, unrounded; NaN becomes None.
"""

from __future__ import annotations

import math

import numpy as np

from .classes import IGNORE_INDEX


def image_areas(prediction: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """(3, C) int64: intersection, prediction and ground-truth pixel counts per class."""
    if prediction.shape != label.shape:
        raise ValueError(f"prediction {prediction.shape} and ground truth {label.shape} differ in size")
    valid = label != IGNORE_INDEX
    pred = prediction[valid].astype(np.int64)
    gt = label[valid].astype(np.int64)

    def counts(values: np.ndarray) -> np.ndarray:
        values = values[(values >= 0) & (values < num_classes)]
        return np.bincount(values, minlength=num_classes)[:num_classes]

    return np.stack([counts(pred[pred == gt]), counts(pred), counts(gt)]).astype(np.int64)


def _percent(value: float) -> float | None:
    return None if math.isnan(value) else 100.0 * value


def summarise(areas: np.ndarray, names: tuple[str, ...] | list[str]) -> dict:
    """mIoU, aAcc, mAcc and per-class IoU (percent) of areas (3, C) summed over a dataset."""
    intersection, predicted, truth = (areas[i].astype(np.float64) for i in range(3))
    union = predicted + truth - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / np.where(union > 0, union, 1), np.nan)
        accuracy = np.where(truth > 0, intersection / np.where(truth > 0, truth, 1), np.nan)
    total = truth.sum()
    names = unique_names(names)
    return {
        "mIoU": _percent(float(np.nanmean(iou))) if np.isfinite(iou).any() else None,
        "aAcc": _percent(float(intersection.sum() / total)) if total > 0 else None,
        "mAcc": _percent(float(np.nanmean(accuracy))) if np.isfinite(accuracy).any() else None,
        "per_class": {name: _percent(float(value)) for name, value in zip(names, iou)},
    }


def image_miou(areas: np.ndarray) -> float | None:
    """One image's mIoU in percent (classes with a union in that image), for ranking images."""
    intersection, predicted, truth = (areas[i].astype(np.float64) for i in range(3))
    union = predicted + truth - intersection
    present = union > 0
    return float(100.0 * np.mean(intersection[present] / union[present])) if present.any() else None


def unique_names(names: tuple[str, ...] | list[str]) -> list[str]:
    """The class names, a repeated one suffixed with its class index (metrics are keyed by name)."""
    seen: set[str] = set()
    out = []
    for index, name in enumerate(names):
        out.append(name if name not in seen else f"{name} #{index}")
        seen.add(name)
    return out
