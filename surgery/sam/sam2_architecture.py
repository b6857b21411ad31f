"""What a SAM 2.1 network is, read from its checkpoint, and how it is built from the official `sam2` package.

Meta's `sam2.build_sam.build_sam2` builds a network from a hydra config file
named by the caller. Here the checkpoint itself says which configuration it is:
its tensor shapes give the Hiera trunk's width and stages, the neck and memory
widths and the positional-embedding sizes. Those shapes do not show the head
counts, the global-attention blocks or the later window sizes, so the shapes
are matched against a table of known configurations (the four released ones and
a small one for tests) and the match supplies the rest.

The network is the package's own `SAM2Base` with its Hiera trunk, FPN neck,
memory modules, prompt encoder and mask decoder, instantiated directly with the
values and flags of the official `sam2.1_hiera_*.yaml` configs (as
`build_sam2(..., apply_postprocessing=True)` would), without hydra. Loading is
strict and safe (`surgery.hub.state_dict`): a checkpoint that does not fit is a
`CheckpointError`, never silently half-loaded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from ..errors import CheckpointError
from ..hub.state_dict import load_state_dict
from .architecture import _mismatch_report, strip_key_prefix

SAM2_PATCH_WEIGHT = "image_encoder.trunk.patch_embed.proj.weight"
_BLOCK_PROJ_KEY = re.compile(r"^image_encoder\.trunk\.blocks\.(\d+)\.attn\.proj\.weight$")
_MEMORY_LAYER_KEY = re.compile(r"^memory_attention\.layers\.(\d+)\.")
_FUSER_LAYER_KEY = re.compile(r"^memory_encoder\.fuser\.layers\.(\d+)\.")
# Present in every SAM 2.1 checkpoint, absent from SAM 2 (2.0) ones (their configs lack the flags).
_SAM21_ONLY_KEYS = ("no_obj_embed_spatial", "obj_ptr_tpos_proj.weight")

IMAGE_SIZE = 1024  # every released config; SAM2ImagePredictor assumes it (its feature sizes are fixed)


@dataclass(frozen=True)
class Sam2Architecture:
    """One SAM 2.1 configuration: the Hiera trunk, the neck / decoder width and the memory modules.

    `visible()` is the part a checkpoint's tensor shapes reveal; the rest
    (`num_heads`, `global_attention_blocks`, `window_spec[1:]`) comes from
    matching it against `SAM2_ARCHITECTURES`.
    """

    name: str
    embed_dim: int  # trunk width at stage 1; doubles at every stage
    num_heads: int  # at stage 1; doubles at every stage
    stages: tuple[int, ...]  # blocks per stage
    global_attention_blocks: tuple[int, ...]
    window_spec: tuple[int, ...] = (8, 4, 14, 7)  # window size per stage
    pos_embed_size: tuple[int, int] = (14, 14)  # Hiera's background positional embedding
    hidden_dim: int = 256  # neck output = prompt encoder and mask decoder width
    memory_dim: int = 64
    memory_attention_layers: int = 4
    memory_attention_ffn_dim: int = 2048
    fuser_layers: int = 2
    num_maskmem: int = 7

    @property
    def channel_list(self) -> tuple[int, ...]:
        """The trunk's output width per stage, deepest first (the neck's `backbone_channel_list`)."""
        return tuple(self.embed_dim * 2**i for i in reversed(range(len(self.stages))))

    def visible(self) -> dict[str, object]:
        """What the tensor shapes of a checkpoint of this configuration show."""
        return {
            "embed_dim": self.embed_dim, "stages": self.stages, "first_window": self.window_spec[0],
            "pos_embed_size": self.pos_embed_size, "hidden_dim": self.hidden_dim, "memory_dim": self.memory_dim,
            "memory_attention_layers": self.memory_attention_layers,
            "memory_attention_ffn_dim": self.memory_attention_ffn_dim, "fuser_layers": self.fuser_layers,
            "num_maskmem": self.num_maskmem,
        }


# The released configurations (sam2/configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml) and one small
# layout for tests: 1024-pixel input like every release (the predictor's feature sizes assume it),
# but a narrow trunk of six blocks, a 32-wide decoder and one small memory layer.
SAM2_ARCHITECTURES: dict[str, Sam2Architecture] = {
    "sam2.1_hiera_tiny": Sam2Architecture(
        name="sam2.1_hiera_tiny", embed_dim=96, num_heads=1, stages=(1, 2, 7, 2),
        global_attention_blocks=(5, 7, 9), pos_embed_size=(7, 7)),
    "sam2.1_hiera_small": Sam2Architecture(
        name="sam2.1_hiera_small", embed_dim=96, num_heads=1, stages=(1, 2, 11, 2),
        global_attention_blocks=(7, 10, 13), pos_embed_size=(7, 7)),
    "sam2.1_hiera_base_plus": Sam2Architecture(
        name="sam2.1_hiera_base_plus", embed_dim=112, num_heads=2, stages=(2, 3, 16, 3),
        global_attention_blocks=(12, 16, 20)),
    "sam2.1_hiera_large": Sam2Architecture(
        name="sam2.1_hiera_large", embed_dim=144, num_heads=2, stages=(2, 6, 36, 4),
        global_attention_blocks=(23, 33, 43), window_spec=(8, 4, 16, 8), pos_embed_size=(7, 7)),
    "test": Sam2Architecture(
        name="test", embed_dim=16, num_heads=1, stages=(1, 1, 2, 2), global_attention_blocks=(3,),
        pos_embed_size=(4, 4), hidden_dim=32, memory_dim=16, memory_attention_layers=1,
        memory_attention_ffn_dim=64, fuser_layers=1),
}
RELEASED_SAM2 = tuple(name for name in SAM2_ARCHITECTURES if name != "test")


def is_sam2_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether the dict has SAM 2's Hiera trunk (so it is not a SAM 1 / other network)."""
    return any(key.endswith(SAM2_PATCH_WEIGHT) for key in state_dict)


def _read_visible(sd: dict[str, torch.Tensor]) -> dict[str, object]:
    def need(key: str) -> torch.Tensor:
        if key not in sd:
            raise CheckpointError(
                f"This SAM 2.1 checkpoint is incomplete: the tensor '{key}' is missing. "
                "Pass a full release file such as sam2.1_hiera_tiny.pt."
            )
        return sd[key]

    embed_dim = int(need(SAM2_PATCH_WEIGHT).shape[0])
    widths = {int(m.group(1)): int(v.shape[0]) for k, v in sd.items() if (m := _BLOCK_PROJ_KEY.match(k))}
    if not widths or sorted(widths) != list(range(len(widths))):
        raise CheckpointError(f"The Hiera trunk's blocks are numbered {sorted(widths)}; expected 0..n-1 without gaps.")
    stages, width = [0], embed_dim
    for index in range(len(widths)):
        if widths[index] == 2 * width and stages[-1] > 0:  # the first block of the next stage
            stages.append(0)
            width *= 2
        if widths[index] != width:
            raise CheckpointError(f"Hiera block {index} is {widths[index]} wide; expected {width} or {2 * width}.")
        stages[-1] += 1
    pos_embed = need("image_encoder.trunk.pos_embed")
    return {
        "embed_dim": embed_dim,
        "stages": tuple(stages),
        "first_window": int(need("image_encoder.trunk.pos_embed_window").shape[-1]),
        "pos_embed_size": (int(pos_embed.shape[-2]), int(pos_embed.shape[-1])),
        "hidden_dim": int(need("image_encoder.neck.convs.0.conv.weight").shape[0]),
        "memory_dim": int(need("memory_encoder.out_proj.weight").shape[0]),
        "memory_attention_layers": len({int(m.group(1)) for k in sd if (m := _MEMORY_LAYER_KEY.match(k))}),
        "memory_attention_ffn_dim": int(need("memory_attention.layers.0.linear1.weight").shape[0]),
        "fuser_layers": len({int(m.group(1)) for k in sd if (m := _FUSER_LAYER_KEY.match(k))}),
        "num_maskmem": int(need("maskmem_tpos_enc").shape[0]),
    }


def read_sam2_architecture(state_dict: dict[str, torch.Tensor]) -> Sam2Architecture:
    """The known SAM 2.1 configuration whose tensor shapes the dict has.

    Raises `CheckpointError` for a dict that is not SAM 2.1, is a SAM 2 (2.0)
    checkpoint, is incomplete, or has shapes of no known configuration.
    """
    sd = strip_key_prefix(state_dict, SAM2_PATCH_WEIGHT)
    if SAM2_PATCH_WEIGHT not in sd:
        sample = ", ".join(sorted(state_dict)[:3])
        raise CheckpointError(
            f"This checkpoint is not a SAM 2.1 model: it has no '{SAM2_PATCH_WEIGHT}' tensor (its first keys "
            f"are: {sample}). Pass a release file such as sam2.1_hiera_tiny.pt."
        )
    if not any(key in sd for key in _SAM21_ONLY_KEYS):
        raise CheckpointError(
            "This is a SAM 2 (2.0) checkpoint; only SAM 2.1 checkpoints (sam2.1_hiera_*.pt) are supported."
        )
    visible = _read_visible(sd)
    for arch in SAM2_ARCHITECTURES.values():
        if arch.visible() == visible:
            return arch
    stages = "-".join(map(str, visible["stages"]))  # type: ignore[arg-type]
    raise CheckpointError(
        f"This SAM 2.1 checkpoint's Hiera trunk (width {visible['embed_dim']}, stages {stages}, "
        f"decoder width {visible['hidden_dim']}) is none of the known configurations "
        f"({', '.join(RELEASED_SAM2)}); pass one of the released checkpoints."
    )


def make_sam2(arch: Sam2Architecture) -> torch.nn.Module:
    """A `sam2.modeling.sam2_base.SAM2Base` of this architecture with default-initialised weights.

    The flags are those of the official sam2.1 configs plus the decoder's
    stability fallback that `build_sam2(apply_postprocessing=True)` adds (it
    only acts on single-mask output, which the image path never asks for).
    """
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
    from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
    from sam2.modeling.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    from sam2.modeling.sam.transformer import RoPEAttention
    from sam2.modeling.sam2_base import SAM2Base

    def sine(width: int) -> PositionEmbeddingSine:
        return PositionEmbeddingSine(num_pos_feats=width, normalize=True, scale=None, temperature=10000)

    def rope(**extra: object) -> RoPEAttention:
        return RoPEAttention(rope_theta=10000.0, feat_sizes=[64, 64], embedding_dim=arch.hidden_dim, num_heads=1,
                             downsample_rate=1, dropout=0.1, **extra)

    trunk = Hiera(embed_dim=arch.embed_dim, num_heads=arch.num_heads, stages=list(arch.stages),
                  global_att_blocks=list(arch.global_attention_blocks), window_spec=list(arch.window_spec),
                  window_pos_embed_bkg_spatial_size=list(arch.pos_embed_size))
    neck = FpnNeck(position_encoding=sine(arch.hidden_dim), d_model=arch.hidden_dim,
                   backbone_channel_list=list(arch.channel_list), fpn_top_down_levels=[2, 3],
                   fpn_interp_model="nearest")
    memory_layer = MemoryAttentionLayer(
        activation="relu", dim_feedforward=arch.memory_attention_ffn_dim, dropout=0.1, pos_enc_at_attn=False,
        self_attention=rope(), d_model=arch.hidden_dim, pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False, cross_attention=rope(rope_k_repeat=True, kv_in_dim=arch.memory_dim))
    memory_encoder = MemoryEncoder(
        out_dim=arch.memory_dim, position_encoding=sine(arch.memory_dim),
        mask_downsampler=MaskDownSampler(kernel_size=3, stride=2, padding=1, embed_dim=arch.hidden_dim),
        fuser=Fuser(layer=CXBlock(dim=arch.hidden_dim, kernel_size=7, padding=3, layer_scale_init_value=1e-6,
                                  use_dwconv=True), num_layers=arch.fuser_layers),
        in_dim=arch.hidden_dim)
    return SAM2Base(
        image_encoder=ImageEncoder(trunk=trunk, neck=neck, scalp=1),
        memory_attention=MemoryAttention(d_model=arch.hidden_dim, pos_enc_at_input=True, layer=memory_layer,
                                         num_layers=arch.memory_attention_layers),
        memory_encoder=memory_encoder,
        num_maskmem=arch.num_maskmem, image_size=IMAGE_SIZE,
        sigmoid_scale_for_mem_enc=20.0, sigmoid_bias_for_mem_enc=-10.0,
        use_mask_input_as_output_without_sam=True, directly_add_no_mem_embed=True, no_obj_embed_spatial=True,
        use_high_res_features_in_sam=True, multimask_output_in_sam=True, iou_prediction_use_sigmoid=True,
        use_obj_ptrs_in_encoder=True, add_tpos_enc_to_obj_ptrs=True, proj_tpos_enc_in_obj_ptrs=True,
        use_signed_tpos_enc_to_obj_ptrs=True, only_obj_ptrs_in_the_past_for_eval=True,
        pred_obj_scores=True, pred_obj_scores_mlp=True, fixed_no_obj_ptr=True,
        multimask_output_for_tracking=True, use_multimask_token_for_obj_ptr=True,
        multimask_min_pt_num=0, multimask_max_pt_num=1, use_mlp_for_obj_ptr_proj=True,
        compile_image_encoder=False,
        sam_mask_decoder_extra_args={"dynamic_multimask_via_stability": True,
                                     "dynamic_multimask_stability_delta": 0.05,
                                     "dynamic_multimask_stability_thresh": 0.98},
    )


def build_sam2_model(state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Build the SAM 2.1 network the state dict describes and load it strictly, ready for inference.

    The model is float32 on the CPU, in eval mode and without gradients.
    Unlike SAM's it is built with real (then replaced) initial weights: Hiera
    reads a tensor's value while it is constructed, which the meta device cannot give.
    """
    arch = read_sam2_architecture(state_dict)
    weights = {k: (v.float() if v.is_floating_point() else v)
               for k, v in strip_key_prefix(state_dict, SAM2_PATCH_WEIGHT).items()}
    with torch.device("cpu"):
        model = make_sam2(arch)
    problem = _mismatch_report(model, weights)
    if problem is not None:
        raise CheckpointError(f"The SAM 2.1 checkpoint does not match its {arch.name} architecture ({problem}).")
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"The SAM 2.1 checkpoint could not be loaded: {str(exc).splitlines()[0]}") from None
    return model.float().eval().requires_grad_(False)


def load_sam2_model(path: str | os.PathLike) -> torch.nn.Module:
    """Read a SAM 2.1 checkpoint file (the release's `{"model": state_dict}` .pt, or a plain state dict) safely
    and build the model."""
    return build_sam2_model(load_state_dict(path))
