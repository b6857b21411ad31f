"""What the Segment Anything network is, read from its checkpoint, and how it is built.

`segment_anything.build_sam` hard-codes three layouts (vit_b/l/h) and loads
with an unsafe `torch.load`. Here the architecture is read from the tensor
shapes of the state dict instead, so any SAM-layout checkpoint (the official
files, fine-tunes with other depths or image sizes, the small random ones the
tests write) is built the same way, read only through `surgery.hub.state_dict`, and
loaded strictly: a checkpoint that does not fit is a `CheckpointError`, never
silently half-loaded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import partial

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from ..errors import CheckpointError
from ..hub.state_dict import load_state_dict

# Constants of every released SAM that leave no trace in tensor shapes.
ENCODER_NORM_EPS = 1e-6
DECODER_NUM_HEADS = 8
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

_PATCH_WEIGHT = "image_encoder.patch_embed.proj.weight"
_BLOCK_KEY = re.compile(r"^image_encoder\.blocks\.(\d+)\.")
_DECODER_LAYER_KEY = re.compile(r"^mask_decoder\.transformer\.layers\.(\d+)\.")
_IOU_LAYER_KEY = re.compile(r"^mask_decoder\.iou_prediction_head\.layers\.(\d+)\.weight$")


@dataclass(frozen=True)
class SamArchitecture:
    """Everything that distinguishes one SAM network from another.

    `encoder_global_attn_indexes` are the blocks that attend over the whole
    token grid; all others attend inside `window_size`² windows. `out_chans` is
    both the encoder's output channels and the prompt/decoder embedding width.
    """

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    window_size: int
    patch_size: int = 16
    img_size: int = 1024
    in_chans: int = 3
    encoder_mlp_dim: int | None = None  # None: 4 × embed dim, as in every released SAM
    out_chans: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    def __post_init__(self) -> None:
        if self.encoder_mlp_dim is None:  # so equal architectures compare equal
            object.__setattr__(self, "encoder_mlp_dim", 4 * self.encoder_embed_dim)
        object.__setattr__(self, "encoder_global_attn_indexes", tuple(self.encoder_global_attn_indexes))

    @property
    def mlp_dim(self) -> int:
        return int(self.encoder_mlp_dim)  # type: ignore[arg-type]

    @property
    def grid_size(self) -> int:
        """Tokens per side of the encoder's (square) input."""
        return self.img_size // self.patch_size


VIT_B_ARCH = SamArchitecture(
    encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12,
    encoder_global_attn_indexes=(2, 5, 8, 11), window_size=14,
)
VIT_L_ARCH = SamArchitecture(
    encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16,
    encoder_global_attn_indexes=(5, 11, 17, 23), window_size=14,
)
VIT_H_ARCH = SamArchitecture(
    encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16,
    encoder_global_attn_indexes=(7, 15, 23, 31), window_size=14,
)


def strip_key_prefix(state_dict: dict[str, torch.Tensor], anchor: str = _PATCH_WEIGHT) -> dict[str, torch.Tensor]:
    """Remove a wrapper prefix ("module.", "sam.", …) in front of SAM's own key names.

    Official SAM files use bare `image_encoder.…` keys; re-saved ones often
    carry a prefix. The prefix is whatever precedes the `anchor` key (the
    patch embedding's, by default SAM's).
    """
    for key in state_dict:
        if key.endswith(anchor):
            prefix = key[: -len(anchor)]
            if not prefix:
                return state_dict
            return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}
    return state_dict


def read_sam_architecture(state_dict: dict[str, torch.Tensor]) -> SamArchitecture:
    """Read a SAM architecture from tensor shapes alone (no forward pass, nothing assumed but constants).

    Raises `CheckpointError` naming what is missing when the dict is not SAM-shaped.
    """
    sd = strip_key_prefix(state_dict)
    if _PATCH_WEIGHT not in sd:
        sample = ", ".join(sorted(state_dict)[:3])
        raise CheckpointError(
            "This checkpoint is not a Segment Anything model: it has no "
            f"'{_PATCH_WEIGHT}' tensor (its first keys are: {sample}). "
            "Pass a SAM .pth/.safetensors file such as sam_vit_b_01ec64.pth (or SAM 2.1's sam2.1_hiera_tiny.pt)."
        )

    def need(key: str) -> torch.Tensor:
        if key not in sd:
            raise CheckpointError(
                f"This SAM checkpoint is incomplete: the tensor '{key}' is missing. "
                "It may be an image-encoder-only export or a different model; pass a full SAM checkpoint."
            )
        return sd[key]

    patch_weight = need(_PATCH_WEIGHT)
    if patch_weight.ndim != 4 or patch_weight.shape[2] != patch_weight.shape[3]:
        raise CheckpointError(f"'{_PATCH_WEIGHT}' has shape {tuple(patch_weight.shape)}; expected a square conv kernel.")
    embed_dim, in_chans, patch_size = int(patch_weight.shape[0]), int(patch_weight.shape[1]), int(patch_weight.shape[2])

    pos_embed = need("image_encoder.pos_embed")
    if pos_embed.ndim != 4 or pos_embed.shape[1] != pos_embed.shape[2]:
        raise CheckpointError(f"'image_encoder.pos_embed' has shape {tuple(pos_embed.shape)}; expected (1, g, g, C).")
    grid = int(pos_embed.shape[1])

    block_ids = sorted({int(m.group(1)) for k in sd if (m := _BLOCK_KEY.match(k))})
    if not block_ids:
        need("image_encoder.blocks.0.attn.rel_pos_h")
    depth = len(block_ids)
    if block_ids != list(range(depth)):
        raise CheckpointError(f"The image encoder's blocks are numbered {block_ids}; expected 0..{depth - 1} without gaps.")

    global_length = 2 * grid - 1
    global_blocks: list[int] = []
    window_sizes: set[int] = set()
    head_dim = None
    for index in block_ids:
        rel_pos_h = need(f"image_encoder.blocks.{index}.attn.rel_pos_h")
        rel_pos_w = need(f"image_encoder.blocks.{index}.attn.rel_pos_w")
        if rel_pos_h.shape != rel_pos_w.shape:
            raise CheckpointError(f"Block {index} has differently shaped rel_pos_h/rel_pos_w; only square windows are supported.")
        length = int(rel_pos_h.shape[0])
        head_dim = int(rel_pos_h.shape[1])
        if length == global_length:
            global_blocks.append(index)
        else:
            window_sizes.add((length + 1) // 2)
    if len(window_sizes) > 1:
        raise CheckpointError(f"The windowed blocks use several window sizes {sorted(window_sizes)}; SAM uses one.")
    # With no windowed block at all the window size is irrelevant; keep SAM's 14.
    window_size = window_sizes.pop() if window_sizes else 14
    assert head_dim is not None
    if embed_dim % head_dim:
        raise CheckpointError(f"Embedding width {embed_dim} is not a multiple of the head width {head_dim}.")

    mlp_dim = int(need("image_encoder.blocks.0.mlp.lin1.weight").shape[0])
    out_chans = int(need("image_encoder.neck.0.weight").shape[0])

    decoder_layers = sorted({int(m.group(1)) for k in sd if (m := _DECODER_LAYER_KEY.match(k))})
    cross_q = need("mask_decoder.transformer.final_attn_token_to_image.q_proj.weight")
    iou_layers = sorted({int(m.group(1)) for k in sd if (m := _IOU_LAYER_KEY.match(k))})
    need("mask_decoder.iou_prediction_head.layers.0.weight")
    decoder_mlp = need("mask_decoder.transformer.layers.0.mlp.lin1.weight")

    return SamArchitecture(
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=embed_dim // head_dim,
        encoder_global_attn_indexes=tuple(global_blocks),
        window_size=window_size,
        patch_size=patch_size,
        img_size=grid * patch_size,
        in_chans=in_chans,
        encoder_mlp_dim=mlp_dim,
        out_chans=out_chans,
        mask_in_chans=int(need("prompt_encoder.mask_downscaling.3.weight").shape[0]),
        decoder_depth=len(decoder_layers),
        decoder_mlp_dim=int(decoder_mlp.shape[0]),
        decoder_attention_downsample_rate=max(1, out_chans // int(cross_q.shape[0])),
        num_multimask_outputs=int(need("mask_decoder.mask_tokens.weight").shape[0]) - 1,
        iou_head_depth=len(iou_layers),
        iou_head_hidden_dim=int(need("mask_decoder.iou_prediction_head.layers.0.weight").shape[0]),
    )


def make_sam(arch: SamArchitecture) -> Sam:
    """A Sam of this architecture with default-initialised weights, built like segment_anything's `_build_sam`.

    Called under `torch.device("meta")` it only lays out the shapes, which is
    how `build_sam` avoids initialising weights it is about to overwrite.
    """
    grid = arch.grid_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.encoder_depth,
            embed_dim=arch.encoder_embed_dim,
            img_size=arch.img_size,
            mlp_ratio=arch.mlp_dim / arch.encoder_embed_dim,
            norm_layer=partial(torch.nn.LayerNorm, eps=ENCODER_NORM_EPS),
            num_heads=arch.encoder_num_heads,
            patch_size=arch.patch_size,
            in_chans=arch.in_chans,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=arch.encoder_global_attn_indexes,
            window_size=arch.window_size,
            out_chans=arch.out_chans,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.out_chans,
            image_embedding_size=(grid, grid),
            input_image_size=(arch.img_size, arch.img_size),
            mask_in_chans=arch.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=arch.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.out_chans,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=DECODER_NUM_HEADS,
                attention_downsample_rate=arch.decoder_attention_downsample_rate,
            ),
            transformer_dim=arch.out_chans,
            iou_head_depth=arch.iou_head_depth,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )


def _mismatch_report(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> str | None:
    """None when the dict fits the model exactly, else a short description of the first differences."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            parts.append(f"{label}: {', '.join(items[:3])}{more}")
    return "; ".join(parts) or None


def build_sam(state_dict: dict[str, torch.Tensor], fast_attention: bool = True) -> Sam:
    """Build the SAM the state dict describes and load it strictly, ready for inference.

    The model is float32, in eval mode and without gradients. `fast_attention`
    swaps the encoder's attention for `surgery.sam_fast_attention`'s exact but
    faster version (same parameters, same outputs to float rounding).
    """
    arch = read_sam_architecture(state_dict)
    weights = {
        k: (v.float() if v.is_floating_point() else v) for k, v in strip_key_prefix(state_dict).items()
    }
    with torch.device("meta"):  # shapes only: random init of every weight would be thrown away
        sam = make_sam(arch)
    problem = _mismatch_report(sam, weights)
    if problem is not None:
        raise CheckpointError(f"The SAM checkpoint does not match the architecture read from it ({problem}).")
    try:
        sam.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"The SAM checkpoint could not be loaded: {str(exc).splitlines()[0]}") from None
    # The only tensors not in a state dict: the pixel normalisation constants.
    sam.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
    sam.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)
    left_on_meta = [name for name, t in [*sam.named_parameters(), *sam.named_buffers()] if t.is_meta]
    assert not left_on_meta, f"not materialised: {left_on_meta}"
    sam.float().eval().requires_grad_(False)
    if fast_attention:
        from .fast_encoder import install_fast_attention

        install_fast_attention(sam.image_encoder)
    return sam


def load_sam(path: str | os.PathLike, fast_attention: bool = True) -> Sam:
    """Read a SAM checkpoint file (.pth/.pt/.bin/.safetensors) safely and build the model."""
    return build_sam(load_state_dict(path), fast_attention=fast_attention)
