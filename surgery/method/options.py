"""The options of an explanation, checked when they are made.

`MapOptions` says which raw maps to compute and how; `PointOptions` how points are made from the map
they come from. Both refuse a bad value on construction (an `InputError` whose message says what to
do), so whatever holds one may trust it. What can only be checked against a loaded model (the
resolution against the patch size, a method against the backbone) is checked where the model is,
by `check_resolution` here and `surgery.method.table.check_backbone`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

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


MAX_PERSON_POINTS = 64  # per label: a person's clicks, or an API's extra points
POINT_SHAPE_RULE = "{label: [[x, y, 1 or 0], ...]} (x, y in the working image's pixels; 1 positive, 0 negative)"

PointRow = tuple[int, int, int]
PointRows = tuple[PointRow, ...]
LabelPoints = tuple[tuple[str, PointRows], ...]  # (label text, rows), one entry per label


def _whole_pixel(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{what} must be a number of pixels; got {str(value)[:20]!r}. Points are {POINT_SHAPE_RULE}.")
    return int(round(value))


def point_rows(rows: object, label: str, option: str = "extra_points") -> PointRows:
    """`rows` ([[x, y, 1 or 0], ...]) as whole-pixel rows, or an `InputError` naming the label; x and y are
    rounded to the nearest pixel (whether they lie inside the image is `PointOptions.check_within`'s)."""
    if not isinstance(rows, (list, tuple)):
        raise InputError(f"{option} for '{label[:40]}' must be a list of [x, y, 1 or 0] rows; "
                         f"points are {POINT_SHAPE_RULE}.")
    if len(rows) > MAX_PERSON_POINTS:
        raise InputError(f"{option} for '{label[:40]}' has {len(rows)} points; the limit is {MAX_PERSON_POINTS}.")
    checked = []
    for row in rows:
        if not isinstance(row, (list, tuple)) or len(row) != 3:
            raise InputError(f"{option} for '{label[:40]}': each point is [x, y, 1 or 0]; got {str(row)[:40]}.")
        x, y = (_whole_pixel(v, f"{option} for '{label[:40]}': a point's {name}") for v, name in zip(row, "xy"))
        kind = row[2]
        if isinstance(kind, bool) or kind not in (0, 1):
            raise InputError(f"{option} for '{label[:40]}': a point's third value is 1 (positive) or 0 (negative); "
                             f"got {str(kind)[:20]}.")
        checked.append((x, y, int(kind)))
    return tuple(checked)


def label_points_value(value: object, option: str = "extra_points") -> LabelPoints:
    """A {label: rows} mapping (or (label, rows) pairs) checked for shape; whether the labels are the
    request's is `PointOptions.for_labels`'. None, "" or {} is none; a text is read as JSON (what a form
    field or a script may send). Labels without rows are dropped."""
    if value is None:
        return ()
    if isinstance(value, str):
        if not value.strip():
            return ()
        import json

        try:
            value = json.loads(value)
        except ValueError:
            raise InputError(f"{option} must be {POINT_SHAPE_RULE}; the text given is not JSON.") from None
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, tuple) and all(isinstance(pair, tuple) and len(pair) == 2 for pair in value):
        pairs = list(value)
    else:
        raise InputError(f"{option} must be {POINT_SHAPE_RULE}.")
    checked = []
    for label, rows in pairs:
        if not isinstance(label, str) or not label.strip():
            raise InputError(f"{option} must be {POINT_SHAPE_RULE}; a key is not a label.")
        rows = point_rows(rows, label, option)
        if rows:
            checked.append((label, rows))
    return tuple(checked)


def _as_array(rows: PointRows) -> np.ndarray:
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


@dataclass(frozen=True)
class PointOptions:
    """How points are made from the map they come from, and a person's own points.

    `instances`: split a plain label's strong region into connected regions, one SAM call each (two
    birds, two masks). `positive_only`: send SAM no negative points (of those derived from the map).
    `extra_points`: a person's points per label (`{label: [[x, y, 1 or 0], ...]}` or (label, rows)
    pairs), added to the derived ones; `removed_points`: derived points a person took away (the page's
    "remove the nearest point"). A label with either is one SAM prompt: derived (less removed) plus
    added. Labels are matched to the request's by `for_labels`, pixels checked by `check_within`.
    """

    instances: bool = False
    positive_only: bool = False
    extra_points: LabelPoints = ()
    removed_points: LabelPoints = ()

    def __post_init__(self) -> None:
        for name in ("instances", "positive_only"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name.replace('_', ' ').capitalize()} must be true or false.")
        for name in ("extra_points", "removed_points"):
            object.__setattr__(self, name, label_points_value(getattr(self, name), name))

    def added(self, label: str) -> np.ndarray:
        """A label's points a person added, (n, 3) int64 rows [x, y, 1 or 0]."""
        return _as_array(dict(self.extra_points).get(label, ()))

    def removed(self, label: str) -> np.ndarray:
        """A label's derived points a person removed, (n, 3) int64."""
        return _as_array(dict(self.removed_points).get(label, ()))

    def edited(self, label: str) -> bool:
        return label in dict(self.extra_points) or label in dict(self.removed_points)

    def for_labels(self, labels: tuple[Label, ...]) -> "PointOptions":
        """The same options with each label key matched to one of `labels` (case and surrounding spaces
        ignored, as labels are), or an `InputError` for a key that is none of them."""
        texts = {label.text.lower(): label.text for label in labels}

        def matched(pairs: LabelPoints, option: str) -> LabelPoints:
            merged: dict[str, PointRows] = {}
            for key, rows in pairs:
                text = texts.get(" ".join(key.split()).lower())
                if text is None:
                    raise InputError(f"{option} names '{key[:40]}', which is not one of the labels "
                                     f"({', '.join(t[:40] for t in texts.values())}).")
                merged[text] = merged.get(text, ()) + rows
            for text, rows in merged.items():
                point_rows(list(rows), text, option)  # the limit holds for a label named twice, too
            return tuple(merged.items())

        return replace(self, extra_points=matched(self.extra_points, "extra_points"),
                       removed_points=matched(self.removed_points, "removed_points"))

    def check_within(self, width: int, height: int) -> None:
        """An `InputError` unless every point lies on the working image (0 <= x < width, 0 <= y < height)."""
        for label, rows in self.extra_points:
            for x, y, kind in rows:
                if not (0 <= x < width and 0 <= y < height):
                    raise InputError(f"The point [{x}, {y}, {kind}] for '{label[:40]}' lies outside the {width}×{height} "
                                     f"image: x runs from 0 to {width - 1}, y from 0 to {height - 1} (result.json's "
                                     "width and height give the image's size).")

    # --- a person's edits, one at a time (the page's clicks) -----------------------------------------
    def adding(self, label: str, row: PointRow) -> "PointOptions":
        """These options with one more point of the person's for `label`."""
        extra = dict(self.extra_points)
        extra[label] = extra.get(label, ()) + (tuple(int(v) for v in row),)
        return replace(self, extra_points=tuple(extra.items()))

    def dropping(self, label: str, row: PointRow) -> "PointOptions":
        """These options without the point `row` of `label`: one of the person's is taken back, a derived
        one is recorded as removed."""
        row = tuple(int(v) for v in row)
        extra = dict(self.extra_points)
        mine = list(extra.get(label, ()))
        if row in mine:
            mine.remove(row)
            extra[label] = tuple(mine)
            return replace(self, extra_points=tuple((k, v) for k, v in extra.items() if v))
        removed = dict(self.removed_points)
        removed[label] = removed.get(label, ()) + (row,)
        return replace(self, removed_points=tuple(removed.items()))

    def resetting(self, label: str) -> "PointOptions":
        """These options without any of the person's edits for `label`."""
        return replace(self, extra_points=tuple((k, v) for k, v in self.extra_points if k != label),
                       removed_points=tuple((k, v) for k, v in self.removed_points if k != label))
