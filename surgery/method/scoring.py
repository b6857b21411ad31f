"""A label's maps and mask scored against a person's ground-truth mask (docs/method.md §10).

The truth is one label's pixels on the working image. Each computed map gives a region (the pixels
where the map counts as evidence, `map_region`) and SAM gives its mask; each is scored by its IoU
with the truth. No model is involved: a threshold move scores again from the same maps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from ..errors import InputError
from .labels import Label
from .maps import resize_map
from .views import Explanation, LabelView

STRETCHED_CUT = 0.5  # a stretched map's region: the upper half of its own range (warm colours)
MASK_LEVEL = 128  # a truth pixel is the label's at or above this (alpha where painted, else brightness)
MASK_RULE = ("a black-and-white picture of the image (white = the label's pixels), or the label's pixels "
             "painted on a transparent layer")


@dataclass(frozen=True)
class TruthMask:
    """The pixels of `label` a person marked: bool (H, W), at the working image's size once `fitted`."""

    label: str
    mask: np.ndarray

    def fitted(self, width: int, height: int) -> "TruthMask":
        """The mask at the working image's `width` × `height`: as it is when it has that size, else
        scaled by nearest neighbour when its shape is the image's (within a pixel, e.g. the image as
        uploaded before it was scaled to the working size); any other shape is an `InputError`."""
        mask_height, mask_width = self.mask.shape
        if (mask_height, mask_width) == (height, width):
            return self
        if abs(mask_height * width / mask_width - height) > 1.0:
            raise InputError(f"The truth mask is {mask_width}×{mask_height}, which is not the image's shape "
                             f"({width}×{height}, or the same scaled): mark the label on this image.")
        scaled = cv2.resize(self.mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        return TruthMask(self.label, scaled.astype(bool))


def truth_mask_array(source: object) -> np.ndarray:
    """A bool (H, W) mask from what a person gives: a file path or bytes of a picture, a PIL image, or
    an array ((H, W) or (H, W, 3 or 4)). With transparency (alpha below `MASK_LEVEL` anywhere) the
    label's pixels are the opaque ones (painted on a clear layer); otherwise the bright ones (white on
    black). A bool (H, W) array is taken as it is."""
    from ..images import _open_checked, check_pixel_count

    if isinstance(source, np.ndarray) and source.dtype == bool and source.ndim == 2:
        return source
    if isinstance(source, (str, os.PathLike, bytes, bytearray)):
        source = _open_checked(source, "The truth mask")
    if isinstance(source, Image.Image):
        check_pixel_count(*source.size, name="The truth mask")
        try:
            has_alpha = source.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
                source.mode == "P" and "transparency" in source.info)
            source = np.asarray(source.convert("RGBA" if has_alpha else "L"))
        except (OSError, ValueError, SyntaxError):
            raise InputError("The truth mask is truncated or corrupt. Save it again as a PNG.") from None
    if not isinstance(source, np.ndarray) or source.ndim not in (2, 3) or source.size == 0 or (
            source.ndim == 3 and source.shape[2] not in (1, 3, 4)) or not (
            np.issubdtype(source.dtype, np.number) or source.dtype == bool):
        raise InputError(f"The truth mask must be {MASK_RULE}.")
    array = source.astype(np.float64)
    if array.ndim == 2:
        return array >= (0.5 if source.dtype == bool else MASK_LEVEL)
    if array.shape[2] == 4 and array[:, :, 3].min() < MASK_LEVEL:
        return array[:, :, 3] >= MASK_LEVEL
    grey = array[:, :, :3].mean(axis=2) if array.shape[2] >= 3 else array[:, :, 0]
    return grey >= MASK_LEVEL


def check_truth(label: object, mask: object, labels: tuple[Label, ...]) -> TruthMask | None:
    """The truth for one of `labels` (matched ignoring case and surrounding spaces), or None when neither
    is given; an `InputError` for one without the other, an unknown label, or a mask with no label pixel."""
    if (label is None or label == "") and mask is None:
        return None
    if label is None or label == "" or mask is None:
        raise InputError("Give both truth_label and truth_mask (the label's pixels), or neither.")
    if not isinstance(label, str):
        raise InputError("truth_label must be one of the labels, as text.")
    texts = {item.text.lower(): item.text for item in labels}
    text = texts.get(" ".join(label.split()).lower())
    if text is None:
        raise InputError(f"truth_label '{label[:40]}' is not one of the labels ({', '.join(texts.values())}).")
    array = truth_mask_array(mask)
    if not array.any():
        raise InputError(f"The truth mask marks no pixel: it must be {MASK_RULE}.")
    return TruthMask(text, array)


def map_region(view: LabelView, method: str, threshold: float | None, points_from: str,
               height: int, width: int) -> tuple[np.ndarray, dict]:
    """The pixels where `method`'s map of the label counts as evidence, and the rule used.

    Maps are brought to the image's `height` × `width` bilinearly (align_corners=False), as the overlays.
    With a threshold, for the map the points come from: the pixels where the resized raw map (any part of
    an `a+b` label) is at least the threshold. Otherwise (threshold off, or a map the threshold is not on
    the scale of): the pixels where the resized stretched map (the overlay's, in [0, 1]) is at least
    `STRETCHED_CUT`."""
    if threshold is not None and method == points_from:
        parts = view.maps.parts[method]
        region = np.logical_or.reduce([resize_map(part, height, width) >= np.float32(threshold) for part in parts])
        return region, {"region": "threshold", "cut": threshold}
    region = resize_map(view.displays[method], height, width) >= np.float32(STRETCHED_CUT)
    return region, {"region": "stretched", "cut": STRETCHED_CUT}


def overlap(prediction: np.ndarray | None, truth: np.ndarray) -> dict:
    """Pixel counts and the IoU of a predicted region (None: nothing predicted) with the truth."""
    truth_area = int(truth.sum())
    if prediction is None:
        return {"area": 0, "intersection": 0, "union": truth_area, "iou": 0.0}
    intersection = int(np.logical_and(prediction, truth).sum())
    union = int(np.logical_or(prediction, truth).sum())
    return {"area": int(prediction.sum()), "intersection": intersection, "union": union,
            "iou": round(intersection / union, 6) if union else 0.0}


def truth_scores(explanation: Explanation, truth: TruthMask, with_masks: bool) -> dict:
    """result.json's `truth`: the truth's area, each computed map's region and IoU, and the SAM mask's
    (None when `with_masks` is False: SAM off or still working; an empty mask when the label has none)."""
    view = next(v for v in explanation.labels if v.text == truth.label)
    height, width = truth.mask.shape
    options = explanation.maps.options
    maps = {}
    for method in options.methods:
        region, rule = map_region(view, method, explanation.threshold, options.points_from, height, width)
        maps[method] = {**rule, **overlap(region, truth.mask)}
    return {
        "label": truth.label,
        "area": int(truth.mask.sum()),
        "maps": maps,
        "sam_mask": overlap(view.chosen_mask, truth.mask) if with_masks else None,
    }
