"""From raw maps to what a person sees: found/not found, points, masks.

Everything here is cheap and runs again on every threshold move; the models
are not touched here: masks come from a `predict(points)` function the caller passes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from .labels import Label
from .maps import is_found, mean_of_normalised, normalise_map
from .options import PointOptions
from .results import LabelMaps, MapsResult, MaskPrediction
from .points import NO_POINTS, combined_points, instance_points, points_for_sam


@dataclass(frozen=True)
class InstanceView:
    points: np.ndarray
    mask: MaskPrediction | None = None


@dataclass(frozen=True)
class LabelView:
    """One label under one threshold: display maps in [0, 1] on the grid, points, mask(s).

    `displays` holds each computed method's display map, by key; the threshold shapes only the map
    the points come from, the others are min-max stretched. `choice` overrides which of
    SAM's three candidates is shown (None: the best score). With the instances option,
    `instances` holds one entry per region and `points` is their union. `added` are the points a person
    added (part of `points`); a label a person edited is one prompt, never split into instances.
    """

    maps: LabelMaps
    found: bool
    points: np.ndarray
    displays: dict[str, np.ndarray]
    mask: MaskPrediction | None = None
    instances: tuple[InstanceView, ...] = ()
    choice: int | None = None
    added: np.ndarray = field(default_factory=lambda: NO_POINTS.copy())

    @property
    def text(self) -> str:
        return self.maps.label.text

    @property
    def chosen(self) -> int | None:
        if self.mask is None:
            return None
        return self.mask.best if self.choice is None else self.choice

    @property
    def chosen_mask(self) -> np.ndarray | None:
        """The mask shown for this label: the chosen candidate, or the union of its instances."""
        if self.instances:
            masks = [inst.mask.mask for inst in self.instances if inst.mask is not None]
            return np.logical_or.reduce(masks) if masks else None
        return None if self.mask is None else self.mask.candidates[self.chosen]

    @property
    def chosen_score(self) -> float | None:
        if self.instances:
            scores = [inst.mask.score for inst in self.instances if inst.mask is not None]
            return float(max(scores)) if scores else None
        return None if self.mask is None else float(self.mask.scores[self.chosen])


@dataclass(frozen=True)
class Explanation:
    maps: MapsResult
    threshold: float | None
    labels: tuple[LabelView, ...]
    timings: dict[str, float] = field(default_factory=dict)
    point_options: PointOptions = PointOptions()


def _positives_only(points: np.ndarray) -> np.ndarray:
    return points[points[:, 2] == 1]


def display_map(raw_parts: np.ndarray, threshold: float | None) -> np.ndarray:
    """A map in [0, 1] for display from its raw (P, g, g) parts: normalised at `threshold` (None: min-max);
    for `a+b` the mean of the parts' normalised maps."""
    if len(raw_parts) > 1:
        return mean_of_normalised(raw_parts, threshold)
    return normalise_map(raw_parts[0], threshold)


def label_points(label: Label, raw_parts: np.ndarray, width: int, height: int, threshold: float | None,
                 options: PointOptions = PointOptions()) -> tuple[bool, np.ndarray, tuple[InstanceView, ...]]:
    """Found or not, SAM's points and (with the instances option) the regions, from the raw (P, g, g) parts
    of the map the points come from. A label is found when some value reaches the threshold and points
    remain for SAM. A person's points (`options.added` / `options.removed`) change the derived ones: the
    removed are taken out, the added put in (positive-only leaves a person's negatives), and the label is
    found when a positive point remains, whatever its map (one prompt, no instances)."""
    found = any(is_found(part, threshold) for part in raw_parts)
    instances: tuple[InstanceView, ...] = ()
    edited = options.edited(label.text)
    if label.is_combined:
        points = combined_points(raw_parts, width, height, threshold) if found else NO_POINTS.copy()
    elif found and options.instances and not edited:
        regions = instance_points(raw_parts[0], width, height, threshold)
        if options.positive_only:
            regions = [_positives_only(region) for region in regions]
        instances = tuple(InstanceView(region) for region in regions)
        points = np.concatenate(regions) if regions else NO_POINTS.copy()
    else:
        points = points_for_sam(raw_parts[0], width, height, threshold) if found else NO_POINTS.copy()
    if options.positive_only:
        points = _positives_only(points)
    if edited:
        removed = {tuple(row) for row in options.removed(label.text).tolist()}
        kept = np.array([row for row in points.tolist() if tuple(row) not in removed], dtype=np.int64).reshape(-1, 3)
        points = np.concatenate([kept, options.added(label.text)])
        return bool((points[:, 2] == 1).any()), points, ()
    found = found and len(points) > 0
    return found, points, instances if found else ()


def view_label(label_maps: LabelMaps, width: int, height: int, threshold: float | None,
               options: PointOptions = PointOptions()) -> LabelView:
    """Threshold, display maps and SAM points for one label (no model involved); the threshold, found /
    not found and the points come from the `points_from` method's raw map."""
    found, points, instances = label_points(label_maps.label, label_maps.point_parts, width, height, threshold,
                                            options)
    displays = {method: display_map(method_parts, threshold if method == label_maps.points_from else None)
                for method, method_parts in label_maps.parts.items()}
    return LabelView(label_maps, found, points, displays, instances=instances,
                     added=options.added(label_maps.label.text))


def apply_threshold(maps: MapsResult, threshold: float | None,
                    options: PointOptions = PointOptions()) -> Explanation:
    start = time.perf_counter()
    views = tuple(view_label(lm, maps.width, maps.height, threshold, options) for lm in maps.labels)
    return Explanation(maps, threshold, views, {**maps.timings, "points": time.perf_counter() - start}, options)


def decode_prompts(explanation: Explanation) -> list[np.ndarray]:
    """The point arrays `decode_masks` sends SAM, in its order: one per found label, or per instance."""
    prompts = []
    for view in explanation.labels:
        if view.found and view.instances:
            prompts.extend(inst.points for inst in view.instances)
        elif view.found:
            prompts.append(view.points)
    return prompts


def decode_masks(explanation: Explanation, predict: Callable[[np.ndarray], MaskPrediction]) -> Explanation:
    """One SAM decoder call per found label, or per instance; an `a+b` label is one call with all its points."""
    start = time.perf_counter()
    views = []
    for view in explanation.labels:
        if not view.found:
            views.append(view)
        elif view.instances:
            views.append(replace(view, instances=tuple(
                InstanceView(inst.points, predict(inst.points)) for inst in view.instances)))
        else:
            views.append(replace(view, mask=predict(view.points)))
    timings = {**explanation.timings, "sam_decode": time.perf_counter() - start}
    return replace(explanation, labels=tuple(views), timings=timings)


def with_choices(explanation: Explanation, choices: dict[str, int]) -> Explanation:
    """Show another of SAM's candidates for some labels: no model involved."""
    views = tuple(replace(view, choice=choices.get(view.text)) if view.mask is not None else view
                  for view in explanation.labels)
    return replace(explanation, labels=views)
