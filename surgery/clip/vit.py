"""Architecture surgery: one forward pass of a CLIP ViT giving two token streams.

docs/method.md §1–2. The first `L - d` blocks run unchanged; from block `L - d`
on, the original path runs the block as trained while the surgery path adds
only value-value attention of the original path's normalised tokens (no MLP).
The model's weights are read, never modified: positional embeddings for other
grids are computed per call, so concurrent calls at different resolutions are safe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer

from ..method.options import DEFAULT_SURGERY_DEPTH
from .trunk import native_grid

@dataclass(frozen=True)
class ImageTokens:
    """Projected, L2-normalised tokens (B, N, c); row 0 is CLS, then patches row-major.

    `clip_tokens` are the unmodified CLIP's tokens; `surgery_tokens` carry the
    surgery path's patches and the original CLS (docs/method.md §2).
    """

    clip_tokens: torch.Tensor
    surgery_tokens: torch.Tensor
    grid: tuple[int, int]  # (rows, cols) of patches
    # The last block's input on the original path, kept at the checkpoint's native grid only: there the
    # positional embedding is not resized, so it is also the trunk of the methods that replace the last
    # block (surgery.clip.dense), which then need no second pass.
    trunk: torch.Tensor | None = None


def positional_embedding_for_grid(positional_embedding: torch.Tensor, rows: int, cols: int | None = None
                                  ) -> torch.Tensor:
    """(1 + rows*cols, C): patch rows bilinearly resized to (rows, cols) (align_corners=False, no
    antialias), CLS kept."""
    cols = rows if cols is None else cols
    native = native_grid(positional_embedding)
    if (rows, cols) == (native, native):
        return positional_embedding
    width = positional_embedding.shape[1]
    patches = positional_embedding[1:].reshape(1, native, native, width).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(rows, cols), mode="bilinear", align_corners=False)
    patches = patches.reshape(width, rows * cols).transpose(0, 1)
    return torch.cat([positional_embedding[:1], patches], dim=0)


def _patch_embeddings(visual: VisionTransformer, pixels: torch.Tensor) -> torch.Tensor:
    x = visual.conv1(pixels)
    rows, cols = x.shape[-2:]
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + positional_embedding_for_grid(visual.positional_embedding, rows, cols).to(x.dtype)
    return visual.ln_pre(x)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, tokens, width = x.shape
    return x.view(batch, tokens, heads, width // heads).transpose(1, 2)


def _dual_block(block: torch.nn.Module, x_ori: torch.Tensor, x_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One block of both paths, sharing LN1 and the in-projection of the original tokens."""
    attn = block.attn
    heads = attn.num_heads
    normed = block.ln_1(x_ori)
    q, k, v = F.linear(normed, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (_split_heads(t, heads) for t in (q, k, v))
    # scaled_dot_product_attention's default scale is head_dim ** -0.5, the paper's scale.
    qk_out = F.scaled_dot_product_attention(q, k, v)
    vv_out = F.scaled_dot_product_attention(v, v, v)
    batch, _, tokens, _ = q.shape
    merge = lambda t: t.transpose(1, 2).reshape(batch, tokens, -1)  # noqa: E731
    x_ori = x_ori + block.ls_1(attn.out_proj(merge(qk_out)))
    x_ori = x_ori + block.ls_2(block.mlp(block.ln_2(x_ori)))
    x_new = x_new + attn.out_proj(merge(vv_out))
    return x_ori, x_new


def _project(visual: VisionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    return F.normalize(visual.ln_post(tokens) @ visual.proj, dim=-1)


@torch.inference_mode()
def encode_image_tokens(
    visual: VisionTransformer, pixels: torch.Tensor, surgery_depth: int = DEFAULT_SURGERY_DEPTH
) -> ImageTokens:
    """Both token streams from one pass over `pixels` (B, 3, H, W), H and W multiples of the patch size."""
    blocks = visual.transformer.resblocks
    x = _patch_embeddings(visual, pixels)
    first_dual = len(blocks) - surgery_depth
    for block in blocks[:first_dual]:
        x = block(x)
    x_ori, x_new = x, x
    trunk = None
    for block in blocks[first_dual:]:
        if block is blocks[-1]:
            trunk = x_ori
        x_ori, x_new = _dual_block(block, x_ori, x_new)
    x_new = torch.cat([x_ori[:, :1], x_new[:, 1:]], dim=1)
    patch = visual.conv1.kernel_size[0]
    grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
    native = native_grid(visual.positional_embedding)
    return ImageTokens(
        clip_tokens=_project(visual, x_ori),
        surgery_tokens=_project(visual, x_new),
        grid=grid,
        trunk=trunk if grid == (native, native) else None,
    )
