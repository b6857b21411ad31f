"""Turning a model name or a local file into ready engine objects.

A local checkpoint path always wins over the registry; registry entries are
downloaded (and checksum-verified) through `surgery.weights`.
"""

from __future__ import annotations

from pathlib import Path

from .clip_model import build_clip
from .engine import ClipExplainer
from .errors import InputError
from .openclip_models import build_openclip, image_normalisation, load_weights, openclip_checkpoint, parse_openclip_name
from .registry import CLIP_CHECKPOINTS, SAM_CHECKPOINTS
from .weights import download_checkpoint, file_sha256, load_state_dict


def _unknown_clip(model: str) -> InputError:
    return InputError(
        f"Unknown CLIP model '{model}'. Choose one of {', '.join(CLIP_CHECKPOINTS)}, or an open_clip "
        "pretrained name MODEL:TAG such as ViT-B-16:laion2b_s34b_b88k."
    )


def sam_checkpoint_path(sam_model: str, checkpoint: str | Path | None = None) -> Path:
    if checkpoint:
        return Path(checkpoint)
    if sam_model not in SAM_CHECKPOINTS:
        raise InputError(f"Unknown SAM model '{sam_model}'. Choose one of: {', '.join(SAM_CHECKPOINTS)}.")
    return download_checkpoint(SAM_CHECKPOINTS[sam_model])


def load_clip_explainer(model: str, checkpoint: str | Path | None = None,
                        text_cache_dir: Path | None = None) -> ClipExplainer:
    """An OpenAI-layout CLIP from the registry (ViT or ResNet) or open_clip's registry (`MODEL:TAG`).

    With `checkpoint`, that file's weights are used; for an open_clip name they must fit its architecture.
    """
    if parse_openclip_name(model):
        network = build_openclip(model)  # random weights: checks surgery compatibility before any download
        path = Path(checkpoint) if checkpoint else download_checkpoint(openclip_checkpoint(model))
        load_weights(network, load_state_dict(path), model)
        mean, std = image_normalisation(model)
        name = Path(checkpoint).name if checkpoint else model
        return ClipExplainer(network, name=name, weights_id=file_sha256(path)[:16], mean=mean, std=std,
                             text_cache_dir=text_cache_dir)
    if checkpoint:
        path = Path(checkpoint)
        name = path.name
    elif model in CLIP_CHECKPOINTS:
        path = download_checkpoint(CLIP_CHECKPOINTS[model])
        name = model
    else:
        raise _unknown_clip(model)
    return ClipExplainer(build_clip(load_state_dict(path)), name=name, weights_id=file_sha256(path)[:16],
                         text_cache_dir=text_cache_dir)


def load_sam_segmenter(sam_model: str, checkpoint: str | Path | None = None, precision: str = "fp32"):
    from .masks import SamSegmenter
    from .sam_model import load_sam

    path = sam_checkpoint_path(sam_model, checkpoint)
    return SamSegmenter(load_sam(path), precision=precision)
