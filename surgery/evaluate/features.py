"""Per-window dense features of every scored method, from one encoder pass per window batch.

The scored methods (`SCORED_METHODS`) are the engine's dense methods (`surgery.method.table`) plus
`surgery_fs`, CLIP Surgery's feature-surgery map. They read, computed by the engine's own functions:

- `clip`, `surgery`: CLIP as trained and CLIP Surgery's architecture-surgery path, from the dual-path
  forward (`surgery.clip.vit.encode_image_tokens`; bilinear positions on the window's grid);
  `surgery_fs` subtracts what all the dataset's queries share from `surgery`
  (`surgery.method.feature_surgery.surgery_across_labels`);
- the methods that replace the last block, from one trunk (`surgery.clip.dense`: DINO positions,
  what each method reads kept), shared by all of them and, at the checkpoint's native grid (224 px
  for ViT-B/16) when they read only its last state, taken from the dual-path forward.

ResCLIP labels each window's patches among the dataset's queries; ProxyCLIP's proxy is a SAM image
encoder (`WindowEncoder(proxy=...)`). Model weights are read, never modified.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..clip import dense
from ..clip.vit import encode_image_tokens
from ..errors import InputError
from ..method.feature_surgery import surgery_across_labels
from ..method.options import DEFAULT_SURGERY_DEPTH
from ..method.table import METHOD_TABLE as METHODS
from ..precision import autocast

calls = logging.getLogger("surgery.calls")  # one line per real model call (tests count them)


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


# --------------------------------------------------------------------------- the encoder

@dataclass(frozen=True)
class WindowTokens:
    """Per method, L2-normalised projected patch tokens (B, rows*cols, c), patches row-major; `cls` the
    original CLS token projected and normalised (B, c), kept when feature surgery needs it."""

    tokens: dict[str, torch.Tensor]
    cls: torch.Tensor | None
    grids: dict[str, tuple[int, int]]  # per method: the window's patch grid, or the proxy's for ProxyCLIP


class WindowEncoder:
    """The image tower of one CLIP ViT, run on batches of equal-size windows for a set of methods.
    `label_features` (Q, D): the queries, for ResCLIP; `proxy`: a SAM image encoder's
    `SamProxyEncoder`, for ProxyCLIP."""

    def __init__(self, visual, methods: tuple[str, ...], surgery_depth: int = DEFAULT_SURGERY_DEPTH,
                 precision: str = "fp32", label_features: torch.Tensor | None = None, proxy=None) -> None:
        if not hasattr(visual, "transformer"):
            raise InputError("evaluate needs a ViT CLIP; ResNet backbones have no patch tokens to score.")
        blocks = visual.transformer.resblocks
        if not 1 <= surgery_depth <= len(blocks):
            raise InputError(f"Surgery depth must be between 1 and {len(blocks)} for this model.")
        self.visual = visual
        self.methods = tuple(methods)
        self.block_methods = [m for m in self.methods if SCORED_METHODS[m].stream == "dense"]
        if proxy is None and any(dense.DENSE_METHODS[m].uses_proxy for m in self.block_methods):
            raise InputError("ProxyCLIP takes its attention from SAM's image encoder: give --sam-checkpoint (or "
                             "--sam-model) with a vit_* SAM to evaluate it.")
        self.surgery_depth = surgery_depth
        self.precision = precision
        self.label_features = label_features
        self.proxy = proxy
        self.patch_size = visual.conv1.kernel_size[0]
        self.device = visual.conv1.weight.device

    def encode(self, pixels: torch.Tensor) -> WindowTokens:
        """Every method's tokens for windows (B, 3, h, w), normalised as `protocol.normalise` does; a
        remainder under one patch is dropped, as upstream."""
        visual = self.visual
        patch = self.patch_size
        pixels = pixels[..., : pixels.shape[-2] // patch * patch, : pixels.shape[-1] // patch * patch].to(self.device)
        calls.info("model call: CLIP image encoder (evaluate) on %d windows of %dx%d px", pixels.shape[0],
                   pixels.shape[-2], pixels.shape[-1])
        out: dict[str, torch.Tensor] = {}
        grids: dict[str, tuple[int, int]] = {}
        cls = None
        with torch.inference_mode(), autocast(self.precision, self.device):
            tokens = None
            if any(SCORED_METHODS[m].stream != "dense" for m in self.methods):
                tokens = encode_image_tokens(visual, pixels, self.surgery_depth)
                cls = tokens.clip_tokens[:, 0].float()
                for method in self.methods:
                    stream = SCORED_METHODS[method].stream
                    if stream != "dense":
                        out[method] = (tokens.clip_tokens if stream == "clip" else tokens.surgery_tokens)[:, 1:]
                        grids[method] = tokens.grid
            if self.block_methods:
                out.update(self._block_features(pixels, None if tokens is None else tokens.trunk, grids))
        return WindowTokens({m: out[m].float() for m in self.methods}, cls, grids)

    def _block_features(self, pixels: torch.Tensor, last: torch.Tensor | None,
                        grids: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
        """The methods that replace the last block, from one trunk (the dual path's last state where it
        serves them all)."""
        record = dense.trunk_for(self.visual, pixels, self.block_methods, last) if last is not None else None
        if record is None:
            record = dense.trunk_for(self.visual, pixels, self.block_methods)
        proxy = None
        if any(dense.DENSE_METHODS[m].uses_proxy for m in self.block_methods):
            proxy = self.proxy.encode(dense.proxy_input_for(self.proxy, pixels))
        inputs = dense.DenseInputs(self.visual, record, pixels, self.label_features, proxy)
        features = {}
        for method in self.block_methods:
            features[method] = dense.method_features(inputs, method)
            grids[method] = dense.method_grid(inputs, method)
        return features


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
    rows, cols = windows.grids[method]
    return scores.transpose(1, 2).reshape(tokens.shape[0], text.shape[0], rows, cols)
