"""Map math on raw similarity maps (docs/method.md §5). Arrays in, arrays out."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def minmax(raw: np.ndarray) -> np.ndarray:
    """Min-max over the whole map; a constant map becomes zeros (not NaN)."""
    raw = np.asarray(raw, dtype=np.float32)
    low, high = raw.min(), raw.max()
    if not high > low:
        return np.zeros_like(raw)
    return (raw - low) / (high - low)


def is_found(raw: np.ndarray, threshold: float | None) -> bool:
    """A label is absent when no value reaches the threshold (always found without one)."""
    return threshold is None or float(np.max(raw)) >= threshold


def normalise_map(raw: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """[0, 1] map for display.

    Without a threshold: the reference min-max, which always stretches the map.
    With threshold t: values below t are "no evidence" (0), the rest scale
    between t and the map's maximum; a map whose maximum is below t is all zeros.
    """
    raw = np.asarray(raw, dtype=np.float32)
    if threshold is None:
        return minmax(raw)
    high = float(raw.max())
    if high < threshold:
        return np.zeros_like(raw)
    if high == threshold:
        return (raw >= threshold).astype(np.float32)
    return np.clip((raw - np.float32(threshold)) / np.float32(high - threshold), 0.0, 1.0).astype(np.float32)


def mean_of_normalised(raw_parts: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """A combined target's map: mean over its parts (P, g, g) of each part's normalised map."""
    return np.mean([normalise_map(part, threshold) for part in raw_parts], axis=0).astype(np.float32)


def resize_map(map_gg: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize (align_corners=False) to the image's (H, W), as the reference's torch call."""
    tensor = torch.from_numpy(np.ascontiguousarray(map_gg, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()
