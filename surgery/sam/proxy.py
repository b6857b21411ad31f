"""SAM's image encoder as ProxyCLIP's proxy: the features of a prepared input, cached per image and CLIP
resolution, so a threshold move, a re-render or a switch of the points map never encodes again.

ProxyCLIP's proxy input is the CLIP crop stretched to the encoder's size (`surgery.clip.guided_methods
.proxy_input`), not the resize-and-pad input SAM's predictor encodes: one more encoder pass per image and
resolution. The pass uses segment_anything's stock attention order (`stock_encoder_forward`), which the
official code's hard attention cut needs to be reproduced.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from segment_anything.modeling import Sam

from ..cache import LRUCache, image_key
from ..precision import autocast
from .fast_encoder import stock_encoder_forward

calls = logging.getLogger("surgery.calls")  # one line per real model call (tests count them)

PROXY_CACHE_ENTRIES = 4


class SamProxyEncoder:
    """`surgery.clip.dense.ProxyEncoder` for one SAM model; safe to share between threads."""

    def __init__(self, sam: Sam, precision: str, model_id: str, cache_entries: int = PROXY_CACHE_ENTRIES) -> None:
        self.sam = sam
        self.precision = precision
        self.model_id = model_id
        self.input_size = int(sam.image_encoder.img_size)
        self.encode_calls = 0
        self._cache: LRUCache[torch.Tensor] = LRUCache(cache_entries)

    def encode(self, proxy_pixels: torch.Tensor) -> torch.Tensor:
        """SAM's image encoder on a prepared input (B, 3, S, S): (B, C, S/16, S/16) float32, not cached."""
        self.encode_calls += 1
        calls.info("model call: SAM image encoder (ProxyCLIP proxy) on %d x %d px", *proxy_pixels.shape[-2:])
        with torch.inference_mode(), autocast(self.precision, self.sam.device):
            return stock_encoder_forward(self.sam.image_encoder, proxy_pixels.to(self.sam.device)).float()

    def __call__(self, image_rgb: np.ndarray, proxy_pixels: torch.Tensor, resolution: int) -> torch.Tensor:
        """`encode`, cached per image and CLIP resolution."""
        return self._cache.get_or_compute((image_key(image_rgb), int(resolution)), lambda: self.encode(proxy_pixels))
