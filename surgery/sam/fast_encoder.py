"""A faster, numerically equivalent attention for SAM's image encoder.

The stock `segment_anything` attention multiplies q·kᵀ for all heads at once
into a (B·heads, N, N) matrix, then builds a second N×N tensor for the
decomposed relative-position bias (`add_decomposed_rel_pos`), then a third for
the softmax. For vit_b's global blocks that is three 800 MB passes through
memory per block, and on a CPU most of the encoder's attention time is spent
moving those matrices, not multiplying.

`FastSamAttention` computes the same thing in slabs of query rows small enough
to stay in cache: for each slab it writes the relative-position bias
rel_h[q, kh] + rel_w[q, kw] once, accumulates scale·q·kᵀ into it with one
`baddbmm_`, softmaxes and multiplies by v. No N×N tensor for the whole layer
ever exists.

Why slabs on CPUs and SDPA on GPUs, with the measurements: docs/performance.md.

Installing it also turns the encoder into a `FastImageEncoderViT`: the same
network and parameters, whose forward gives the two largest per-block tensors
(the fused qkv projection, 38-45 MB, and the MLP's hidden layer, 50 MB, for
vit_b) one scratch buffer each for the whole call instead of a fresh
allocation per block (fresh allocations of that size come back as new pages
that must be zeroed). The arithmetic is the same calls in the same order, so
the embedding is bit-identical with and without it.

On a GPU many small slabs cost more in kernel launches than they save, so there
the whole (B, heads, N, N) bias is built once and handed to
`scaled_dot_product_attention` as its additive mask.
"""

from __future__ import annotations

import math

import torch
from segment_anything.modeling.image_encoder import (
    Attention,
    Block,
    ImageEncoderViT,
    get_rel_pos,
    window_partition,
    window_unpartition,
)
from torch import nn

# Scores per slab (float elements), ~8 MB in fp32. Measured on vit_b: 2M and 4M
# the same, 8M 40 % slower (out of cache), 512 rows × 4096 keys is 2M.
SLAB_SCORES = 1 << 21
METHODS = ("auto", "slabs", "sdpa")


def decomposed_rel_pos_terms(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query relative-position logits along each axis, as `add_decomposed_rel_pos` computes them.

    q is (..., H·W, C), unscaled. Returns rel_h (..., H·W, H) with
    rel_h[..., i, kh] = q_i·Rh[qh(i), kh], and rel_w (..., H·W, W) likewise; the
    bias of key (kh, kw) for query i is rel_h[..., i, kh] + rel_w[..., i, kw].
    """
    height, width = size
    rh = get_rel_pos(height, height, rel_pos_h).to(q.dtype)
    rw = get_rel_pos(width, width, rel_pos_w).to(q.dtype)
    grid_q = q.unflatten(-2, (height, width))
    rel_h = torch.einsum("...hwc,hkc->...hwk", grid_q, rh).flatten(-3, -2)
    rel_w = torch.einsum("...hwc,wkc->...hwk", grid_q, rw).flatten(-3, -2)
    return rel_h.to(q.dtype), rel_w.to(q.dtype)


def attention_with_decomposed_bias(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
    slab_scores: int = SLAB_SCORES,
) -> torch.Tensor:
    """softmax(scale·q·kᵀ + rel_h[..., kh] + rel_w[..., kw]) · v, one cache-sized slab of scores at a time.

    q, k, v: (B, heads, N, C), any strides (the encoder passes views into its
    fused qkv output, so nothing is copied); rel_h: (B, heads, N, Kh), rel_w:
    (B, heads, N, Kw) with Kh·Kw = N. A slab is a group of heads when their
    N×N scores fit `slab_scores` (windowed blocks), else a run of query rows
    of one head (global blocks). Writes into and returns `out` (B, heads, N, C),
    which may be a strided view, e.g. of a (B, N, heads, C) buffer.
    """
    batch, heads, tokens, _ = q.shape
    key_h, key_w = rel_h.shape[-1], rel_w.shape[-1]
    if out is None:
        out = torch.empty(q.shape[:-1] + v.shape[-1:], dtype=v.dtype, device=v.device)
    rows = max(1, min(tokens, slab_scores // tokens))
    group = max(1, min(heads, slab_scores // (tokens * tokens))) if rows == tokens else 1
    for b in range(batch):
        k_t = k[b].transpose(-2, -1)
        for h0 in range(0, heads, group):
            h1 = min(heads, h0 + group)
            for r0 in range(0, tokens, rows):
                r1 = min(tokens, r0 + rows)
                scores = rel_h[b, h0:h1, r0:r1, :, None] + rel_w[b, h0:h1, r0:r1, None, :]
                scores = scores.view(h1 - h0, r1 - r0, key_h * key_w)
                scores.baddbmm_(q[b, h0:h1, r0:r1], k_t[h0:h1], alpha=scale)
                out[b, h0:h1, r0:r1] = torch.bmm(torch.softmax(scores, dim=-1), v[b, h0:h1])
    return out


def sdpa_with_decomposed_bias(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """The same attention through one fused `scaled_dot_product_attention` call with the bias as mask.

    Builds the (B, heads, N, N) bias once; meant for GPUs, where one fused
    kernel beats a loop of slabs. Shapes as in `attention_with_decomposed_bias`.
    """
    bias = (rel_h[..., :, None] + rel_w[..., None, :]).flatten(-2)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


class Scratch:
    """Named reusable buffers for one forward call (never shared between calls, so thread-safe).

    `take` returns a view of the named buffer with the requested shape, growing
    it when it is too small; what a view held before is overwritten.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        count = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < count or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = torch.empty(count, dtype=like.dtype, device=like.device)
            self._buffers[name] = buffer
        return buffer[:count].view(shape)


def linear_into(layer: nn.Linear, x: torch.Tensor, scratch: Scratch | None, name: str) -> torch.Tensor:
    """`layer(x)` written into the scratch buffer `name` (same addmm as nn.Linear on contiguous input).

    Falls back to the plain call without scratch, without bias, or under autocast
    (out= variants are not autocast-eligible).
    """
    if scratch is None or layer.bias is None or torch.is_autocast_enabled(x.device.type):
        return layer(x)
    flat = x.reshape(-1, x.shape[-1])
    out = scratch.take(name, (flat.shape[0], layer.out_features), flat)
    torch.addmm(layer.bias, flat, layer.weight.t(), out=out)
    return out.view(*x.shape[:-1], layer.out_features)


class FastSamAttention(nn.Module):
    """Drop-in replacement for `segment_anything`'s encoder `Attention`, sharing its parameters.

    Parameter names (qkv, proj, rel_pos_h, rel_pos_w) are the stock ones, so a
    model with it installed has the same state dict. `method` "auto" uses
    cache-sized slabs on CPUs and one fused SDPA call elsewhere (GPUs).
    """

    def __init__(self, stock: Attention, slab_scores: int = SLAB_SCORES, method: str = "auto") -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {method!r}")
        self.slab_scores = slab_scores
        self.method = method
        self.num_heads = stock.num_heads
        self.scale = stock.scale
        self.use_rel_pos = stock.use_rel_pos
        self.qkv = stock.qkv
        self.proj = stock.proj
        if self.use_rel_pos:
            self.rel_pos_h = stock.rel_pos_h
            self.rel_pos_w = stock.rel_pos_w

    def forward(self, x: torch.Tensor, scratch: Scratch | None = None) -> torch.Tensor:
        batch, height, width, channels = x.shape
        tokens = height * width
        # (3, B, heads, N, head_dim) views into the fused projection: no copies.
        qkv = linear_into(self.qkv, x, scratch, "qkv").view(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        # Heads are written straight into (B, N, heads, head_dim) = (B, H, W, C) order.
        merged = torch.empty(batch, tokens, self.num_heads, v.shape[-1], dtype=v.dtype, device=v.device)
        slabs = self.method == "slabs" or (self.method == "auto" and x.device.type == "cpu")
        if self.use_rel_pos:
            rel_h, rel_w = decomposed_rel_pos_terms(q, self.rel_pos_h, self.rel_pos_w, (height, width))
            if slabs:
                attention_with_decomposed_bias(
                    q, k, v, rel_h, rel_w, self.scale, out=merged.transpose(1, 2), slab_scores=self.slab_scores)
            else:
                merged.transpose(1, 2).copy_(sdpa_with_decomposed_bias(q, k, v, rel_h, rel_w, self.scale))
        else:
            merged.transpose(1, 2).copy_(
                torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=self.scale))
        return self.proj(merged.view(batch, height, width, -1))


def fast_block_forward(block: Block, x: torch.Tensor, scratch: Scratch) -> torch.Tensor:
    """`Block.forward` (segment_anything) with the qkv and MLP-hidden tensors in `scratch`.

    Same operations in the same order; the residual sums are added into tensors
    this function created (a + b == b + a exactly), never into `x`.
    """
    shortcut = x
    h = block.norm1(x)
    if block.window_size > 0:
        height, width = h.shape[1], h.shape[2]
        h, pad_hw = window_partition(h, block.window_size)
    h = block.attn(h, scratch) if isinstance(block.attn, FastSamAttention) else block.attn(h)
    if block.window_size > 0:
        h = window_unpartition(h, block.window_size, pad_hw, (height, width))
    x = _add_into(h, shortcut)  # h is new: the projection's output, or its un-windowed copy
    mlp = block.mlp
    hidden = linear_into(mlp.lin1, block.norm2(x), scratch, "mlp_hidden")
    if isinstance(mlp.act, nn.GELU) and not torch.is_autocast_enabled(hidden.device.type):
        torch._C._nn.gelu_(hidden, approximate=mlp.act.approximate)  # in place: the same values as act()
    else:  # autocast may run act() in another precision than an in-place call would
        hidden = mlp.act(hidden)
    return _add_into(x, mlp.lin2(hidden))


def _add_into(new: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """new + other, into `new` when that keeps the sum's dtype (under autocast a bf16 `new` would not)."""
    if torch.result_type(new, other) == new.dtype:
        return new.add_(other)
    return new + other


class FastImageEncoderViT(ImageEncoderViT):
    """segment_anything's `ImageEncoderViT` (same modules and parameters) whose forward gives each
    call one `Scratch` shared by its blocks. `install_fast_attention` turns a stock encoder into one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        scratch = Scratch()
        for block in self.blocks:
            x = fast_block_forward(block, x, scratch)
        # Stock's residual sums keep the patch embedding's channel-major memory layout to the end,
        # ours are row-major; the neck's convolutions round differently per layout, so hand them
        # stock's layout (a 12 MB copy) and the embedding is bit-identical to stock blocks'.
        return self.neck(x.permute(0, 3, 1, 2).contiguous())


def install_fast_attention(
    image_encoder: ImageEncoderViT, slab_scores: int = SLAB_SCORES, method: str = "auto"
) -> int:
    """Swap every encoder block's stock attention for `FastSamAttention` in place; returns how many.

    The encoder becomes a `FastImageEncoderViT` (a class change only: no new
    state). The parameters are shared, not copied, so the state dict is unchanged.
    """
    swapped = 0
    for block in image_encoder.blocks:
        if isinstance(block.attn, Attention):
            block.attn = FastSamAttention(block.attn, slab_scores, method)
            swapped += 1
    if type(image_encoder) is ImageEncoderViT:
        image_encoder.__class__ = FastImageEncoderViT
    return swapped


def uninstall_fast_attention(image_encoder: ImageEncoderViT) -> int:
    """Put stock attention back (same parameters), e.g. to benchmark or cross-check; returns how many."""
    swapped = 0
    for block in image_encoder.blocks:
        if isinstance(block.attn, FastSamAttention):
            block.attn = _stock_attention(block.attn)
            swapped += 1
    if type(image_encoder) is FastImageEncoderViT:
        image_encoder.__class__ = ImageEncoderViT
    return swapped


def _stock_attention(attn: nn.Module) -> Attention:
    """A stock `Attention` sharing `attn`'s parameters (itself when it is one); the model is not changed."""
    if isinstance(attn, Attention):
        return attn
    stock = Attention.__new__(Attention)
    nn.Module.__init__(stock)
    stock.num_heads, stock.scale, stock.use_rel_pos = attn.num_heads, attn.scale, attn.use_rel_pos
    stock.qkv, stock.proj = attn.qkv, attn.proj
    if attn.use_rel_pos:
        stock.rel_pos_h, stock.rel_pos_w = attn.rel_pos_h, attn.rel_pos_w
    return stock


@torch.inference_mode()
def stock_encoder_forward(image_encoder: ImageEncoderViT, x: torch.Tensor) -> torch.Tensor:
    """segment_anything's own `ImageEncoderViT.forward`, with its stock attention, whether or not the
    fast attention is installed on `image_encoder` (nothing of the model is changed). The fast one is
    the same arithmetic in another order: equal to ~1e-6, which is not bit-equal. A computation that
    cuts at a hard threshold on the embedding (ProxyCLIP) needs the stock order to reproduce the
    official code."""
    x = image_encoder.patch_embed(x)
    if image_encoder.pos_embed is not None:
        x = x + image_encoder.pos_embed
    for block in image_encoder.blocks:
        shortcut = x
        h = block.norm1(x)
        if block.window_size > 0:
            height, width = h.shape[1], h.shape[2]
            h, pad_hw = window_partition(h, block.window_size)
        h = _stock_attention(block.attn)(h)
        if block.window_size > 0:
            h = window_unpartition(h, block.window_size, pad_hw, (height, width))
        x = shortcut + h
        x = x + block.mlp(block.norm2(x))
    return image_encoder.neck(x.permute(0, 3, 1, 2))
