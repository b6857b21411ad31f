"""An independent re-implementation of docs/method.md §10 for the tests: bilinear half-pixel resizing in
float64, the two region rules and IoU, written from the document (not from surgery.method.scoring)."""

from __future__ import annotations

import numpy as np


def bilinear(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """(g, g) -> (height, width), align_corners=False: sample at (i + 0.5) * g / size - 0.5, edges clamped."""
    g_h, g_w = grid.shape

    def axis(size: int, g: int):
        pos = np.clip((np.arange(size) + 0.5) * g / size - 0.5, 0, g - 1)
        low = np.floor(pos).astype(int)
        high = np.minimum(low + 1, g - 1)
        return low, high, pos - low

    y0, y1, fy = axis(height, g_h)
    x0, x1, fx = axis(width, g_w)
    grid = grid.astype(np.float64)
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x1] * fx
    bottom = grid[y1][:, x0] * (1 - fx) + grid[y1][:, x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


def stretched(raw: np.ndarray) -> np.ndarray:
    low, high = raw.min(), raw.max()
    return (raw - low) / (high - low)


def overlap(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(intersection, union) in pixels."""
    return int((a & b).sum()), int((a | b).sum())


def close_counts(got: dict, expected: tuple[int, int], pixels: int) -> bool:
    """Equal up to pixels whose value lies within float rounding of the cut (at most 0.05 % of the image)."""
    tolerance = max(2, pixels // 2000)
    return abs(got["intersection"] - expected[0]) <= tolerance and abs(got["union"] - expected[1]) <= tolerance
