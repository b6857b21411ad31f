"""The options of an explanation, checked when they are made.

`MapOptions` says which raw maps to compute and how; `PointOptions` how points are made from the map
they come from. Both refuse a bad value on construction (an `InputError` whose message says what to
do), so whatever holds one may trust it. What can only be checked against a loaded model (the
resolution against the patch size, a method against the backbone) is checked where the model is,
by `check_resolution` here and `surgery.method.table.check_backbone`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InputError
from .labels import Label
from .table import DEFAULT_METHODS, check_methods

MIN_RESOLUTION = 224
MAX_RESOLUTION = 1024
DEFAULT_RESOLUTION = 512
DEFAULT_SURGERY_DEPTH = 6  # blocks from the end that get the value-value path (docs/method.md §1)
# `vocab` is the default: it is the reference demo's setting, it works for a single label (where
# `labels` is identically zero), and the 59 background classes make a label's map depend far less on
# which other labels were typed.
REDUNDANCY_MODES = ("vocab", "labels", "empty")
DEFAULT_REDUNDANCY = "vocab"
PRECISIONS = ("fp32", "bf16", "fp16")  # which a device runs: surgery.precision


def resolution_value(resolution: object) -> int:
    """A requested resolution as a whole number of pixels in the allowed range, else an `InputError`."""
    if isinstance(resolution, bool):
        raise InputError("Resolution must be a whole number of pixels, e.g. 512.")
    try:
        value = float(resolution)
    except (TypeError, ValueError, OverflowError):
        raise InputError("Resolution must be a whole number of pixels, e.g. 512.") from None
    if not math.isfinite(value) or value != int(value) or not MIN_RESOLUTION <= value <= MAX_RESOLUTION:
        raise InputError(f"Resolution must be a whole number of pixels between {MIN_RESOLUTION} and "
                         f"{MAX_RESOLUTION}, e.g. 512.")
    return int(value)


def check_resolution(resolution: int, patch_size: int) -> None:
    """An `InputError` unless `resolution` is a multiple of the model's patch size (stride) in range."""
    if not (MIN_RESOLUTION <= resolution <= MAX_RESOLUTION) or resolution % patch_size:
        raise InputError(
            f"Resolution {resolution} is not usable: pick a multiple of the patch size {patch_size} "
            f"between {MIN_RESOLUTION} and {MAX_RESOLUTION} (e.g. {', '.join(_examples(patch_size))})."
        )


def _examples(patch_size: int) -> list[str]:
    return [str(r) for r in range(MIN_RESOLUTION, MAX_RESOLUTION + 1) if r % patch_size == 0][:4]


def snap_resolution(resolution: int, patch_size: int) -> tuple[int, str | None]:
    """The nearest multiple of the patch size inside the range, and a note when it differs (the page
    snaps what its dropdown sends rather than refusing it)."""
    snapped = round(resolution / patch_size) * patch_size
    while snapped < MIN_RESOLUTION:
        snapped += patch_size
    while snapped > MAX_RESOLUTION:
        snapped -= patch_size
    note = None if snapped == resolution else (
        f"Resolution {resolution} is not a multiple of this backbone's patch size {patch_size}; used {snapped}.")
    return snapped, note


def check_redundancy(redundancy: str, labels: tuple[Label, ...]) -> None:
    """`labels` redundancy needs two texts to contrast: with one plain label its map is identically zero."""
    plain = [label.text for label in labels if not label.is_combined]
    parts = [part for label in labels if label.is_combined for part in label.parts]
    if redundancy == "labels" and plain and len(dict.fromkeys(plain + parts)) < 2:
        raise InputError("Redundancy 'labels' needs at least two labels (with one it gives a flat map). "
                         "Add a label, or choose 'vocab' or 'empty'.")


@dataclass(frozen=True)
class MapOptions:
    """Which raw maps to compute and how. Checked on construction: `methods` (names or a comma-separated
    text) come back in the method table's order, and `points_from` None means CLIP Surgery when it is
    computed, else the first method."""

    resolution: int = DEFAULT_RESOLUTION
    redundancy: str = DEFAULT_REDUNDANCY
    surgery_depth: int = DEFAULT_SURGERY_DEPTH
    precision: str = "fp32"  # the image encoders'; which a device runs is surgery.precision's rule
    methods: tuple[str, ...] = DEFAULT_METHODS
    points_from: str | None = None  # the map that decides found / not found and gives SAM's points

    def __post_init__(self) -> None:
        object.__setattr__(self, "resolution", resolution_value(self.resolution))
        if self.redundancy not in REDUNDANCY_MODES:
            raise InputError(f"Redundancy must be one of {', '.join(REDUNDANCY_MODES)}.")
        if isinstance(self.surgery_depth, bool) or not isinstance(self.surgery_depth, int) or self.surgery_depth < 1:
            raise InputError("The surgery depth must be a whole number of blocks, at least 1.")
        if self.precision not in PRECISIONS:
            raise InputError(f"Precision must be one of {', '.join(PRECISIONS)}; "
                             f"got {str(self.precision)[:40]!r} (unknown precision).")
        methods, points_from = check_methods(self.methods, self.points_from)
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "points_from", points_from)


@dataclass(frozen=True)
class PointOptions:
    """How points are made from the map they come from.

    `instances`: split a plain label's strong region into connected regions, one SAM call each (two
    birds, two masks). `positive_only`: send SAM no negative points.
    """

    instances: bool = False
    positive_only: bool = False

    def __post_init__(self) -> None:
        for name in ("instances", "positive_only"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name.replace('_', ' ').capitalize()} must be true or false.")
