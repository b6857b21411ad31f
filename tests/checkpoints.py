"""Random CLIP, SAM and SAM 2.1 checkpoints in the real file formats, for tests and benchmarks.

Real weights can never be downloaded here, so tests and benchmarks write a
deterministic random checkpoint of a chosen architecture to disk and load it
through the same loading path the app uses.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from surgery.sam.architecture import VIT_B_ARCH, SamArchitecture, make_sam
from surgery.sam.sam2_architecture import SAM2_ARCHITECTURES, Sam2Architecture, make_sam2

__all__ = ["VIT_B_ARCH", "SMALL_ARCH", "random_sam_state_dict", "write_random_sam_checkpoint",
           "random_sam2_state_dict", "write_random_sam2_checkpoint", "write_random_clip_checkpoint"]

# Small but structurally complete: 16×16 token grid, window 5 (so windows are
# padded, 16 → 20), two windowed and two global blocks.
SMALL_ARCH = SamArchitecture(
    encoder_embed_dim=64, encoder_depth=4, encoder_num_heads=2,
    encoder_global_attn_indexes=(1, 3), window_size=5, img_size=256,
    out_chans=32, mask_in_chans=8, decoder_mlp_dim=64, iou_head_hidden_dim=32,
)


def random_sam_state_dict(arch: SamArchitecture, seed: int = 0) -> dict[str, torch.Tensor]:
    """A float32 state dict of this architecture with reproducible random values (see `random_like`)."""
    with torch.device("meta"):  # shapes only
        template = make_sam(arch).state_dict()
    return random_like(template, seed)


def random_like(template: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """The template's names and shapes with reproducible random float32 values.

    Every floating tensor is redrawn, including those SAM initialises to
    zeros/ones (relative-position tables, absolute position embedding, norms),
    so every code path carries signal. Scales keep activations O(1).
    """
    generator = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for name, tensor in template.items():
        if not tensor.is_floating_point():  # none in SAM today; keep any such tensor well-defined
            weights[name] = torch.zeros(tensor.shape, dtype=tensor.dtype)
            continue
        noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
        if name.endswith("positional_encoding_gaussian_matrix"):
            value = noise  # SAM's own init: standard normal
        elif tensor.ndim == 1 and name.endswith(".weight"):
            value = 1.0 + 0.1 * noise  # norm gains (SAM's only 1-D weights)
        elif tensor.ndim == 1:
            value = 0.02 * noise  # biases and norm shifts
        elif "rel_pos" in name:
            value = 0.5 * noise  # large enough to move the attention
        elif name.endswith("pos_embed") or name.endswith("pos_embed_window"):
            value = 0.1 * noise
        else:
            fan_in = math.prod(tensor.shape[1:]) if tensor.ndim > 1 else 1
            if ".output_upscaling." in name and tensor.ndim == 4:  # ConvTranspose: (in, out, k, k)
                fan_in = tensor.shape[0]
            value = noise / math.sqrt(max(1, fan_in))
        weights[name] = value.contiguous()
    return weights


def write_random_sam_checkpoint(path: str | os.PathLike, arch: SamArchitecture, seed: int = 0) -> Path:
    """Save a random SAM of `arch` as `.safetensors` or as a torch state dict (.pth/.pt/.bin)."""
    path = Path(path)
    weights = random_sam_state_dict(arch, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(weights, str(path))
    else:
        torch.save(weights, str(path))
    return path


def write_proxy_sam_checkpoint(path: str | os.PathLike) -> Path:
    """The methods2 fixture's tiny SAM (`sam_tiny.pth`) as the official release stores one (a plain state
    dict, torch.save): its image encoder, kept in tests/data/methods2/sam_image_encoder.safetensors, plus
    the prompt encoder and mask decoder of a seeded random segment_anything model of the matching shape
    (they do not touch ProxyCLIP's proxy features)."""
    from functools import partial

    from safetensors.torch import load_file
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    sam = Sam(  # as segment_anything.build_sam._build_sam lays one out, at the tiny encoder's shape
        image_encoder=ImageEncoderViT(depth=3, embed_dim=96, img_size=1024, mlp_ratio=4,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=3,
                                      patch_size=16, qkv_bias=True, use_rel_pos=True, global_attn_indexes=(1,),
                                      window_size=14, out_chans=256),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                                     mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                                 transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )
    state = sam.state_dict()
    encoder = load_file(Path(__file__).parent / "data" / "methods2" / "sam_image_encoder.safetensors")
    assert set(encoder) == {k for k in state if k.startswith("image_encoder.")}
    state.update(encoder)
    path = Path(path)
    torch.save(state, path)
    return path


def random_sam2_state_dict(arch: Sam2Architecture | str = "test", seed: int = 0) -> dict[str, torch.Tensor]:
    """A float32 SAM 2.1 state dict of this architecture (a name in `SAM2_ARCHITECTURES`) with reproducible
    random values, laid out by the official package's network (`make_sam2`)."""
    if isinstance(arch, str):
        arch = SAM2_ARCHITECTURES[arch]
    template = make_sam2(arch).state_dict()  # real (discarded) init: Hiera cannot be built on the meta device
    return random_like(template, seed)


def write_random_sam2_checkpoint(path: str | os.PathLike, arch: Sam2Architecture | str = "test",
                                 seed: int = 0) -> Path:
    """Save a random SAM 2.1 in the release format, `torch.save({"model": state_dict})` (.pt), or as
    .safetensors (a plain state dict)."""
    path = Path(path)
    weights = random_sam2_state_dict(arch, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(weights, str(path))
    else:
        torch.save({"model": weights}, str(path))
    return path


def write_random_clip_checkpoint(path: str | os.PathLike, layers: int, width: int, seed: int = 0,
                                 patch_size: int = 16) -> Path:
    """A random CLIP ViT as OpenAI's state dict lays one out (the tiny parity checkpoint's format), as
    .safetensors: `layers` vision blocks of `width` (width / 64 heads), a 224 px position grid and a
    two-block text tower of width 64, built by open_clip's own CLIP class."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = open_clip.model.CLIP(
        embed_dim=64, vision_cfg=open_clip.model.CLIPVisionCfg(layers=layers, width=width, patch_size=patch_size,
                                                               image_size=224),
        text_cfg=open_clip.model.CLIPTextCfg(layers=2, width=64, heads=1, context_length=77, vocab_size=49408))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    return path
