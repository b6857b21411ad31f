"""COCO-format export of the masks: run-length encoded, one category per label."""

from __future__ import annotations

import cv2
import numpy as np

from ..method.views import Explanation


def encode_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: run lengths over the mask in column-major order, starting with zeros."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    boundaries = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(boundaries).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def decode_rle(rle: dict) -> np.ndarray:
    height, width = rle["size"]
    flat = np.zeros(height * width, dtype=bool)
    position, value = 0, False
    for count in rle["counts"]:
        if value:
            flat[position:position + count] = True
        position += count
        value = not value
    return flat.reshape((width, height)).T


def mask_box(mask: np.ndarray) -> list[int] | None:
    """[x, y, width, height] of the mask's bounding box (COCO's bbox), None when empty."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def coco_document(explanation: Explanation, file_name: str, image_size: tuple[int, int] | None = None) -> dict:
    """One image, one category per label, one annotation per mask (per instance when split).

    `image_size` (height, width) is the size of the file `file_name` names, when the masks were
    made on a scaled copy of it: they are scaled back (nearest neighbour) so they lie on that file.
    """
    maps = explanation.maps
    height, width = image_size or (maps.height, maps.width)

    def on_file(mask: np.ndarray) -> np.ndarray:
        if mask.shape == (height, width):
            return mask
        return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)

    categories = [{"id": i + 1, "name": view.text, "supercategory": "label"}
                  for i, view in enumerate(explanation.labels)]
    annotations = []
    for category_id, view in enumerate(explanation.labels, start=1):
        if view.instances:
            masks = [(inst.mask.mask, inst.mask.score) for inst in view.instances if inst.mask is not None]
        elif view.mask is not None:
            masks = [(view.chosen_mask, view.chosen_score)]
        else:
            masks = []
        for mask, score in masks:
            mask = on_file(mask)
            box = mask_box(mask)
            if box is None:
                continue
            annotations.append({
                "id": len(annotations) + 1, "image_id": 1, "category_id": category_id,
                "segmentation": encode_rle(mask), "area": int(mask.sum()), "bbox": box,
                "iscrowd": 0, "score": round(float(score), 6),  # a predicted instance, not a crowd region
            })
    return {
        "info": {"description": "CLIP Surgery Explorer masks"},
        "images": [{"id": 1, "file_name": file_name, "width": width, "height": height}],
        "categories": categories,
        "annotations": annotations,
    }
