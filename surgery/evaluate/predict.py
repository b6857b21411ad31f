"""One image through the protocol: resized, cut into windows, every window encoded once for all
methods, each method's window logits merged, resized back, (PAMR,) classified.

`image_logits` yields (method, merged logits (Q, H, W)) one method at a time, so only one method's
full-size logits are held at once; `predict_methods` turns them into class maps (`protocol.classify`'s
steps, keeping the probabilities for `--sam`).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..clip.guided_methods import pamr
from .classes import ClassList
from .features import WindowEncoder, window_logits
from .protocol import (Protocol, WindowCanvas, area_rule, class_probabilities, keep_ratio_size, normalise,
                       pad_for_patches, predict_classes, resize_image, upsample, window_boxes)

WINDOWS_PER_PASS = 16  # windows encoded together (bounds activation memory; a VOC image has 6-10)


def image_logits(encoder: WindowEncoder, text_features: torch.Tensor, image_rgb: np.ndarray,
                 protocol: Protocol) -> Iterator[tuple[str, torch.Tensor]]:
    """Per method of the encoder, its merged cosine logits (Q, H, W) at the image's own size."""
    height, width = image_rgb.shape[:2]
    size = keep_ratio_size(height, width, protocol.short_side, protocol.long_side)
    pixels = normalise(resize_image(image_rgb, size), encoder.device)
    boxes = window_boxes(*size, protocol.crop, protocol.stride)
    grids: dict[str, list] = {m: [None] * len(boxes) for m in encoder.methods}  # per window (Q, gh, gw)
    crops = [pixels[0, :, y0:y1, x0:x1] for y0, y1, x0, x1 in boxes]
    padding = [(0, 0, 0, 0)] * len(boxes)
    if protocol.pad_to_patch:
        padding = [pad_for_patches(c.shape[-2], c.shape[-1], encoder.patch_size) for c in crops]
        crops = [F.pad(c, pad) if any(pad) else c for c, pad in zip(crops, padding)]
    order = sorted(range(len(crops)), key=lambda i: tuple(crops[i].shape))  # equal sizes batch together
    start = 0
    while start < len(order):
        shape = tuple(crops[order[start]].shape)
        group = [i for i in order[start:start + WINDOWS_PER_PASS] if tuple(crops[i].shape) == shape]
        windows = encoder.encode(torch.stack([crops[i] for i in group]))
        for method in encoder.methods:
            scores = window_logits(windows, method, text_features)
            for row, index in enumerate(group):
                grids[method][index] = scores[row]
        start += len(group)
    queries = text_features.shape[0]
    for method in encoder.methods:
        canvas = WindowCanvas(queries, *size, device=pixels.device)
        for box, grid, pad, crop in zip(boxes, grids[method], padding, crops):
            left, _, top, _ = pad
            window = upsample(grid.float(), tuple(crop.shape[-2:]))  # to the (padded) window
            canvas.add(box, window[:, top:top + box[1] - box[0], left:left + box[3] - box[2]])
        grids[method] = []  # free the windows' scores
        yield method, upsample(canvas.merged(), (height, width))


def refine(logits: torch.Tensor, image_rgb: np.ndarray, protocol: Protocol) -> torch.Tensor:
    """PAMR on the merged logits when the protocol asks for it: the guide is the normalised resized
    image, bilinearly resized to the image's size (the harness's order)."""
    if protocol.pamr_steps <= 0:
        return logits
    height, width = image_rgb.shape[:2]
    size = keep_ratio_size(height, width, protocol.short_side, protocol.long_side)
    guide = upsample(normalise(resize_image(image_rgb, size), logits.device)[0], (height, width))[None]
    return pamr(guide, logits[None].float(), protocol.pamr_steps, protocol.pamr_dilations)[0]


def predict_methods(encoder: WindowEncoder, text_features: torch.Tensor, image_rgb: np.ndarray,
                    classes: ClassList, protocol: Protocol) -> Iterator[tuple[str, np.ndarray, torch.Tensor]]:
    """Per method, one at a time: its class map (H, W) uint8 and the class probabilities (C, H, W) it
    was taken from (after the area rule)."""
    for method, logits in image_logits(encoder, text_features, image_rgb, protocol):
        logits = refine(logits, image_rgb, protocol)
        probabilities = class_probabilities(logits, classes.query_class, len(classes), protocol.logit_scale)
        del logits
        probabilities = area_rule(probabilities, protocol.area_threshold)
        prediction = predict_classes(probabilities, protocol.prob_threshold).to(torch.uint8).cpu().numpy()
        yield method, prediction, probabilities


def predict_image(encoder: WindowEncoder, text_features: torch.Tensor, image_rgb: np.ndarray,
                  classes: ClassList, protocol: Protocol) -> dict[str, np.ndarray]:
    """Per method the class map (H, W) uint8."""
    return {method: prediction for method, prediction, _ in
            predict_methods(encoder, text_features, image_rgb, classes, protocol)}
