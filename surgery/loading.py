"""The one path from a model source to a loaded, placed model (app, CLI, tests and benchmarks).

Construction and device placement happen here and nowhere else: each loader
takes the `device` setting (`auto`, `cpu`, `cuda[:N]`, see `surgery.device`),
and the default SAM follows the device actually used (SAM 2.1 hiera-large only
where the models really run on a GPU, hiera-tiny elsewhere).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .clip.architecture import build_clip
from .clip.explainer import ClipExplainer
from .clip.openclip import build_openclip, load_weights
from .device import resolve_device, runs_on_gpu
from .hub.download import file_sha256
from .hub.openclip_names import image_normalisation
from .hub.registry import default_sam_model
from .hub.sources import ModelSource, resolve_clip, resolve_sam
from .hub.state_dict import load_state_dict
from .sam.architecture import build_sam
from .sam.sam2_architecture import build_sam2_model, is_sam2_state_dict
from .sam.sam2_segmenter import Sam2Segmenter
from .sam.segmenter import SamSegmenter, Segmenter


def default_sam_name(device: torch.device | str | None = "auto") -> str:
    """The SAM used when none is named: follows where models actually run, not what hardware exists."""
    return default_sam_model(runs_on_gpu=runs_on_gpu(resolve_device(device)))


def load_clip(source: ModelSource | str | None = None, checkpoint: str | Path | None = None, *,
              display_name: str | None = None, text_cache_dir: Path | None = None,
              device: torch.device | str | None = "auto") -> ClipExplainer:
    """A `ClipExplainer` for a source, or for a name and/or local checkpoint file (see `resolve_clip`),
    placed on `device`."""
    device = resolve_device(device)  # before any download: a missing GPU is reported first
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
    # Built on the CPU (the template prefixes are computed there), then placed.
    explainer = ClipExplainer(network, name=source.display_name, weights_id=file_sha256(path)[:16],
                              text_cache_dir=text_cache_dir, **extra)
    return explainer.to(device)


def load_segmenter(source: ModelSource | str | None = None, checkpoint: str | Path | None = None, *,
                   precision: str = "fp32", display_name: str | None = None,
                   device: torch.device | str | None = "auto") -> Segmenter:
    """A segmenter for a source, or for a registry name and/or local checkpoint (see `resolve_sam`),
    placed on `device`: a `Sam2Segmenter` for a SAM 2.1 checkpoint, a `SamSegmenter` for a SAM one.

    The checkpoint's own tensors decide which (a local file named with another model's name is
    still built as what it is, as its architecture is read from it)."""
    device = resolve_device(device)
    if not isinstance(source, ModelSource):
        source = resolve_sam(source or default_sam_name(device), checkpoint, display_name)
    state_dict = load_state_dict(source.weights_path())
    if is_sam2_state_dict(state_dict):
        return Sam2Segmenter(build_sam2_model(state_dict).to(device), precision=precision, name=source.display_name)
    return SamSegmenter(build_sam(state_dict).to(device), precision=precision, name=source.display_name)
