"""From raw maps to what a person sees: found/not found, points, masks.

Everything here is cheap and runs again on every threshold move; the models
are touched only through the caches of `ClipExplainer` and `SamSegmenter`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .engine import LabelMaps, MapsResult
from .maps import is_found, mean_of_normalised, normalise_map
from .points import NO_POINTS, combined_points, points_for_sam

if TYPE_CHECKING:
    from .masks import ImageEmbedding, MaskPrediction, SamSegmenter


@dataclass(frozen=True)
class LabelView:
    """One label under one threshold: display maps in [0, 1] on the grid, points, mask."""

    maps: LabelMaps
    found: bool
    points: np.ndarray
    clip_display: np.ndarray
    surgery_display: np.ndarray
    mask: "MaskPrediction | None" = None

    @property
    def text(self) -> str:
        return self.maps.label.text


@dataclass(frozen=True)
class Explanation:
    maps: MapsResult
    threshold: float | None
    labels: tuple[LabelView, ...]
    timings: dict[str, float] = field(default_factory=dict)


def view_label(label_maps: LabelMaps, width: int, height: int, threshold: float | None) -> LabelView:
    """Threshold, display maps and SAM points for one label (no model involved)."""
    parts = label_maps.surgery_parts
    found = any(is_found(part, threshold) for part in parts)
    if label_maps.label.is_combined:
        points = combined_points(parts, width, height, threshold) if found else NO_POINTS.copy()
        surgery_display = mean_of_normalised(parts, threshold)
    else:
        points = points_for_sam(parts[0], width, height, threshold) if found else NO_POINTS.copy()
        surgery_display = normalise_map(parts[0], threshold)
    found = found and len(points) > 0
    return LabelView(label_maps, found, points, normalise_map(label_maps.clip_map), surgery_display)


def apply_threshold(maps: MapsResult, threshold: float | None) -> Explanation:
    start = time.perf_counter()
    views = tuple(view_label(lm, maps.width, maps.height, threshold) for lm in maps.labels)
    return Explanation(maps, threshold, views, {**maps.timings, "points": time.perf_counter() - start})


def add_masks(explanation: Explanation, segmenter: "SamSegmenter", embedding: "ImageEmbedding") -> Explanation:
    """One SAM decoder call per found label (an `a+b` label is one call with all its points)."""
    start = time.perf_counter()
    views = tuple(
        LabelView(v.maps, v.found, v.points, v.clip_display, v.surgery_display,
                  segmenter.predict(embedding, v.points) if v.found else None)
        for v in explanation.labels
    )
    timings = {**explanation.timings, "sam_decode": time.perf_counter() - start}
    return Explanation(explanation.maps, explanation.threshold, views, timings)


def explain_image(explainer, segmenter: "SamSegmenter | None", image_rgb: np.ndarray, labels,
                  options, threshold: float | None) -> Explanation:
    """The whole pipeline for one image: maps, threshold, points and (optionally) masks."""
    maps = explainer.compute_maps(image_rgb, labels, options)
    explanation = apply_threshold(maps, threshold)
    if segmenter is None:
        return explanation
    start = time.perf_counter()
    embedding = segmenter.embed(image_rgb)
    explanation.timings["sam_image"] = time.perf_counter() - start
    return add_masks(explanation, segmenter, embedding)
