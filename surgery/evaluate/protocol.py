"""The standard protocol's steps as functions on arrays (docs/evaluation.md §3-§5, SCLIP's harness).

- `keep_ratio_size`, `resize_image`, `normalise`: mmcv's keep-ratio `imrescale` (sizes `int(x + 0.5)`,
  OpenCV bilinear on uint8) and mmseg's normaliser (RGB, 0..255 constants).
- `window_spans`, `window_boxes`: the sliding windows, last one pulled back to end at the border.
- `upsample`, `WindowCanvas`: each window's (Q, h/p, w/p) logits bilinearly upsampled (align_corners
  False) to the window, summed into a canvas with a count map, averaged.
- `class_probabilities`, `area_rule`, `predict_classes`, `classify`: logit scale, softmax over every
  query, max over a class's synonyms, the area rule, argmax, the probability rule.
- `pamr`: PAMR refinement (only presets use it; the standard protocol has `pamr_steps=0`).

All torch arithmetic is float32, as in the harness; argmax ties go to the lowest index.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

MMSEG_MEAN = (122.771, 116.746, 104.094)  # CLIP's mean and std x 255, as SCLIP's SegDataPreProcessor
MMSEG_STD = (68.501, 66.632, 70.323)


@dataclass(frozen=True)
class Protocol:
    """Every setting that turns an image and the text features into a class map.

    `crop` 0 means whole-image inference (one window, the whole resized image; NACLIP's voc presets).
    `pad_to_patch`: pad a window whose sides are not multiples of the patch size (centred, zeros after
    normalisation) and cut its logits back, as ClearCLIP's harness does; otherwise the patch grid
    drops the remainder, as SCLIP's does.
    """

    short_side: int
    long_side: int = 2048
    crop: int = 224
    stride: int = 112
    logit_scale: float = 40.0
    prob_threshold: float = 0.0
    area_threshold: float | None = None
    pamr_steps: int = 0
    pamr_dilations: tuple[int, ...] = (8, 16)
    pad_to_patch: bool = False

    def record(self) -> dict:
        """JSON-ready values (what metrics.json lists under `protocol`)."""
        return {"resize": {"scale": [self.long_side, self.short_side], "keep_ratio": True,
                           "interpolation": "cv2.INTER_LINEAR"},
                "normalize": {"mean": list(MMSEG_MEAN), "std": list(MMSEG_STD), "to_rgb": True},
                "slide_crop": self.crop, "slide_stride": self.stride if self.crop else None,
                "logit_scale": self.logit_scale, "prob_thd": self.prob_threshold, "area_thd": self.area_threshold,
                "pamr_steps": self.pamr_steps,
                "pamr_dilations": list(self.pamr_dilations) if self.pamr_steps else None,
                "pad_to_patch": self.pad_to_patch}


# --------------------------------------------------------------------------- preprocessing

def keep_ratio_size(height: int, width: int, short_side: int, long_side: int = 2048) -> tuple[int, int]:
    """(H', W') of mmcv's keep-ratio rescale to scale (long_side, short_side):
    s = min(long / max(H, W), short / min(H, W)), each side int(side * s + 0.5)."""
    scale = min(long_side / max(height, width), short_side / min(height, width))
    return int(height * float(scale) + 0.5), int(width * float(scale) + 0.5)


def resize_image(image_rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H', W', 3): OpenCV bilinear on the uint8 image (the image itself when the size is unchanged)."""
    height, width = size
    if image_rgb.shape[:2] == (height, width):
        return image_rgb
    return cv2.resize(image_rgb, (width, height), interpolation=cv2.INTER_LINEAR)


def normalise(image_rgb: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(1, 3, H, W) float32: (x - mean) / std on 0..255 RGB with mmseg's constants."""
    pixels = torch.from_numpy(np.ascontiguousarray(image_rgb)).to(device).permute(2, 0, 1).float()
    mean = torch.tensor(MMSEG_MEAN, device=device).view(3, 1, 1)
    std = torch.tensor(MMSEG_STD, device=device).view(3, 1, 1)
    return ((pixels - mean) / std).unsqueeze(0)


# --------------------------------------------------------------------------- sliding windows

def window_spans(length: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """[a, b) per window along one axis: n = max(L - c + s - 1, 0) // s + 1 windows starting at k*s,
    each ending at min(a + c, L) and then pulled back to start at max(b - c, 0). crop 0: the whole axis."""
    if crop <= 0:
        return [(0, length)]
    count = max(length - crop + stride - 1, 0) // stride + 1
    spans = []
    for k in range(count):
        end = min(k * stride + crop, length)
        spans.append((max(end - crop, 0), end))
    return spans


def window_boxes(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of every window, rows outer, columns inner (the harness's loop order)."""
    return [(y0, y1, x0, x1) for y0, y1 in window_spans(height, crop, stride)
            for x0, x1 in window_spans(width, crop, stride)]


def pad_for_patches(height: int, width: int, patch: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding that makes both sides multiples of `patch`, centred
    (ClearCLIP's `compute_padsize`)."""
    left = right = top = bottom = 0
    if width % patch:
        extra = patch - width % patch
        left, right = extra // 2, extra - extra // 2
    if height % patch:
        extra = patch - height % patch
        top, bottom = extra // 2, extra - extra // 2
    return left, right, top, bottom


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (..., h, w) to `size`, align_corners=False, no antialiasing."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    batch = logits.reshape(-1, *logits.shape[-3:]) if logits.dim() >= 3 else logits[None, None]
    out = F.interpolate(batch, size=tuple(size), mode="bilinear", align_corners=False)
    return out.reshape(*logits.shape[:-2], *size)


class WindowCanvas:
    """Sums windows' logits (Q, h, w) into a (Q, H, W) canvas and counts how often each pixel was covered."""

    def __init__(self, queries: int, height: int, width: int, device: torch.device | str = "cpu") -> None:
        self.sum = torch.zeros(queries, height, width, dtype=torch.float32, device=device)
        self.count = torch.zeros(height, width, dtype=torch.float32, device=device)

    def add(self, box: tuple[int, int, int, int], logits: torch.Tensor) -> None:
        y0, y1, x0, x1 = box
        self.sum[:, y0:y1, x0:x1] += logits
        self.count[y0:y1, x0:x1] += 1

    def merged(self) -> torch.Tensor:
        """The average over the windows covering each pixel (every pixel must be covered)."""
        if bool((self.count == 0).any()):
            raise ValueError("some pixels are covered by no window")
        return self.sum / self.count


def merge_windows(window_logits: list[torch.Tensor], boxes: list[tuple[int, int, int, int]],
                  size: tuple[int, int]) -> torch.Tensor:
    """(Q, H', W'): each window's (Q, gh, gw) logits upsampled to its box, summed, averaged."""
    canvas = WindowCanvas(window_logits[0].shape[0], *size, device=window_logits[0].device)
    for box, logits in zip(boxes, window_logits):
        canvas.add(box, upsample(logits.float(), (box[1] - box[0], box[3] - box[2])))
    return canvas.merged()


# --------------------------------------------------------------------------- logits to a class map

def class_probabilities(logits: torch.Tensor, query_class: tuple[int, ...], num_classes: int,
                        logit_scale: float) -> torch.Tensor:
    """(C, H, W): softmax over the Q queries of logit_scale * logits (Q, H, W), then per class the
    maximum over its synonyms (the identity when every class has one). A class's queries are
    consecutive (one line of the class file)."""
    probabilities = torch.softmax(logits.float() * logit_scale, dim=0)
    if len(query_class) == num_classes:  # one query per class, in class order
        return probabilities
    bounds = np.searchsorted(np.asarray(query_class), np.arange(num_classes + 1))
    return torch.stack([probabilities[bounds[c]] if bounds[c + 1] - bounds[c] == 1
                        else probabilities[bounds[c]:bounds[c + 1]].amax(dim=0) for c in range(num_classes)])


def area_rule(probabilities: torch.Tensor, area_threshold: float | None) -> torch.Tensor:
    """The class probabilities with every object class zeroed whose argmax area n_c is not more than
    area_threshold * (n_1 + ... + n_{C-1}); class 0 is never removed. The input itself when the rule is
    off or removes nothing (never modified: a removal works on a copy)."""
    if area_threshold is None:
        return probabilities
    classes = probabilities.shape[0]
    winners = probabilities.max(dim=0).indices  # the first maximum, as argmax
    areas = torch.bincount(winners.reshape(-1), minlength=classes)[1:].to(torch.float64)
    removed = ~(areas > area_threshold * areas.sum())
    if not bool(removed.any()):
        return probabilities
    zeroed = probabilities.clone()
    zeroed[1:][removed] = 0
    return zeroed


def predict_classes(probabilities: torch.Tensor, prob_threshold: float) -> torch.Tensor:
    """(H, W) int64: argmax over classes (the first maximum on ties), 0 where the maximum is below
    prob_threshold."""
    best, prediction = probabilities.max(dim=0)  # torch documents the first maximal index
    prediction[best < prob_threshold] = 0
    return prediction


def classify(logits: torch.Tensor, query_class: tuple[int, ...], num_classes: int, logit_scale: float,
             prob_threshold: float, area_threshold: float | None) -> np.ndarray:
    """The class map (H, W) uint8 of merged cosine logits (Q, H, W): §5's steps in order."""
    probabilities = class_probabilities(logits, query_class, num_classes, logit_scale)
    probabilities = area_rule(probabilities, area_threshold)
    return predict_classes(probabilities, prob_threshold).to(torch.uint8).cpu().numpy()


# --------------------------------------------------------------------------- PAMR
