"""Turning a model name or a local file into ready engine objects.

A local checkpoint path always wins over the registry; registry entries are
downloaded (and checksum-verified) through `surgery.weights`.
"""

from __future__ import annotations

from pathlib import Path

from .engine import ClipExplainer
from .errors import InputError
from .registry import CLIP_CHECKPOINTS, SAM_CHECKPOINTS
from .weights import download_checkpoint


def clip_checkpoint_path(model: str, checkpoint: str | Path | None = None) -> Path:
    if checkpoint:
        return Path(checkpoint)
    if model not in CLIP_CHECKPOINTS:
        raise InputError(f"Unknown CLIP model '{model}'. Choose one of: {', '.join(CLIP_CHECKPOINTS)}.")
    return download_checkpoint(CLIP_CHECKPOINTS[model])


def sam_checkpoint_path(sam_model: str, checkpoint: str | Path | None = None) -> Path:
    if checkpoint:
        return Path(checkpoint)
    if sam_model not in SAM_CHECKPOINTS:
        raise InputError(f"Unknown SAM model '{sam_model}'. Choose one of: {', '.join(SAM_CHECKPOINTS)}.")
    return download_checkpoint(SAM_CHECKPOINTS[sam_model])


def load_clip_explainer(model: str, checkpoint: str | Path | None = None) -> ClipExplainer:
    path = clip_checkpoint_path(model, checkpoint)
    return ClipExplainer.from_file(path, name=model if not checkpoint else Path(checkpoint).name)


def load_sam_segmenter(sam_model: str, checkpoint: str | Path | None = None, precision: str = "fp32"):
    from .masks import SamSegmenter
    from .sam_model import load_sam

    path = sam_checkpoint_path(sam_model, checkpoint)
    return SamSegmenter(load_sam(path), precision=precision)
