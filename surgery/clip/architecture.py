"""What the CLIP network is: open_clip's module built from an OpenAI-layout state dict.

The architecture is read from tensor shapes (as open_clip's
`build_model_from_openai_state_dict` does), but the weights are loaded straight
into float32 parameters: open_clip's helper first casts the model to float16,
which would round a float32 checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from ..errors import CheckpointError

REQUIRED_TEXT_KEYS = ("text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight")


@dataclass(frozen=True)
class ClipArchitecture:
    """Shapes that define an OpenAI CLIP; `vision_layers` is a 4-tuple for ResNets."""

    embed_dim: int
    image_size: int
    vision_width: int
    vision_layers: int | tuple[int, int, int, int]
    vision_patch_size: int | None
    context_length: int
    vocab_size: int
    text_width: int
    text_heads: int
    text_layers: int

    @property
    def is_vit(self) -> bool:
        return self.vision_patch_size is not None


def read_clip_architecture(state_dict: dict[str, torch.Tensor]) -> ClipArchitecture:
    missing = [k for k in REQUIRED_TEXT_KEYS if k not in state_dict]
    if missing:
        raise CheckpointError(
            f"This is not an OpenAI-layout CLIP checkpoint (missing {', '.join(missing)})."
        )
    try:
        if "visual.proj" in state_dict:
            vision_width = state_dict["visual.conv1.weight"].shape[0]
            vision_layers: int | tuple = len(
                [k for k in state_dict if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
            patch = state_dict["visual.conv1.weight"].shape[-1]
            grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            image_size = patch * grid
        elif "visual.attnpool.positional_embedding" in state_dict:
            vision_layers = tuple(
                len({k.split(".")[2] for k in state_dict if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4))
            vision_width = state_dict["visual.layer1.0.conv1.weight"].shape[0]
            out_grid = round((state_dict["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            patch = None
            image_size = out_grid * 32
        else:
            raise CheckpointError(
                "This CLIP checkpoint has neither a ViT (visual.proj) nor a ResNet (visual.attnpool) image tower."
            )
        text_width = state_dict["ln_final.weight"].shape[0]
        return ClipArchitecture(
            embed_dim=state_dict["text_projection"].shape[1],
            image_size=image_size,
            vision_width=vision_width,
            vision_layers=vision_layers,
            vision_patch_size=patch,
            context_length=state_dict["positional_embedding"].shape[0],
            vocab_size=state_dict["token_embedding.weight"].shape[0],
            text_width=text_width,
            text_heads=max(1, text_width // 64),
            text_layers=len({k.split(".")[2] for k in state_dict if k.startswith("transformer.resblocks.")}),
        )
    except KeyError as exc:
        raise CheckpointError(f"The CLIP checkpoint lacks the tensor {exc.args[0]}.") from None


def build_clip(state_dict: dict[str, torch.Tensor]) -> CLIP:
    """An eval-mode, float32, gradient-free open_clip CLIP holding exactly these weights.

    The model adopts the dict's float32 tensors (no copy): pass a dict nobody else will modify.
    """
    arch = read_clip_architecture(state_dict)
    vision_cfg = CLIPVisionCfg(
        layers=arch.vision_layers, width=arch.vision_width,
        patch_size=arch.vision_patch_size or 16, image_size=arch.image_size,
    )
    text_cfg = CLIPTextCfg(
        context_length=arch.context_length, vocab_size=arch.vocab_size,
        width=arch.text_width, heads=arch.text_heads, layers=arch.text_layers,
    )
    # Shapes only, then the checkpoint's own tensors are adopted (assign=True): no random
    # initialisation of ~150M parameters that would be overwritten, and no second copy of the
    # weights while loading (600 MB for ViT-B/16).
    with torch.device("meta"):
        model = CLIP(arch.embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=True, cast_dtype=None)
    weights = {k: v for k, v in state_dict.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise CheckpointError(f"The CLIP checkpoint does not match the architecture its shapes imply: {first}") from None
    # The one tensor not in a state dict: the text tower's causal mask (open_clip's build_causal_mask).
    model.attn_mask = torch.full((arch.context_length, arch.context_length), float("-inf")).triu_(1)
    left_on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left_on_meta:
        raise CheckpointError(f"The CLIP checkpoint lacks {', '.join(left_on_meta[:3])}.")
    model = model.float().eval()
    model.requires_grad_(False)
    return model
