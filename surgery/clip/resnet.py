"""CLIP Surgery for ResNet CLIPs: both token streams from one backbone pass.

A ResNet CLIP has a single attention layer, the attention pool over
`[mean token ; g*g spatial tokens]`, so the architecture surgery happens there
(the reference's `AttentionPool2d`): the stem and layer1..4 run unchanged,
then the pool is evaluated twice on the same tokens.

- Surgery path: query, key and value are all the value projection (`v_proj`
  weight and bias used three times), i.e. per head `softmax(scale * V V^T) V`
  with `scale = (C/h)^-0.5`, then `c_proj` on *every* token. With q = k = v
  the reference's "original" and "new" attention are the same, so the CLS row
  it copies from the original path is this same value-value output.
- CLIP path: the plain attention pool (the trained q/k/v projections), all
  tokens through `c_proj`; its row 0 is exactly open_clip's image embedding.

There is no `ln_post` in a ResNet: the pool's `c_proj` is the projection.
The model is read, never modified: the positional embedding for another grid
is interpolated per call (the reference overwrites the parameter in place).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import AttentionPool2d, ModifiedResNet

from .vit import ImageTokens, positional_embedding_for_grid

OUTPUT_STRIDE = 32  # stem (/4) and layer2..4 (/2 each): one token per 32x32 pixels


def _backbone(visual: ModifiedResNet, pixels: torch.Tensor) -> torch.Tensor:
    """(B, C, g, g) features: stem and the four residual stages, exactly as trained."""
    x = visual.stem(pixels.to(visual.conv1.weight.dtype))
    for stage in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        x = stage(x)
    return x


def _pool_tokens(pool: AttentionPool2d, features: torch.Tensor) -> torch.Tensor:
    """(B, 1 + g*g, C): the mean token first, then the spatial tokens row-major, plus positions."""
    grid = features.shape[-1]
    x = features.flatten(2).transpose(1, 2)
    x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
    return x + positional_embedding_for_grid(pool.positional_embedding, grid).to(x.dtype)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, tokens, width = x.shape
    return x.view(batch, tokens, heads, width // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


@torch.inference_mode()
def encode_resnet_tokens(visual: ModifiedResNet, pixels: torch.Tensor) -> ImageTokens:
    """Both token streams, projected and L2-normalised, from one pass over `pixels` (B, 3, R, R).

    `visual` must be in eval mode (as `build_clip` returns it): batch norm in
    training mode would use batch statistics and update the running ones.
    """
    if pixels.shape[-2] != pixels.shape[-1]:
        raise ValueError("The ResNet encoder expects square inputs (R x R).")
    pool = visual.attnpool
    heads = pool.num_heads
    features = _backbone(visual, pixels)
    tokens = _pool_tokens(pool, features)
    q = _split_heads(F.linear(tokens, pool.q_proj.weight, pool.q_proj.bias), heads)
    k = _split_heads(F.linear(tokens, pool.k_proj.weight, pool.k_proj.bias), heads)
    v = _split_heads(F.linear(tokens, pool.v_proj.weight, pool.v_proj.bias), heads)
    # scaled_dot_product_attention's default scale is head_dim ** -0.5, the reference's scale.
    clip_out = pool.c_proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))
    surgery_out = pool.c_proj(_merge_heads(F.scaled_dot_product_attention(v, v, v)))
    return ImageTokens(
        clip_tokens=F.normalize(clip_out, dim=-1),
        surgery_tokens=F.normalize(surgery_out, dim=-1),
        grid=tuple(features.shape[-2:]),
    )
