"""Every method that replaces CLIP's last block, by key: what it reads from the trunk and how its patch
features are made. The explainer and `evaluate` both turn a method key into features here.

A method's features are (B, patches, D) L2-normalised rows on its own grid (rows, cols): the trunk's
grid, or the proxy's for ProxyCLIP. Its raw map is their cosine with the label features. What each
method reads besides the trunk's last hidden state:

- SC-CLIP: outputs of intermediate trunk blocks (`hidden_blocks`);
- ResCLIP: the attention of intermediate trunk blocks (`attention_blocks`), the CLIP input (PAMR's
  guide) and the label features (its first pass labels every patch among them);
- ProxyCLIP: a proxy model's features of the CLIP input (SAM's image encoder, `proxy_embedding`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

import numpy as np
import torch

from . import guided_methods, last_blocks
from .preprocess import CLIP_MEAN, CLIP_STD
from .trunk import TrunkRecord, record_trunk


@dataclass(frozen=True)
class DenseInputs:
    """What a method's features are computed from; `label_features` (K, D) and `proxy` (B, C, h, w) only
    where a method reads them."""

    visual: torch.nn.Module
    record: TrunkRecord
    pixels: torch.Tensor
    label_features: torch.Tensor | None = None
    proxy: torch.Tensor | None = None


class ProxyEncoder(Protocol):
    """A proxy model for ProxyCLIP (a SAM segmenter's `proxy_encoder()`): called with the image, the
    proxy's input made from the image's CLIP input (`guided_methods.proxy_input`, B x 3 x
    `input_size` x `input_size`) and the CLIP resolution (with the image, its cache key), it returns
    the proxy's features (B, C, h, w). `model_id` names the proxy model."""

    model_id: str
    input_size: int

    def encode(self, proxy_pixels: torch.Tensor) -> torch.Tensor:
        """The proxy's features of a prepared input (B, 3, S, S), not cached (sliding windows)."""

    def __call__(self, image_rgb: np.ndarray, proxy_pixels: torch.Tensor, resolution: int) -> torch.Tensor: ...


def _no_blocks(blocks: int) -> tuple[int, ...]:
    return ()


@dataclass(frozen=True)
class DenseMethod:
    """How one method's features are computed. `attention_blocks` / `hidden_blocks` say, for a tower of L
    blocks, what it reads from the trunk; `uses_labels` / `uses_proxy` whether it reads the label
    features / a proxy's features."""

    features: Callable[[DenseInputs], torch.Tensor]
    attention_blocks: Callable[[int], tuple[int, ...]] = _no_blocks
    hidden_blocks: Callable[[int], tuple[int, ...]] = _no_blocks
    uses_labels: bool = False
    uses_proxy: bool = False


def _last_block(name: str) -> Callable[[DenseInputs], torch.Tensor]:
    block_fn = last_blocks.LAST_BLOCKS[name]

    def features(inputs: DenseInputs) -> torch.Tensor:
        visual = inputs.visual
        with torch.inference_mode():
            out = block_fn(visual.transformer.resblocks[-1], inputs.record.last, inputs.record.grid)
            return last_blocks.patch_tokens(visual, out)
    return features


# One entry for each row of `surgery.method.table.METHOD_TABLE` whose `block` is set.
DENSE_METHODS: dict[str, DenseMethod] = {
    **{name: DenseMethod(_last_block(name)) for name in last_blocks.LAST_BLOCKS},
    "scclip": DenseMethod(lambda i: guided_methods.scclip_tokens(i.visual, i.record),
                          hidden_blocks=guided_methods.scclip_hidden_blocks),
    "resclip": DenseMethod(lambda i: guided_methods.resclip_tokens(i.visual, i.record, i.pixels, i.label_features),
                           attention_blocks=guided_methods.resclip_attention_blocks, uses_labels=True),
    "proxyclip": DenseMethod(lambda i: guided_methods.proxyclip_tokens(i.visual, i.record, i.proxy),
                             uses_proxy=True),
}


def reads_only_the_last_state(visual, methods: Iterable[str]) -> bool:
    """Whether `methods` read nothing of the trunk but its last state (then a known one serves them)."""
    blocks = len(visual.transformer.resblocks)
    return not any(DENSE_METHODS[m].attention_blocks(blocks) or DENSE_METHODS[m].hidden_blocks(blocks)
                   for m in methods)


def trunk_for(visual, pixels: torch.Tensor, methods: Iterable[str], last: torch.Tensor | None = None
              ) -> TrunkRecord | None:
    """The trunk every method in `methods` reads: built around `last` (a known last state of this input,
    e.g. the dual-path forward's at the native grid) when that is all they read, else None when `last`
    is given (the caller then runs `trunk_for` without it, counting a trunk pass), else one pass keeping
    what they all read."""
    methods = list(methods)
    blocks = len(visual.transformer.resblocks)
    if last is not None:
        if not reads_only_the_last_state(visual, methods):
            return None
        patch = visual.conv1.kernel_size[0]
        return TrunkRecord(last, {blocks - 2: last}, {}, (pixels.shape[-2] // patch, pixels.shape[-1] // patch),
                           blocks)
    attention = {i for m in methods for i in DENSE_METHODS[m].attention_blocks(blocks)}
    hidden = {i for m in methods for i in DENSE_METHODS[m].hidden_blocks(blocks)}
    return record_trunk(visual, pixels, attention_blocks=attention, hidden_blocks=hidden)


def proxy_input_for(proxy: ProxyEncoder, pixels: torch.Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """The proxy's input made from a CLIP input normalised with `mean`, `std` (ProxyCLIP's own)."""
    return guided_methods.proxy_input(pixels, proxy.input_size, mean, std)


def proxy_features(proxy: ProxyEncoder, image_rgb: np.ndarray, pixels: torch.Tensor, resolution: int,
                   mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """The proxy's features of the image whose CLIP input (normalised with `mean`, `std`) is `pixels`,
    through the proxy's cache (per image and resolution)."""
    return proxy(image_rgb, proxy_input_for(proxy, pixels, mean, std), resolution)


def method_grid(inputs: DenseInputs, method: str) -> tuple[int, int]:
    """(rows, cols) of a method's map: the proxy's grid for a proxy method, else the trunk's."""
    if DENSE_METHODS[method].uses_proxy:
        return tuple(inputs.proxy.shape[-2:])
    return inputs.record.grid


def method_features(inputs: DenseInputs, method: str) -> torch.Tensor:
    """(B, rows*cols, D) float32 L2-normalised features of `method`, rows on `method_grid`."""
    return DENSE_METHODS[method].features(inputs).float()
