"""Resolving what a person names (a registry name, an open_clip `MODEL:TAG`, or a local file) to one
model source: where its weights come from and what outputs call it. Nothing is downloaded here;
`ModelSource.weights_path()` fetches a registry file when it is first needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .download import download_checkpoint
from .openclip_names import openclip_checkpoint, parse_openclip_name
from .registry import CLIP_CHECKPOINTS, SAM_CHECKPOINTS, HubCheckpoint


@dataclass(frozen=True)
class ModelSource:
    """One model's weights: a local file, or a registry entry fetched on demand.

    `openclip_name` is set for open_clip's `MODEL:TAG` networks (their architecture comes from
    open_clip's config; the weights must fit it); otherwise the architecture is read from the
    checkpoint's tensor shapes.
    """

    kind: str  # "clip" or "sam"
    name: str  # the name asked for: a registry name, MODEL:TAG, or the local file's name
    display_name: str  # what result.json and the page call it
    local_file: Path | None = None
    hub: HubCheckpoint | None = None
    openclip_name: str | None = None

    def weights_path(self) -> Path:
        """The weight file: the local one, or the registry file (downloaded and verified once)."""
        if self.local_file is not None:
            return self.local_file
        assert self.hub is not None
        return download_checkpoint(self.hub)


def unknown_clip(name: str) -> InputError:
    return InputError(
        f"Unknown CLIP model '{name}'. Choose one of {', '.join(CLIP_CHECKPOINTS)}, or an open_clip "
        "pretrained name MODEL:TAG such as ViT-B-16:laion2b_s34b_b88k."
    )


def is_known_clip(name: str) -> bool:
    return name in CLIP_CHECKPOINTS or parse_openclip_name(name) is not None


def resolve_clip(name: str | None = None, checkpoint: str | Path | None = None,
                 display_name: str | None = None) -> ModelSource:
    """A CLIP source. With `checkpoint`, that file's weights are used (for an open_clip `name` they must
    fit its architecture; any other name only labels them). Without, `name` must be in a registry."""
    local = Path(checkpoint) if checkpoint else None
    openclip = name if name and parse_openclip_name(name) else None
    if local is None:
        if not name:
            raise InputError("Name a CLIP model or pass a checkpoint file.")
        if openclip:
            hub = openclip_checkpoint(name)
        elif name in CLIP_CHECKPOINTS:
            hub = CLIP_CHECKPOINTS[name]
        else:
            raise unknown_clip(name)
        return ModelSource("clip", name, display_name or name, hub=hub, openclip_name=openclip)
    return ModelSource("clip", name or local.name, display_name or local.name, local_file=local,
                       openclip_name=openclip)


def resolve_sam(name: str, checkpoint: str | Path | None = None, display_name: str | None = None) -> ModelSource:
    """A SAM source: `checkpoint` when given (its architecture is read from it), else the registry's `name`."""
    if checkpoint:
        local = Path(checkpoint)
        return ModelSource("sam", name, display_name or local.name, local_file=local)
    if name not in SAM_CHECKPOINTS:
        raise InputError(f"Unknown SAM model '{name}'. Choose one of: {', '.join(SAM_CHECKPOINTS)}.")
    return ModelSource("sam", name, display_name or name, hub=SAM_CHECKPOINTS[name])
