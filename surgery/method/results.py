"""The plain data between the layers: raw maps per label, and SAM's candidates.

`ClipExplainer` produces a `MapsResult`; everything threshold-dependent
(`surgery.method.views`) and every output (`surgery.output`) reads it without a
model. `MaskPrediction` is what a SAM decoder call returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .labels import Label
from .options import MapOptions


@dataclass(frozen=True)
class LabelMaps:
    """Raw maps for one label, keyed by method (the computed ones, in the method table's order).

    `parts[m]` is method m's raw (P, g, g) map per part (P = 1 for a plain label; g is the method's own
    grid). `maps[m]` is what maps.npz stores: the raw map, or for `a+b` the mean of the parts' min-max
    maps. The threshold and the points work on `point_parts`, the parts of the `points_from` method.
    """

    label: Label
    parts: dict[str, np.ndarray]
    maps: dict[str, np.ndarray]
    presence: float
    points_from: str

    @property
    def point_parts(self) -> np.ndarray:
        """The raw (P, g, g) maps found / not found and the points are decided on."""
        return self.parts[self.points_from]


@dataclass(frozen=True)
class MapsResult:
    width: int
    height: int
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
