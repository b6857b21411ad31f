"""The trunk the methods that replace CLIP's last block share: every block but the last, as trained.

Contracts (pure: tensors in and out, float32, the model's weights read and never modified):

- `dino_positional_embedding(pe, rows, cols)`: (1 + rows*cols, C). The patch rows of `pe` resized
  the DINO way, as the official code of MaskCLIP, SCLIP, ClearCLIP, NACLIP, SC-CLIP, ResCLIP and
  ProxyCLIP does: bicubic with `scale_factor = ((rows + 0.1) / s, (cols + 0.1) / s)` (s the native
  grid), `align_corners=False`; the class row kept. `pe` itself at the native grid. (CLIP Surgery's
  `surgery.clip.vit.positional_embedding_for_grid` resizes bilinearly: a different embedding.)
- `record_trunk(visual, pixels, attention_blocks, hidden_blocks)`: patch embedding, class token, the
  DINO positional embedding, `ln_pre`, blocks 0 .. L-2 unchanged, for pixels (B, 3, H, W) with H and W
  multiples of the patch size. It keeps the last block's input `h` (B, 1 + rows*cols, C) and, where
  asked, the outputs of other blocks and the attention probabilities softmax(q k^T / sqrt(d)) of
  blocks (computed beside the block from its own ln_1 and in-projection; the block's output is left
  as the block computes it).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Collection, Mapping

import torch
import torch.nn.functional as F


def native_grid(positional_embedding: torch.Tensor) -> int:
    """The checkpoint's own patch grid side s (its table has 1 + s*s rows)."""
    return round((positional_embedding.shape[0] - 1) ** 0.5)


def dino_positional_embedding(positional_embedding: torch.Tensor, rows: int, cols: int | None = None) -> torch.Tensor:
    """(1 + rows*cols, C): patch rows resized bicubically with scales (rows + 0.1) / s, (cols + 0.1) / s."""
    cols = rows if cols is None else cols
    native = native_grid(positional_embedding)
    if (rows, cols) == (native, native):
        return positional_embedding
    width = positional_embedding.shape[1]
    patches = positional_embedding[1:].float().reshape(1, native, native, width).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, scale_factor=((rows + 0.1) / native, (cols + 0.1) / native), mode="bicubic",
                            align_corners=False)
    if patches.shape[-2:] != (rows, cols):  # cannot happen for sides >= 1; guards the contract
        raise ValueError(f"DINO resize gave {tuple(patches.shape[-2:])}, expected ({rows}, {cols})")
    patches = patches.permute(0, 2, 3, 1).reshape(rows * cols, width)
    return torch.cat([positional_embedding[:1].float(), patches], dim=0)


@dataclass(frozen=True)
class TrunkRecord:
    """What the methods read from CLIP's trunk.

    `last`: the last block's input h_{L-1} (B, 1 + rows*cols, C), class token first. `hidden`: block
    index b (0-based) -> h_{b+1}, the raw residual stream after block b, for the blocks asked for
    (the last trunk block L-2 is always there: it is `last`). `attention`: block index -> (B, heads,
    T, T) attention probabilities, for the blocks asked for. `grid`: (rows, cols) patches. `blocks`:
    L, the vision tower's number of blocks.
    """

    last: torch.Tensor
    hidden: Mapping[int, torch.Tensor]
    attention: Mapping[int, torch.Tensor]
    grid: tuple[int, int]
    blocks: int


def attention_probabilities(block, h: torch.Tensor) -> torch.Tensor:
    """(B, heads, T, T) softmax((q / sqrt(d)) k^T) of an open_clip block on its input h (B, T, C)."""
    attn = block.attn
    heads = attn.num_heads
    q, k, _ = F.linear(block.ln_1(h), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    batch, tokens, width = q.shape

    def per_head(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(batch, tokens, heads, -1).transpose(1, 2).reshape(batch * heads, tokens, -1)

    q, k = per_head(q), per_head(k)
    weights = torch.softmax(torch.bmm(q * q.shape[-1] ** -0.5, k.transpose(1, 2)), dim=-1)
    return weights.reshape(batch, heads, tokens, tokens)


@torch.inference_mode()
def record_trunk(visual, pixels: torch.Tensor, attention_blocks: Collection[int] = (),
                 hidden_blocks: Collection[int] = ()) -> TrunkRecord:
    """The trunk on `pixels` (B, 3, H, W), keeping what `attention_blocks` and `hidden_blocks` ask for."""
    trunk_blocks = visual.transformer.resblocks[:-1]
    wanted = set(attention_blocks) | set(hidden_blocks)
    if any(not 0 <= int(i) < len(trunk_blocks) for i in wanted):
        raise ValueError(f"blocks {sorted(wanted)} outside the trunk's 0 .. {len(trunk_blocks) - 1}")
    x = visual.conv1(pixels.float())
    rows, cols = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.float().view(1, 1, -1).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + dino_positional_embedding(visual.positional_embedding, rows, cols).float()
    x = visual.ln_pre(x)
    hidden: dict[int, torch.Tensor] = {}
    attention: dict[int, torch.Tensor] = {}
    for index, block in enumerate(trunk_blocks):
        if index in attention_blocks:
            attention[index] = attention_probabilities(block, x)
        x = block(x)  # open_clip's blocks are batch-first (B, T, C)
        if index in hidden_blocks:
            hidden[index] = x
    hidden[len(trunk_blocks) - 1] = x
    return TrunkRecord(x, MappingProxyType(hidden), MappingProxyType(attention), (int(rows), int(cols)),
                       len(trunk_blocks) + 1)
