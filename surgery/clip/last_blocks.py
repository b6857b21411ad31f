"""The last image blocks of the methods that replace CLIP's (docs/method.md §9), and their shared trunk.

Four training-free dense methods that change only CLIP's last image block. Each
runs the same trunk and then its own last block; `patch_tokens` projects the
result. Contracts (all pure: torch tensors in and out, float32 arithmetic, no
caching, the model's weights and modules are read and never modified):

- `dino_positional_embedding(pe, g)`: (1 + g*g, C). The patch rows of `pe` resized
  the DINO way, as the official code of all four methods does: bicubic,
  `scale_factor = (g + 0.1) / s` on both axes (s the native grid), `align_corners=False`,
  giving g x g; the class row kept. `pe` itself when g == s. (CLIP Surgery's
  `positional_embedding_for_grid` resizes bilinearly to (g, g): a different embedding.)
- `trunk(visual, pixels)`: pixels (B, 3, R, R) as from `clip_input`, R a multiple of
  the patch size. Patch embedding, class token, the DINO positional embedding,
  `ln_pre`, blocks 0 .. L-2 unchanged; returns h (B, N, C), N = 1 + g*g, class
  token first (batch-first, as open_clip runs its blocks). At the native grid this
  equals the plain forward's first L-1 blocks, so one trunk may be shared there.
- `maskclip_block`, `clearclip_block`, `sclip_block`, `naclip_block(block, h, ...)`:
  the last block's output tokens (B, N, C) per method (docs/method.md §9):
  with y = ln_1(h), q, k, v the block's in-projection of y split into heads
  (scale head_dim ** -0.5) and attention weights A per head over all tokens:

  | method    | A                                      | output                                  |
  |-----------|----------------------------------------|-----------------------------------------|
  | MaskCLIP  | identity (A v = v)                     | out_proj(v)                              |
  | ClearCLIP | softmax(scale q q^T)                   | out_proj(A v)                            |
  | SCLIP     | softmax(scale q q^T) + softmax(scale k k^T) | h' = h + out_proj(A v); h' + MLP(ln_2(h')) |
  | NACLIP    | softmax(scale k k^T + Omega)           | out_proj(A v)                            |

  MaskCLIP, ClearCLIP and NACLIP keep no residual and no MLP. NACLIP's Omega is a
  Gaussian over the patch grid, exp(-((y1-y2)^2 + (x1-x2)^2) / (2 sigma^2)), sigma in
  patches (5 by default), 0 in the class token's row and column. SCLIP applies the
  block's layer scales ls_1 / ls_2 (identity for OpenAI weights) where the block does.
- `patch_tokens(visual, tokens)`: `ln_post`, `@ proj`, class token dropped,
  L2-normalised: (B, g*g, c), patches row-major. The raw map of a method is these
  tokens' cosine with the label features (the 80 ImageNet templates' ensemble).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "LAST_BLOCKS",
    "clearclip_block",
    "dino_positional_embedding",
    "maskclip_block",
    "naclip_block",
    "patch_tokens",
    "sclip_block",
    "trunk",
]


def dino_positional_embedding(positional_embedding: torch.Tensor, grid: int) -> torch.Tensor:
    """(1 + g*g, C): patch rows resized bicubically with scale (g + 0.1) / s, class row kept."""
    native = round((positional_embedding.shape[0] - 1) ** 0.5)
    if native == grid:
        return positional_embedding
    width = positional_embedding.shape[1]
    factor = (grid + 0.1) / native
    patches = positional_embedding[1:].float().reshape(1, native, native, width).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, scale_factor=(factor, factor), mode="bicubic", align_corners=False)
    if patches.shape[-2:] != (grid, grid):  # cannot happen for grid >= 1; guards the contract
        raise ValueError(f"DINO resize gave {tuple(patches.shape[-2:])}, expected ({grid}, {grid})")
    patches = patches.permute(0, 2, 3, 1).reshape(grid * grid, width)
    return torch.cat([positional_embedding[:1].float(), patches], dim=0)


@torch.inference_mode()
def trunk(visual, pixels: torch.Tensor) -> torch.Tensor:
    """h (B, N, C): the input of the last block, with the DINO positional embedding."""
    x = visual.conv1(pixels.float())
    grid = x.shape[-1]
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.float().view(1, 1, -1).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + dino_positional_embedding(visual.positional_embedding, grid).float()
    x = visual.ln_pre(x)
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)  # open_clip's blocks are batch-first (B, N, C)
    return x


def _heads(block, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """q, k, v (B, heads, N, d) from ln_1(h), and the scale d ** -0.5."""
    attn = block.attn
    heads = attn.num_heads
    y = block.ln_1(h)
    qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)
    batch, tokens, three_width = qkv.shape
    head_dim = three_width // 3 // heads
    q, k, v = qkv.view(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v, head_dim ** -0.5


def _merge(block, out: torch.Tensor) -> torch.Tensor:
    """out_proj of per-head outputs (B, heads, N, d) -> (B, N, C)."""
    batch, heads, tokens, head_dim = out.shape
    return block.attn.out_proj(out.transpose(1, 2).reshape(batch, tokens, heads * head_dim))


def _self_softmax(x: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.softmax((x @ x.transpose(-2, -1)) * scale, dim=-1)


@torch.inference_mode()
def maskclip_block(block, h: torch.Tensor) -> torch.Tensor:
    """out_proj(v): each token attends only to itself; no residual, no MLP."""
    _, _, v, _ = _heads(block, h)
    return _merge(block, v)


@torch.inference_mode()
def clearclip_block(block, h: torch.Tensor) -> torch.Tensor:
    """out_proj(softmax(scale q q^T) v); no residual, no MLP."""
    q, _, v, scale = _heads(block, h)
    return _merge(block, _self_softmax(q, scale) @ v)


@torch.inference_mode()
def sclip_block(block, h: torch.Tensor) -> torch.Tensor:
    """Correlative self-attention (q-q plus k-k softmaxes) with the block's residuals and MLP."""
    q, k, v, scale = _heads(block, h)
    weights = _self_softmax(q, scale) + _self_softmax(k, scale)
    x = h + block.ls_1(_merge(block, weights @ v))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _neighbourhood_bias(grid: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Omega (1 + g*g, 1 + g*g): Gaussian of the squared grid distance between patches, 0 for CLS."""
    steps = torch.arange(grid, dtype=torch.float64, device=device)
    ys, xs = torch.meshgrid(steps, steps, indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    squared = (ys[:, None] - ys[None, :]) ** 2 + (xs[:, None] - xs[None, :]) ** 2
    patches = torch.exp(-squared / (2.0 * sigma ** 2))
    omega = torch.zeros(grid * grid + 1, grid * grid + 1, dtype=torch.float64, device=device)
    omega[1:, 1:] = patches
    return omega.to(dtype=dtype)


@torch.inference_mode()
def naclip_block(block, h: torch.Tensor, grid: int, sigma: float = 5.0) -> torch.Tensor:
    """out_proj(softmax(scale k k^T + Omega) v), Omega the Gaussian neighbourhood bias; no residual, no MLP."""
    if h.shape[1] != grid * grid + 1:
        raise ValueError(f"{h.shape[1]} tokens do not fit a {grid}x{grid} grid plus the class token")
    _, k, v, scale = _heads(block, h)
    logits = (k @ k.transpose(-2, -1)) * scale + _neighbourhood_bias(grid, sigma, k.dtype, k.device)
    return _merge(block, torch.softmax(logits, dim=-1) @ v)


@torch.inference_mode()
def patch_tokens(visual, tokens: torch.Tensor) -> torch.Tensor:
    """(B, g*g, c): ln_post, @ proj, class token dropped, L2-normalised."""
    projected = visual.ln_post(tokens[:, 1:]) @ visual.proj
    return F.normalize(projected, dim=-1)


# (last block, trunk output h (B, N, C), grid) -> the block's output tokens (B, N, C), by method key: one
# entry for each row of surgery.method.table.METHOD_TABLE whose `block` is set.
LastBlock = Callable[[torch.nn.Module, torch.Tensor, int], torch.Tensor]
LAST_BLOCKS: dict[str, LastBlock] = {
    "maskclip": lambda block, h, grid: maskclip_block(block, h),
    "sclip": lambda block, h, grid: sclip_block(block, h),
    "clearclip": lambda block, h, grid: clearclip_block(block, h),
    "naclip": naclip_block,
}
