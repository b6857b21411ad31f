"""CLIP Surgery Explorer's engine: why CLIP matches an image to a word, as arrays.

A notebook session::

    import surgery
    explainer = surgery.load_clip("ViT-B/16")              # or load_clip(checkpoint="weights.safetensors")
    segmenter = surgery.load_segmenter("vit_b")            # optional: SAM masks from the map's points
    image = surgery.load_image("photo.jpg")                # uint8 (H, W, 3)
    maps = surgery.compute_maps(explainer, image, "person, bench, cat+grass")
    view = surgery.apply_threshold(maps, 0.1)              # found or not, points per label (no model)
    view = surgery.add_masks(view, segmenter, image)       # SAM's masks for the found labels
    surgery.write_outputs("out/photo", image, view, explainer=explainer, segmenter=segmenter)

Layers (dependencies point down the list):

- `surgery.output`: overlays, histograms, PNG, result.json/maps.npz files, COCO;
- `surgery.clip`, `surgery.sam`: the networks, their forwards and caches;
- `surgery.hub`: named checkpoints, download and verification, safe reading;
- `surgery.method`: the method on arrays (feature surgery, maps, threshold, points, labels, views).

`surgery.loading` is the one path from a name or file to a loaded model; its `device`
argument (`"auto"`, the default: CUDA when available, else the CPU; `"cpu"`; `"cuda[:N]"`)
says where the model runs. `MapOptions(precision=...)` is `"fp32"` (exact) unless asked:
`"bf16"` is the faster choice on a GPU. `build_request` checks everything a person gives at once (what
the CLI and the app do). The method is described in docs/method.md, the layers in docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import CheckpointError, InputError, UserError, WeightsUnavailable
from .images import fit_long_side, load_image
from .loading import load_clip, load_segmenter
from .method.labels import Label, parse_labels
from .method.options import MapOptions, PointOptions, check_redundancy
from .method.results import MapsResult
from .method.table import METHOD_TABLE
from .method.threshold import check_threshold
from .method.views import Explanation
from .method.views import apply_threshold as _apply_threshold
from .pipeline import add_masks
from .precision import resolve_precision
from .request import ExplainRequest, build_request

__all__ = [
    "load_clip", "load_segmenter", "load_image", "fit_long_side", "parse_labels", "compute_maps",
    "apply_threshold", "add_masks", "write_outputs", "build_request", "ExplainRequest", "MapOptions",
    "MapsResult", "PointOptions", "Explanation", "Label", "METHOD_TABLE", "UserError", "InputError",
    "CheckpointError", "WeightsUnavailable",
]


def compute_maps(explainer, image_rgb: np.ndarray, labels: str | Sequence[Label],
                 options: MapOptions = MapOptions()) -> MapsResult:
    """Raw maps of every method in `options` for each label on its grid (no threshold yet).

    `labels` is the text a person types (`"person, bench, cat+grass"`) or parsed `Label`s. An
    `InputError` when the options do not fit the labels, the model or the device it runs on.
    """
    parsed = parse_labels(labels).labels if isinstance(labels, str) else tuple(labels)
    check_redundancy(options.redundancy, parsed)
    resolve_precision(options.precision, explainer.device)
    explainer.check_fits(options)
    return explainer.compute_maps(image_rgb, parsed, options)


def apply_threshold(maps: MapsResult, threshold: float | None = None,
                    options: PointOptions = PointOptions()) -> Explanation:
    """Per label: found or not at `threshold` (None or 0: off), display maps and SAM's prompt points."""
    return _apply_threshold(maps, check_threshold(threshold), options)


def write_outputs(directory: str | Path, image_rgb: np.ndarray, explanation: Explanation, *,
                  explainer=None, segmenter=None, coco_file_name: str | None = None) -> Path:
    """Write result.json, maps.npz and the PNG overlays into `directory` (as the CLI does); returns it.

    Pass the `segmenter` whose masks `explanation` holds to include masks (maps.npz, sam_*.png, masks.png).
    Earlier outputs in `directory` are replaced, so it holds this explanation's files only.
    """
    from .output.files import explanation_files, write_files

    _, files = explanation_files(image_rgb, explanation, model=getattr(explainer, "name", "clip"),
                                 sam_model=getattr(segmenter, "name", None), coco_file_name=coco_file_name)
    write_files(Path(directory), files)
    return Path(directory)
