"""One image, start to finish: maps, threshold, points and (optionally) SAM masks.

The CLI (`explain` and `calibrate`) and notebooks use this; the app runs the same
steps one at a time so it can show the heatmaps before SAM is done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .clip.dense import ProxyEncoder
from .clip.explainer import ClipExplainer
from .images import WORK_MAX_SIDE, WorkingImage, fit_long_side, load_image
from .method.views import Explanation, apply_threshold, decode_masks
from .output.files import explanation_files
from .request import ExplainRequest
from .sam.segmenter import SamSegmenter


def explain_image(explainer: ClipExplainer, segmenter: SamSegmenter | None, image_rgb: np.ndarray,
                  request: ExplainRequest) -> Explanation:
    """Raw maps for the request's labels, viewed at its threshold, with SAM's masks when `segmenter` is given
    (whose image encoder is also ProxyCLIP's proxy)."""
    maps = explainer.compute_maps(image_rgb, request.labels, request.maps, proxy=proxy_of(segmenter))
    explanation = apply_threshold(maps, request.threshold, request.points)
    if segmenter is None:
        return explanation
    return add_masks(explanation, segmenter, image_rgb)


def proxy_of(segmenter) -> ProxyEncoder | None:
    """The segmenter's image encoder as ProxyCLIP's proxy, where it has one (SAM's ViT encoder)."""
    return getattr(segmenter, "proxy", None)


def add_masks(explanation: Explanation, segmenter: SamSegmenter, image_rgb: np.ndarray) -> Explanation:
    """SAM's masks for every found label (the image is encoded once and cached by the segmenter); the
    encoding's time is recorded as `sam_image`."""
    start = time.perf_counter()
    embedding = segmenter.embed(image_rgb)
    explanation.timings["sam_image"] = time.perf_counter() - start
    return decode_masks(explanation, lambda points: segmenter.predict(embedding, points))


@dataclass(frozen=True)
class ExplainedFile:
    """One image file explained: the view, the pixels worked on, result.json's content and every output file."""

    explanation: Explanation
    working: WorkingImage
    result: dict
    files: dict[str, bytes]  # name -> bytes, as `surgery.output.files.write_files` takes them


def explain_file(path: Path, explainer: ClipExplainer, segmenter: SamSegmenter | None, request: ExplainRequest,
                 *, max_side: int = WORK_MAX_SIDE, coco: bool = False) -> ExplainedFile:
    """What `python -m surgery explain` makes of one image file, not yet written: the file decoded
    (`InputError` when it cannot be), scaled to `max_side`, explained, and its output files, with the
    request's notes and any scaling note in result.json (and coco.json with `coco`); a person's points and
    truth mask are checked against the working image (`ExplainRequest.for_image`)."""
    path = Path(path)
    working = fit_long_side(load_image(path, name=path.name), max_side)
    request = request.for_image(working.rgb.shape[1], working.rgb.shape[0])
    explanation = explain_image(explainer, segmenter, working.rgb, request)
    notes = request.notes + ((working.note,) if working.note else ())
    result, files = explanation_files(working.rgb, explanation, model=explainer.name,
                                      sam_model=None if segmenter is None else segmenter.name, notes=notes,
                                      source_size=working.source_size,
                                      coco_file_name=path.name if coco else None, truth=request.truth)
    return ExplainedFile(explanation, working, result, files)
