"""The one path from a model source to a loaded, placed model (app, CLI, tests and benchmarks).

Construction and device placement happen here and nowhere else. Models run on
the CPU today; `models_device()` is the single place that says so, and the
default SAM follows it (vit_h only where models really run on a GPU).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .clip.architecture import build_clip
from .clip.explainer import ClipExplainer
from .clip.openclip import build_openclip, load_weights
from .hub.download import file_sha256
from .hub.openclip_names import image_normalisation
from .hub.registry import default_sam_model
from .hub.sources import ModelSource, resolve_clip, resolve_sam
from .hub.state_dict import load_state_dict
from .sam.architecture import load_sam
from .sam.segmenter import SamSegmenter


def models_device() -> torch.device:
    """Where models are placed and run."""
    return torch.device("cpu")


def default_sam_name() -> str:
    """The SAM used when none is named: follows where models actually run, not what hardware exists."""
    return default_sam_model(runs_on_gpu=models_device().type == "cuda")


def load_clip(source: ModelSource | str | None = None, checkpoint: str | Path | None = None, *,
              display_name: str | None = None, text_cache_dir: Path | None = None) -> ClipExplainer:
    """A `ClipExplainer` for a source, or for a name and/or local checkpoint file (see `resolve_clip`)."""
    if not isinstance(source, ModelSource):
        source = resolve_clip(source, checkpoint, display_name)
    if source.openclip_name:
        network = build_openclip(source.openclip_name)  # random weights: checks compatibility before any download
        path = source.weights_path()
        load_weights(network, load_state_dict(path), source.openclip_name)
        mean, std = image_normalisation(source.openclip_name)
        extra = {"mean": mean, "std": std}
    else:
        path = source.weights_path()
        network = build_clip(load_state_dict(path))
        extra = {}
    network = network.to(models_device())
    return ClipExplainer(network, name=source.display_name, weights_id=file_sha256(path)[:16],
                         text_cache_dir=text_cache_dir, **extra)


def load_segmenter(source: ModelSource | str | None = None, checkpoint: str | Path | None = None, *,
                   precision: str = "fp32", display_name: str | None = None) -> SamSegmenter:
    """A `SamSegmenter` for a source, or for a registry name and/or local checkpoint (see `resolve_sam`)."""
    if not isinstance(source, ModelSource):
        source = resolve_sam(source or default_sam_name(), checkpoint, display_name)
    sam = load_sam(source.weights_path()).to(models_device())
    return SamSegmenter(sam, precision=precision, name=source.display_name)
