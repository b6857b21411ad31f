"""SAM prompt points from a raw similarity map (docs/method.md §6).

Faithful to the reference `similarity_map_to_points` (t=0.8, down_sample=2),
including its float32 pixel arithmetic, plus the optional raw threshold.
Points are int arrays (n, 3) of rows [x, y, label] with label 1 (positive) / 0 (negative).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .maps import minmax

RELATIVE_CUTOFF = 0.8
DOWN_SAMPLE = 2
NO_POINTS = np.zeros((0, 3), dtype=np.int64)


def downsample(raw_map: np.ndarray, down_sample: int = DOWN_SAMPLE) -> np.ndarray:
    """(g, g) -> (g//d, g//d) bilinear (align_corners=False), as the reference smooths the map."""
    side = raw_map.shape[-1]
    tensor = torch.from_numpy(np.ascontiguousarray(raw_map, dtype=np.float32)).reshape(1, 1, side, side)
    small = side // down_sample
    return F.interpolate(tensor, size=(small, small), mode="bilinear")[0, 0].numpy()


def _cell_pixels(cells: np.ndarray, side: int, width: int, height: int) -> np.ndarray:
    """Cell centres in pixels, in float32 and truncated to int like the reference."""
    index = torch.from_numpy(cells.astype(np.int64))
    x = torch.clamp((index % side + 0.5) * (float(width) / side), max=width - 1)
    y = torch.clamp((index // side + 0.5) * (float(height) / side), max=height - 1)
    return torch.stack([x, y], dim=1).to(torch.int64).numpy()


def _with_labels(xy: np.ndarray, label: int) -> np.ndarray:
    return np.concatenate([xy, np.full((len(xy), 1), label, dtype=np.int64)], axis=1)


def ranked_cells(raw_map: np.ndarray, threshold: float | None = None,
                 cutoff: float = RELATIVE_CUTOFF) -> tuple[np.ndarray, np.ndarray, int]:
    """(positive cells, negative cells, side) on the down-sampled grid.

    k = min(#cells with normalised value >= cutoff [and raw >= threshold], cells // 2);
    positives are the k highest cells, negatives the k lowest.
    """
    small = downsample(raw_map)
    side = small.shape[-1]
    values = torch.from_numpy(small.reshape(-1))
    normalised = (values - values.min()) / (values.max() - values.min())
    order = torch.sort(normalised, stable=True)[1].numpy()
    strong = normalised >= cutoff
    if threshold is not None:
        strong &= values >= threshold
    k = min(int(strong.sum()), values.numel() // 2)
    if k == 0:
        return order[:0], order[:0], side
    return order[-k:], order[:k], side


def points_for_sam(raw_map: np.ndarray, width: int, height: int,
                   threshold: float | None = None) -> np.ndarray:
    """Positive then negative points for one label's raw map (g, g); empty when nothing passes."""
    positives, negatives, side = ranked_cells(raw_map, threshold)
    if len(positives) == 0:
        return NO_POINTS.copy()
    return np.concatenate([
        _with_labels(_cell_pixels(positives, side, width, height), 1),
        _with_labels(_cell_pixels(negatives, side, width, height), 0),
    ])


def combined_points(raw_parts: np.ndarray, width: int, height: int,
                    threshold: float | None = None) -> np.ndarray:
    """Points for an `a+b` target: each part's own positives, and the negatives of the
    mean of the parts' min-max-normalised maps (the reference demo). One SAM call uses all."""
    positives = [points_for_sam(part, width, height, threshold) for part in raw_parts]
    positives = [p[p[:, 2] == 1] for p in positives]
    if sum(len(p) for p in positives) == 0:
        return NO_POINTS.copy()
    normalised = np.stack([minmax(part) for part in raw_parts]).mean(axis=0)
    mean_points = points_for_sam(normalised, width, height)
    return np.concatenate(positives + [mean_points[mean_points[:, 2] == 0]])



def instance_points(raw_map: np.ndarray, width: int, height: int,
                    threshold: float | None = None) -> list[np.ndarray]:
    """Points per connected region of the strong cells (8-connected, on the points grid).

    The strong cells are exactly the reference's positives (and, with a threshold,
    only those at or above it); each region gets its own positives and as many of
    the lowest cells as negatives, so each region becomes its own SAM prompt.
    Regions come strongest first.
    """
    import cv2

    positives, _, side = ranked_cells(raw_map, threshold)
    if len(positives) == 0:
        return []
    values = downsample(raw_map).reshape(-1)
    grid = np.zeros(side * side, dtype=np.uint8)
    grid[positives] = 1
    count, components = cv2.connectedComponents(grid.reshape(side, side), connectivity=8)
    components = components.reshape(-1)
    order = np.argsort(values, kind="stable")
    regions = []
    for component in range(1, count):
        cells = np.flatnonzero(components == component)
        cells = cells[np.argsort(values[cells], kind="stable")]
        negatives = order[: len(cells)]
        regions.append((float(values[cells].max()), np.concatenate([
            _with_labels(_cell_pixels(cells, side, width, height), 1),
            _with_labels(_cell_pixels(negatives, side, width, height), 0),
        ])))
    regions.sort(key=lambda item: -item[0])
    return [points for _, points in regions]
