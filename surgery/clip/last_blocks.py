"""The last image blocks of MaskCLIP, ClearCLIP, SCLIP and NACLIP (docs/method.md §9).

Four training-free dense methods that change only CLIP's last image block. Each runs the shared
trunk (`surgery.clip.trunk.record_trunk`) and then its own last block; `patch_tokens` projects the
result. Contracts (all pure: torch tensors in and out, float32 arithmetic, no caching, the model's
weights and modules are read and never modified):

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
  Gaussian over the (rows, cols) patch grid, exp(-((y1-y2)^2 + (x1-x2)^2) / (2 sigma^2)), sigma in
  patches (5 by default), 0 in the class token's row and column. SCLIP applies the
  block's layer scales ls_1 / ls_2 (identity for OpenAI weights) where the block does.
- `patch_tokens(visual, tokens)`: `ln_post`, `@ proj`, class token dropped,
  L2-normalised: (B, rows*cols, c), patches row-major. The raw map of a method is these
  tokens' cosine with the label features (the 80 ImageNet templates' ensemble).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["LAST_BLOCKS", "clearclip_block", "maskclip_block", "naclip_block", "patch_tokens", "sclip_block"]

NACLIP_SIGMA = 5.0  # NACLIP's neighbourhood Gaussian, in patches (Hajimiri et al., WACV 2025)


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


def _neighbourhood_bias(rows: int, cols: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Omega (1 + rows*cols, 1 + rows*cols): Gaussian of the squared grid distance between patches, 0 for CLS."""
    ys, xs = torch.meshgrid(torch.arange(rows, dtype=torch.float64, device=device),
                            torch.arange(cols, dtype=torch.float64, device=device), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    squared = (ys[:, None] - ys[None, :]) ** 2 + (xs[:, None] - xs[None, :]) ** 2
    patches = torch.exp(-squared / (2.0 * sigma ** 2))
    omega = torch.zeros(rows * cols + 1, rows * cols + 1, dtype=torch.float64, device=device)
    omega[1:, 1:] = patches
    return omega.to(dtype=dtype)


@torch.inference_mode()
def naclip_block(block, h: torch.Tensor, grid: tuple[int, int], sigma: float = NACLIP_SIGMA) -> torch.Tensor:
    """out_proj(softmax(scale k k^T + Omega) v), Omega the Gaussian neighbourhood bias on the (rows, cols)
    grid; no residual, no MLP."""
    rows, cols = grid
    if h.shape[1] != rows * cols + 1:
        raise ValueError(f"{h.shape[1]} tokens do not fit a {rows}x{cols} grid plus the class token")
    _, k, v, scale = _heads(block, h)
    logits = (k @ k.transpose(-2, -1)) * scale + _neighbourhood_bias(rows, cols, sigma, k.dtype, k.device)
    return _merge(block, torch.softmax(logits, dim=-1) @ v)


@torch.inference_mode()
def patch_tokens(visual, tokens: torch.Tensor) -> torch.Tensor:
    """(B, g*g, c): ln_post, @ proj, class token dropped, L2-normalised."""
    projected = visual.ln_post(tokens[:, 1:]) @ visual.proj
    return F.normalize(projected, dim=-1)


# (last block, trunk output h (B, N, C), grid (rows, cols)) -> the block's output tokens (B, N, C), by
# method key (`surgery.clip.dense` turns them into a method's features).
LastBlock = Callable[[torch.nn.Module, torch.Tensor, tuple[int, int]], torch.Tensor]
LAST_BLOCKS: dict[str, LastBlock] = {
    "maskclip": lambda block, h, grid: maskclip_block(block, h),
    "sclip": lambda block, h, grid: sclip_block(block, h),
    "clearclip": lambda block, h, grid: clearclip_block(block, h),
    "naclip": naclip_block,
}
