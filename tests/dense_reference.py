"""An independent port of MaskCLIP, ClearCLIP, SCLIP and NACLIP's raw patch tokens, for the tests.

Written apart from `surgery.clip.dense_methods` on purpose: the weights of the
open_clip modules are read as plain tensors and everything else is done by hand,
sequence-first (tokens, channels) for a single image: the patch embedding by
unfolding, layer norms, the bicubic DINO resize of the positional embedding
(PyTorch's cubic convolution, A = -0.75, half-pixel mapping by 1 / scale factor,
clamped borders), every block with an explicit loop over heads, NACLIP's
neighbourhood bias by a loop over grid offsets. Used as an oracle at resolutions
the official fixture does not cover.
"""

from __future__ import annotations

import math

import torch

CUBIC_A = -0.75


def layer_norm(x: torch.Tensor, module) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + module.eps) * module.weight + module.bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = x @ weight.t()
    return out if bias is None else out + bias


def _cubic_weights(t: float) -> list[float]:
    """Weights of the samples at offsets -1, 0, 1, 2 for a fractional position t."""
    def near(x):  # |x| <= 1
        return ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((CUBIC_A * x - 5 * CUBIC_A) * x + 8 * CUBIC_A) * x - 4 * CUBIC_A

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def bicubic_matrix(source: int, target: int, scale_factor: float) -> torch.Tensor:
    """(target, source) 1-D resampling matrix of F.interpolate(mode='bicubic', scale_factor=...)."""
    matrix = torch.zeros(target, source, dtype=torch.float64)
    step = 1.0 / scale_factor
    for i in range(target):
        position = step * (i + 0.5) - 0.5
        base = math.floor(position)
        for offset, w in zip((-1, 0, 1, 2), _cubic_weights(position - base)):
            matrix[i, min(max(base + offset, 0), source - 1)] += w
    return matrix


def dino_resize(positional_embedding: torch.Tensor, grid: int) -> torch.Tensor:
    native = math.isqrt(positional_embedding.shape[0] - 1)
    if grid == native:
        return positional_embedding
    target = math.floor(native * ((grid + 0.1) / native))
    assert target == grid
    m = bicubic_matrix(native, grid, (grid + 0.1) / native)
    width = positional_embedding.shape[1]
    patches = positional_embedding[1:].double().reshape(native, native, width)
    resized = torch.einsum("ya,abc,xb->yxc", m, patches, m).reshape(grid * grid, width)
    return torch.cat([positional_embedding[:1], resized.float()], dim=0)


def embed(visual, pixels: torch.Tensor) -> torch.Tensor:
    """(N, C) tokens after patch embedding, class token, DINO positions and ln_pre, for pixels[0]."""
    patch = visual.conv1.weight.shape[-1]
    image = pixels[0]
    channels, size, _ = image.shape
    grid = size // patch
    tiles = image.reshape(channels, grid, patch, grid, patch).permute(1, 3, 0, 2, 4).reshape(grid * grid, -1)
    tokens = tiles @ visual.conv1.weight.reshape(visual.conv1.weight.shape[0], -1).t()
    tokens = torch.cat([visual.class_embedding[None], tokens], dim=0)
    tokens = tokens + dino_resize(visual.positional_embedding, grid)
    return layer_norm(tokens, visual.ln_pre)


def qkv_heads(block, x: torch.Tensor):
    """Lists of per-head q, k, v (N, d) from ln_1(x), and the scale."""
    y = layer_norm(x, block.ln_1)
    attn = block.attn
    width = x.shape[-1]
    q = linear(y, attn.in_proj_weight[:width], attn.in_proj_bias[:width])
    k = linear(y, attn.in_proj_weight[width:2 * width], attn.in_proj_bias[width:2 * width])
    v = linear(y, attn.in_proj_weight[2 * width:], attn.in_proj_bias[2 * width:])
    d = width // attn.num_heads
    split = lambda t: [t[:, h * d:(h + 1) * d] for h in range(attn.num_heads)]
    return split(q), split(k), split(v), 1.0 / math.sqrt(d)


def out_projection(block, per_head: list[torch.Tensor]) -> torch.Tensor:
    return linear(torch.cat(per_head, dim=-1), block.attn.out_proj.weight, block.attn.out_proj.bias)


def softmax_rows(logits: torch.Tensor) -> torch.Tensor:
    shifted = logits - logits.max(dim=-1, keepdim=True).values
    e = torch.exp(shifted)
    return e / e.sum(dim=-1, keepdim=True)


def mlp(block, x: torch.Tensor) -> torch.Tensor:
    hidden = linear(x, block.mlp.c_fc.weight, block.mlp.c_fc.bias)
    return linear(block.mlp.gelu(hidden), block.mlp.c_proj.weight, block.mlp.c_proj.bias)


def plain_block(block, x: torch.Tensor) -> torch.Tensor:
    q, k, v, scale = qkv_heads(block, x)
    heads = [softmax_rows(qh @ kh.t() * scale) @ vh for qh, kh, vh in zip(q, k, v)]
    x = x + out_projection(block, heads)
    return x + mlp(block, layer_norm(x, block.ln_2))


def neighbourhood(grid: int, sigma: float) -> torch.Tensor:
    """Omega (1 + g*g, 1 + g*g), row by row: patch a's Gaussian over all patches b; CLS row/col 0."""
    n = grid * grid
    omega = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    rows = torch.arange(n, dtype=torch.float64) // grid
    cols = torch.arange(n, dtype=torch.float64) % grid
    for a in range(n):
        ya, xa = divmod(a, grid)
        omega[1 + a, 1:] = torch.exp(-((rows - ya) ** 2 + (cols - xa) ** 2) / (2 * sigma * sigma))
    return omega.float()


def last_block(method: str, block, x: torch.Tensor, grid: int, sigma: float = 5.0) -> torch.Tensor:
    q, k, v, scale = qkv_heads(block, x)
    if method == "maskclip":
        return out_projection(block, v)
    if method == "clearclip":
        return out_projection(block, [softmax_rows(qh @ qh.t() * scale) @ vh for qh, vh in zip(q, v)])
    if method == "sclip":
        heads = [(softmax_rows(qh @ qh.t() * scale) + softmax_rows(kh @ kh.t() * scale)) @ vh
                 for qh, kh, vh in zip(q, k, v)]
        x = x + out_projection(block, heads)
        return x + mlp(block, layer_norm(x, block.ln_2))
    if method == "naclip":
        omega = neighbourhood(grid, sigma)
        return out_projection(block, [softmax_rows(kh @ kh.t() * scale + omega) @ vh for kh, vh in zip(k, v)])
    raise ValueError(method)


@torch.no_grad()
def reference_trunk(visual, pixels: torch.Tensor) -> torch.Tensor:
    """(N, C): the input of the last block, for pixels[0]."""
    x = embed(visual, pixels)
    for block in list(visual.transformer.resblocks)[:-1]:
        x = plain_block(block, x)
    return x


@torch.no_grad()
def reference_patch_tokens(visual, pixels: torch.Tensor, method: str, sigma: float = 5.0,
                           trunk_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """(g*g, c) normalised patch tokens of `method` for pixels[0] (`trunk_tokens`: a reference_trunk result)."""
    grid = pixels.shape[-1] // visual.conv1.weight.shape[-1]
    x = reference_trunk(visual, pixels) if trunk_tokens is None else trunk_tokens
    out = last_block(method, visual.transformer.resblocks[-1], x, grid, sigma)
    projected = layer_norm(out, visual.ln_post)[1:] @ visual.proj
    return projected / projected.norm(dim=-1, keepdim=True)
