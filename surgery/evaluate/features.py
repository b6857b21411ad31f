"""Per-window dense features of every scored method, from one pass of CLIP's image tower per window batch.

The scored methods (`SCORED_METHODS`) are the engine's dense methods (`surgery.clip.methods.METHODS`)
plus `surgery_fs`, CLIP Surgery's feature-surgery map. They read three token streams:

- `clip`: CLIP as trained (the last block unchanged);
- `surgery`: CLIP Surgery's architecture-surgery path (value-value attention in the last
  `surgery_depth` blocks, `surgery.clip.vit`), its patches; `surgery_fs` subtracts what all the
  dataset's queries share from it (`surgery.method.feature_surgery.surgery_across_labels`);
- the methods that replace the last block (MaskCLIP, SCLIP, ClearCLIP, NACLIP) on the trunk (every
  block but the last), each through its last-block function from the engine's method table.

`WindowEncoder.encode(pixels)` runs all of them on a batch of equal-size windows, sharing the trunk:
at the checkpoint's native grid (224 px for ViT-B/16) one pass serves every method. Off the native grid
the positional embedding is resized per axis, and the two families resize differently (their official
code): the DINO way for the last-block methods (`dino_positional_embedding_2d`, bicubic with factors
((gh + 0.1) / s, (gw + 0.1) / s), as SCLIP's `interpolate_pos_encoding`), bilinear to (gh, gw) for
CLIP and CLIP Surgery (`bilinear_positional_embedding_2d`, CLIP Surgery's resize), so there they take
two passes. NACLIP's neighbourhood bias is built for the rectangular grid (`naclip_block_2d`). Model
weights are read, never modified.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..clip import last_blocks as dense_methods
from ..method.table import METHOD_TABLE as METHODS
from ..clip.vit import _dual_block
from ..errors import InputError
from ..method.feature_surgery import surgery_across_labels
from ..method.options import DEFAULT_SURGERY_DEPTH
from ..precision import autocast

calls = logging.getLogger("surgery.calls")  # one line per real model call (tests count them)

NACLIP_SIGMA = 5.0  # NACLIP's default Gaussian width, in patches


@dataclass(frozen=True)
class ScoredMethod:
    """A map `evaluate` can score: its token stream and whether feature surgery turns it into logits."""

    name: str
    title: str
    stream: str  # "clip", "surgery", or "dense" (a method replacing the last block)
    feature_surgery: bool = False

    @property
    def positional(self) -> str:
        """How its positional embedding is resized off the native grid: "dino" or "bilinear"."""
        return "dino" if self.stream == "dense" else "bilinear"


SCORED_METHODS: dict[str, ScoredMethod] = {
    "clip": ScoredMethod("clip", METHODS["clip"].title, "clip"),
    # Its authors score the architecture-surgery path's cosine map, argmax over classes (upstream
    # xmed-lab/CLIP_Surgery issues #8, #25, #32); feature surgery is the separate `surgery_fs`.
    "surgery": ScoredMethod("surgery", METHODS["surgery"].title, "surgery"),
    "surgery_fs": ScoredMethod("surgery_fs", "CLIP Surgery + feature surgery", "surgery", feature_surgery=True),
    **{name: ScoredMethod(name, entry.title, "dense") for name, entry in METHODS.items() if entry.block},
}


def check_scored_methods(methods: object) -> tuple[str, ...]:
    """Method names in the table's order; an `InputError` for an unknown or empty choice."""
    if isinstance(methods, str):
        names = [part.strip().lower() for part in methods.split(",") if part.strip()]
    elif isinstance(methods, (list, tuple)) and all(isinstance(m, str) for m in methods):
        names = [m.strip().lower() for m in methods]
    else:
        raise InputError(f"Methods must be names from: {', '.join(SCORED_METHODS)}.")
    unknown = [name for name in names if name not in SCORED_METHODS]
    if unknown:
        raise InputError(f"Unknown method '{unknown[0][:40]}'. Choose from: {', '.join(SCORED_METHODS)}.")
    if not names:
        raise InputError(f"Choose at least one method from: {', '.join(SCORED_METHODS)}.")
    return tuple(name for name in SCORED_METHODS if name in names)


# --------------------------------------------------------------------------- rectangular grids

def _native_grid(positional_embedding: torch.Tensor) -> int:
    return round((positional_embedding.shape[0] - 1) ** 0.5)


def dino_positional_embedding_2d(positional_embedding: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """(1 + gh*gw, C): the patch rows resized bicubically with scale factors ((gh + 0.1) / s,
    (gw + 0.1) / s), align_corners=False, class row kept; the embedding itself at the native grid."""
    native = _native_grid(positional_embedding)
    if (grid_h, grid_w) == (native, native):
        return positional_embedding.float()
    width = positional_embedding.shape[1]
    patches = positional_embedding[1:].float().reshape(1, native, native, width).permute(0, 3, 1, 2)
    factors = ((grid_h + 0.1) / native, (grid_w + 0.1) / native)
    patches = F.interpolate(patches, scale_factor=factors, mode="bicubic", align_corners=False,
                            recompute_scale_factor=False)
    if tuple(patches.shape[-2:]) != (grid_h, grid_w):  # int((g + 0.1)) == g: cannot happen
        raise ValueError(f"DINO resize gave {tuple(patches.shape[-2:])}, expected ({grid_h}, {grid_w})")
    patches = patches.permute(0, 2, 3, 1).reshape(grid_h * grid_w, width)
    return torch.cat([positional_embedding[:1].float(), patches], dim=0)


def bilinear_positional_embedding_2d(positional_embedding: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """(1 + gh*gw, C): the patch rows resized bilinearly to (gh, gw) (CLIP Surgery's resize, per axis)."""
    native = _native_grid(positional_embedding)
    if (grid_h, grid_w) == (native, native):
        return positional_embedding.float()
    width = positional_embedding.shape[1]
    patches = positional_embedding[1:].float().reshape(1, native, native, width).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid_h, grid_w), mode="bilinear", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(grid_h * grid_w, width)
    return torch.cat([positional_embedding[:1].float(), patches], dim=0)


def neighbourhood_bias_2d(grid_h: int, grid_w: int, sigma: float, dtype: torch.dtype,
                          device: torch.device | str) -> torch.Tensor:
    """NACLIP's Omega on a gh x gw grid: exp(-squared grid distance / (2 sigma^2)) between patches,
    0 in the class token's row and column; (1 + gh*gw, 1 + gh*gw)."""
    ys, xs = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64, device=device),
                            torch.arange(grid_w, dtype=torch.float64, device=device), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    squared = (ys[:, None] - ys[None, :]) ** 2 + (xs[:, None] - xs[None, :]) ** 2
    omega = torch.zeros(grid_h * grid_w + 1, grid_h * grid_w + 1, dtype=torch.float64, device=device)
    omega[1:, 1:] = torch.exp(-squared / (2.0 * sigma ** 2))
    return omega.to(dtype=dtype)


@torch.inference_mode()
def naclip_block_2d(block, h: torch.Tensor, grid_h: int, grid_w: int, sigma: float = NACLIP_SIGMA) -> torch.Tensor:
    """NACLIP's last block on a rectangular grid: out_proj(softmax(scale k k^T + Omega) v)."""
    _, k, v, scale = dense_methods._heads(block, h)
    logits = (k @ k.transpose(-2, -1)) * scale + neighbourhood_bias_2d(grid_h, grid_w, sigma, k.dtype, k.device)
    return dense_methods._merge(block, torch.softmax(logits, dim=-1) @ v)


def last_block_tokens(method: str, block, h: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """A last-block method's output tokens (B, N, C) on a gh x gw grid (the engine's table where square)."""
    if grid_h == grid_w:
        return dense_methods.LAST_BLOCKS[method](block, h, grid_h)
    if method == "naclip":
        return naclip_block_2d(block, h, grid_h, grid_w)
    return dense_methods.LAST_BLOCKS[method](block, h, grid_h)  # MaskCLIP, ClearCLIP, SCLIP do not use the grid


# --------------------------------------------------------------------------- the encoder

@dataclass(frozen=True)
class WindowTokens:
    """Per method, L2-normalised projected patch tokens (B, gh*gw, c), patches row-major; `cls` the
    original CLS token projected and normalised (B, c), kept when feature surgery needs it."""

    tokens: dict[str, torch.Tensor]
    cls: torch.Tensor | None
    grid: tuple[int, int]


class WindowEncoder:
    """The image tower of one CLIP ViT, run on batches of equal-size windows for a set of methods."""

    def __init__(self, visual, methods: tuple[str, ...], surgery_depth: int = DEFAULT_SURGERY_DEPTH,
                 precision: str = "fp32") -> None:
        if not hasattr(visual, "transformer"):
            raise InputError("evaluate needs a ViT CLIP; ResNet backbones have no patch tokens to score.")
        blocks = visual.transformer.resblocks
        if not 1 <= surgery_depth <= len(blocks):
            raise InputError(f"Surgery depth must be between 1 and {len(blocks)} for this model.")
        self.visual = visual
        self.methods = tuple(methods)
        self.surgery_depth = surgery_depth
        self.precision = precision
        self.patch_size = visual.conv1.kernel_size[0]
        self.native_grid = _native_grid(visual.positional_embedding)
        self.device = visual.conv1.weight.device

    def encode(self, pixels: torch.Tensor) -> WindowTokens:
        """Every method's tokens for windows (B, 3, h, w), normalised as `protocol.normalise` does."""
        visual = self.visual
        batch = pixels.shape[0]
        calls.info("model call: CLIP image encoder (evaluate) on %d windows of %dx%d px", batch,
                   pixels.shape[-2], pixels.shape[-1])
        with torch.inference_mode(), autocast(self.precision, self.device):
            patches = visual.conv1(pixels.to(self.device))  # a remainder under one patch is dropped, as upstream
            grid_h, grid_w = patches.shape[-2:]
            patches = patches.flatten(2).transpose(1, 2)
            cls = visual.class_embedding.view(1, 1, -1).expand(batch, 1, -1).to(patches.dtype)
            tokens = torch.cat([cls, patches], dim=1)
            chosen = [SCORED_METHODS[m] for m in self.methods]
            native = (grid_h, grid_w) == (self.native_grid, self.native_grid)
            styles = {"shared"} if native else {method.positional for method in chosen}
            out: dict[str, torch.Tensor] = {}
            cls_out = None
            for style in sorted(styles):
                members = [m for m in chosen if native or m.positional == style]
                resize = dino_positional_embedding_2d if style == "dino" else bilinear_positional_embedding_2d
                x = visual.ln_pre(tokens + resize(visual.positional_embedding, grid_h, grid_w).to(tokens.dtype))
                streams, cls_token = self._streams(x, members, grid_h, grid_w)
                out.update(streams)
                cls_out = cls_token if cls_token is not None else cls_out
        return WindowTokens({m: out[m].float() for m in self.methods},
                            None if cls_out is None else cls_out.float(), (grid_h, grid_w))

    def _streams(self, x: torch.Tensor, members: list[ScoredMethod], grid_h: int, grid_w: int
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        visual = self.visual
        blocks = visual.transformer.resblocks
        needs_surgery = any(m.stream == "surgery" for m in members)
        needs_clip = any(m.stream == "clip" for m in members)
        needs_cls = any(m.feature_surgery for m in members)
        dense = [m.name for m in members if m.stream == "dense"]
        out: dict[str, torch.Tensor] = {}
        cls_token = None
        if needs_surgery:
            first_dual = len(blocks) - self.surgery_depth
            for block in blocks[:first_dual]:
                x = block(x)
            x_ori, x_new, trunk = x, x, None
            for block in blocks[first_dual:]:
                if block is blocks[-1]:
                    trunk = x_ori
                x_ori, x_new = _dual_block(block, x_ori, x_new)
            clip_all = F.normalize(visual.ln_post(x_ori) @ visual.proj, dim=-1)
            surgery_patches = F.normalize(visual.ln_post(x_new[:, 1:]) @ visual.proj, dim=-1)
            for m in members:
                if m.stream == "surgery":
                    out[m.name] = surgery_patches
            if needs_clip:
                out["clip"] = clip_all[:, 1:]
            if needs_cls:
                cls_token = clip_all[:, 0]
        else:
            for block in blocks[:-1]:
                x = block(x)
            trunk = x
            if needs_clip:
                out["clip"] = dense_methods.patch_tokens(visual, blocks[-1](trunk))
        for name in dense:
            out[name] = dense_methods.patch_tokens(visual, last_block_tokens(name, blocks[-1], trunk, grid_h, grid_w))
        return out, cls_token


def window_logits(windows: WindowTokens, method: str, text_features: torch.Tensor) -> torch.Tensor:
    """(B, Q, gh, gw) scores of each query per patch: the cosine of the method's tokens with the query
    features (Q, c), or for `surgery_fs` CLIP Surgery's feature surgery across all the queries."""
    tokens = windows.tokens[method]
    text = text_features.to(tokens.device, tokens.dtype)
    if SCORED_METHODS[method].feature_surgery:
        with_cls = torch.cat([windows.cls[:, None], tokens], dim=1)
        scores = surgery_across_labels(with_cls, text)[:, 1:]
    else:
        scores = tokens @ text.T
    grid_h, grid_w = windows.grid
    return scores.transpose(1, 2).reshape(tokens.shape[0], text.shape[0], grid_h, grid_w)
