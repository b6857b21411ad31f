"""One image, start to finish: maps, threshold, points and (optionally) SAM masks.

The CLI and notebooks use this; the app runs the same steps one at a time so it
can show the heatmaps before SAM is done.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from .clip.explainer import ClipExplainer
from .method.labels import Label
from .method.results import MapOptions
from .method.views import Explanation, PointOptions, apply_threshold, decode_masks
from .sam.segmenter import SamSegmenter


def explain_image(explainer: ClipExplainer, segmenter: SamSegmenter | None, image_rgb: np.ndarray,
                  labels: Sequence[Label], options: MapOptions = MapOptions(), threshold: float | None = None,
                  point_options: PointOptions = PointOptions()) -> Explanation:
    """Raw maps for `labels`, viewed at `threshold` (None: off), with SAM's masks when `segmenter` is given."""
    maps = explainer.compute_maps(image_rgb, labels, options)
    explanation = apply_threshold(maps, threshold, point_options)
    if segmenter is None:
        return explanation
    return add_masks(explanation, segmenter, image_rgb)


def add_masks(explanation: Explanation, segmenter: SamSegmenter, image_rgb: np.ndarray) -> Explanation:
    """SAM's masks for every found label (the image is encoded once and cached by the segmenter); the
    encoding's time is recorded as `sam_image`."""
    start = time.perf_counter()
    embedding = segmenter.embed(image_rgb)
    explanation.timings["sam_image"] = time.perf_counter() - start
    return decode_masks(explanation, lambda points: segmenter.predict(embedding, points))
