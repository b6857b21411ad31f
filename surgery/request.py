"""One explanation request: everything a person asks of an explanation, checked once where it comes in.

Each edge (the CLI, the app's handlers and `/explain`, calibrate's and evaluate's settings, the
public API) turns what it was given into an `ExplainRequest` with `build_request`. The labels are
parsed, the threshold, map and point options checked, and the precision resolved for the device
where the models run. Everything below (pipeline, explainer, views, outputs) trusts the request.
What depends on the loaded model (patch size, backbone) is checked once, by
`ClipExplainer.check_fits`; what depends on the image (a person's points inside it, the truth mask's
size), once the image is decoded, by `ExplainRequest.for_image`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch

from .method.labels import Label, ParsedLabels, parse_labels
from .method.options import (DEFAULT_REDUNDANCY, DEFAULT_RESOLUTION, MapOptions, PointOptions, check_redundancy,
                             resolution_value)
from .method.scoring import TruthMask, check_truth
from .method.threshold import check_threshold
from .precision import resolve_precision


@dataclass(frozen=True)
class ExplainRequest:
    """The labels and every option of one explanation (valid by construction through `build_request`).

    `notes` say what parsing the labels changed (a duplicate dropped, a long label shortened); `truth` is
    one label's ground-truth mask to score the maps and the mask against (`surgery.method.scoring`).
    """

    labels: tuple[Label, ...]
    maps: MapOptions = MapOptions()
    threshold: float | None = None
    points: PointOptions = PointOptions()
    notes: tuple[str, ...] = ()
    truth: TruthMask | None = None

    @property
    def label_texts(self) -> tuple[str, ...]:
        return tuple(label.text for label in self.labels)

    def at_resolution(self, resolution: int) -> "ExplainRequest":
        """The same request at another resolution (the page snaps to the backbone's patch size)."""
        return replace(self, maps=replace(self.maps, resolution=resolution))

    def for_image(self, width: int, height: int) -> "ExplainRequest":
        """The request for a working image of `width` × `height`: an `InputError` when a person's point lies
        outside it or the truth mask has another shape; the truth mask brought to that size."""
        self.points.check_within(width, height)
        return self if self.truth is None else replace(self, truth=self.truth.fitted(width, height))


def build_request(labels: str | Sequence[Label] | None, *, threshold: object = None,
                  resolution: object = DEFAULT_RESOLUTION, redundancy: object = DEFAULT_REDUNDANCY,
                  methods: object = None, points_from: object = None, precision: object = None,
                  device: torch.device | str = "cpu", instances: object = False,
                  positive_only: object = False, extra_points: object = None, truth_label: object = None,
                  truth_mask: object = None, removed_points: object = None) -> ExplainRequest:
    """An `ExplainRequest` from what a person gave, or an `InputError` whose one line says what to change.

    `labels` is the typed text (`"person, bench, cat+grass"`) or parsed `Label`s; `threshold` None or 0
    is off; `methods` names or a comma-separated text (None: CLIP and CLIP Surgery); `points_from` None
    takes CLIP Surgery when it is computed, else the first method; `precision` None takes the default
    of `device`, the (already resolved) device where the models run. `extra_points` is
    `{label: [[x, y, 1 or 0], ...]}` in the working image's pixels, added to the derived points, and
    `removed_points` derived points to leave out, in the same form;
    `truth_label` and `truth_mask` (a picture or array of the label's pixels, `surgery.method.scoring`)
    ask for the maps and the mask to be scored.
    """
    parsed = parse_labels(labels) if labels is None or isinstance(labels, str) else ParsedLabels(tuple(labels))
    threshold_value = check_threshold(threshold)
    if not isinstance(redundancy, str):
        redundancy = repr(redundancy)  # refused by MapOptions with the list of modes
    maps = MapOptions(resolution=resolution_value(resolution), redundancy=redundancy,
                      precision=resolve_precision(precision, device), methods=methods, points_from=points_from)
    check_redundancy(maps.redundancy, parsed.labels)
    # None is off, as an unticked box; anything but true or false is refused by PointOptions
    points = PointOptions(instances=False if instances is None else instances,
                          positive_only=False if positive_only is None else positive_only,
                          extra_points=extra_points, removed_points=removed_points).for_labels(parsed.labels)
    truth = check_truth(truth_label, truth_mask, parsed.labels)
    return ExplainRequest(parsed.labels, maps, threshold_value, points, parsed.notes, truth)
