"""open_clip's pretrained registry as a source of named checkpoints.

A name is `<open_clip model>:<pretrained tag>`, e.g. `ViT-B-16:laion2b_s34b_b88k`, looked
up in open_clip's own pretrained table (hub repo, activation, normalisation).
"""

from __future__ import annotations

import open_clip

from ..errors import InputError
from .registry import HubCheckpoint

OPENCLIP_WEIGHTS_FILE = "open_clip_model.safetensors"


def parse_openclip_name(name: str) -> tuple[str, str] | None:
    """(model, tag) when `name` is in open_clip's pretrained registry, else None."""
    if ":" not in name:
        return None
    model, tag = name.split(":", 1)
    return (model, tag) if open_clip.pretrained.is_pretrained_cfg(model, tag) else None


def pretrained_cfg(name: str) -> dict:
    parsed = parse_openclip_name(name)
    if parsed is None:
        raise InputError(f"'{name}' is not in open_clip's pretrained registry (use MODEL:TAG, e.g. "
                         "ViT-B-16:laion2b_s34b_b88k).")
    return open_clip.get_pretrained_cfg(*parsed)


def openclip_checkpoint(name: str) -> HubCheckpoint:
    cfg = pretrained_cfg(name)
    repo = cfg.get("hf_hub", "").strip("/")
    if not repo:
        raise InputError(f"{name} has no Hugging Face Hub copy in open_clip's registry; pass a local file.")
    return HubCheckpoint(name=name, repo_id=repo, filename=OPENCLIP_WEIGHTS_FILE, size_note="size varies")


def image_normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = pretrained_cfg(name)
    return tuple(cfg["mean"]), tuple(cfg["std"])
