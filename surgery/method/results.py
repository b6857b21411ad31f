"""The plain data between the layers: raw maps per label, and SAM's candidates.

`ClipExplainer` produces a `MapsResult`; everything threshold-dependent
(`surgery.method.views`) and every output (`surgery.output`) reads it without a
model. `MaskPrediction` is what a SAM decoder call returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .labels import Label

DEFAULT_SURGERY_DEPTH = 6  # blocks from the end that get the value-value path (docs/method.md §1)
DEFAULT_RESOLUTION = 512
# `vocab` is the default: it is the reference demo's setting, it works for a
# single label (where `labels` is identically zero), and the 59 background
# classes make a label's map depend far less on which other labels were typed.
DEFAULT_REDUNDANCY = "vocab"
# The dense methods by key, in the order they are shown (their table: surgery.clip.methods).
METHOD_TITLES = {"clip": "CLIP", "surgery": "CLIP Surgery", "maskclip": "MaskCLIP", "sclip": "SCLIP",
                 "clearclip": "ClearCLIP", "naclip": "NACLIP"}


@dataclass(frozen=True)
class MapOptions:
    resolution: int = DEFAULT_RESOLUTION
    redundancy: str = DEFAULT_REDUNDANCY
    surgery_depth: int = DEFAULT_SURGERY_DEPTH
    precision: str = "fp32"  # image encoders; bf16: autocast where the CPU/GPU runs bfloat16 natively
    methods: tuple[str, ...] = ("clip", "surgery")  # the maps to compute (surgery.clip.methods.METHODS)
    points_from: str = "surgery"  # the map that decides found / not found and gives SAM's points


@dataclass(frozen=True)
class LabelMaps:
    """Raw maps for one label on the (g, g) patch grid.

    `surgery_parts` (P, g, g) are the raw feature-surgery maps (P = 1 for a plain
    label). `surgery_map` is what maps.npz stores: the raw map, or for `a+b` the
    mean of the parts' min-max maps. `method_parts` and `method_maps` hold the
    same per chosen method (CLIP and CLIP Surgery included); the threshold and the
    points work on `point_parts`, the parts of the `points_from` method.
    """

    label: Label
    clip_map: np.ndarray
    surgery_map: np.ndarray
    surgery_parts: np.ndarray
    presence: float
    method_maps: dict[str, np.ndarray] = field(default_factory=dict)
    method_parts: dict[str, np.ndarray] = field(default_factory=dict)
    points_from: str = "surgery"

    @property
    def point_parts(self) -> np.ndarray:
        """The raw (P, g, g) maps found / not found and the points are decided on."""
        return self.method_parts.get(self.points_from, self.surgery_parts)


@dataclass(frozen=True)
class MapsResult:
    width: int
    height: int
    grid: int
    options: MapOptions
    labels: tuple[LabelMaps, ...]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class MaskPrediction:
    """SAM's three candidate masks for one prompt, with its own quality estimate for each."""

    candidates: np.ndarray  # bool (3, H, W)
    scores: np.ndarray  # float32 (3,)
    best: int

    @property
    def mask(self) -> np.ndarray:
        """The candidate SAM rates highest."""
        return self.candidates[self.best]

    @property
    def score(self) -> float:
        return float(self.scores[self.best])
