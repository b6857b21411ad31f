"""open_clip's other pretrained CLIPs (LAION, DataComp, MetaCLIP, ...) as networks.

The network comes from open_clip's model config for a `MODEL:TAG` name
(`surgery.hub.openclip_names`); the weights go through our own download, checksum
and safe-loading path. Architectures the surgery cannot handle are refused by name
before anything is downloaded.
"""

from __future__ import annotations

import open_clip
import torch
from open_clip.model import CLIP
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

from ..errors import CheckpointError, InputError
from ..hub.openclip_names import parse_openclip_name, pretrained_cfg


def surgery_incompatibility(model: torch.nn.Module) -> str | None:
    """Why CLIP Surgery cannot run on this network, or None when it can."""
    if not isinstance(model, CLIP):
        return "its text tower is not CLIP's own transformer (e.g. SigLIP, CoCa or a Hugging Face text model)"
    if getattr(model, "text_pool_type", "argmax") != "argmax":
        return "its text features are not taken at the EOT token"
    visual = model.visual
    if isinstance(visual, ModifiedResNet):
        return None
    if not isinstance(visual, VisionTransformer):
        return "its image tower is not a CLIP ViT or ResNet (e.g. a timm or ConvNeXt tower)"
    if getattr(visual, "attn_pool", None) is not None:
        return "its ViT ends in an attention pooling head instead of a CLS token"
    if getattr(visual, "pool_type", "tok") != "tok":
        return "its ViT pools by averaging, without a CLS token"
    if visual.proj is None:
        return "its ViT has no output projection"
    if not all(isinstance(block, ResidualAttentionBlock) for block in visual.transformer.resblocks):
        return "its ViT blocks use a custom attention (qk-norm, scaled cosine...) that value-value attention cannot reuse"
    return None


def check_surgery_compatible(model: torch.nn.Module, name: str) -> None:
    reason = surgery_incompatibility(model)
    if reason is not None:
        raise InputError(f"{name} cannot be used with CLIP Surgery: {reason}.")


def build_openclip(name: str) -> CLIP:
    """open_clip's network for `name` (random weights), eval, float32, checked for surgery."""
    cfg = pretrained_cfg(name)
    model_name, _ = parse_openclip_name(name)
    model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=bool(cfg.get("quick_gelu")))
    check_surgery_compatible(model, name)
    model = model.float().eval()
    model.requires_grad_(False)
    return model


def load_weights(model: CLIP, state_dict: dict[str, torch.Tensor], name: str) -> None:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"The weights do not fit {name}: {str(exc).splitlines()[0][:200]}") from None
