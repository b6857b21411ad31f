"""The CLIP side of the product as one object with an explicit lifetime.

`ClipExplainer` owns a read-only CLIP model and two bounded caches (image
tokens per image and resolution, text features per label). `compute_maps`
turns an image and labels into raw CLIP and CLIP Surgery maps; everything
threshold-dependent happens later, on these arrays, without the model.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from open_clip.model import CLIP
from open_clip.modified_resnet import ModifiedResNet

from ..cache import LRUCache, image_key
from ..errors import InputError
from ..method import feature_surgery
from ..method.labels import Label
from ..method.maps import mean_of_normalised
from ..method.prompts import background_vocabulary
from ..method.results import DEFAULT_SURGERY_DEPTH, LabelMaps, MapOptions, MapsResult
from ..precision import autocast
from .preprocess import CLIP_MEAN, CLIP_STD, clip_input
from .prompt_prefix import PrefixEncoder
from .resnet import OUTPUT_STRIDE, check_resnet_resolution, encode_resnet_tokens
from .text_store import TextFeatureStore
from .vit import ImageTokens, check_resolution, encode_image_tokens

calls = logging.getLogger("surgery.calls")  # one line per real model call (tests count them)

class ClipExplainer:
    """CLIP + architecture/feature surgery with caches; safe to share between threads."""

    def __init__(self, model: CLIP, *, name: str, weights_id: str, mean: tuple[float, ...] = CLIP_MEAN,
                 std: tuple[float, ...] = CLIP_STD, image_cache_entries: int = 8,
                 text_cache_entries: int = 4096, text_cache_dir: Path | None = None) -> None:
        self.is_resnet = isinstance(model.visual, ModifiedResNet)
        if not self.is_resnet and not hasattr(model.visual, "transformer"):
            raise InputError(f"{name} has neither a ViT nor a ResNet image tower; it is not supported by this engine.")
        self.model = model
        self.name = name
        self.weights_id = weights_id
        self.patch_size = OUTPUT_STRIDE if self.is_resnet else model.visual.conv1.kernel_size[0]
        self.logit_scale = float(model.logit_scale.exp())
        self.mean, self.std = tuple(mean), tuple(std)
        self._image_cache: LRUCache[ImageTokens] = LRUCache(image_cache_entries)
        self._text_cache: LRUCache[torch.Tensor] = LRUCache(text_cache_entries)
        self._text_store = (TextFeatureStore(text_cache_dir, weights_id, dimension=model.text_projection.shape[1])
                            if text_cache_dir else None)
        self._prompts = PrefixEncoder(model)  # template prefixes encoded once per model
        self.image_encodings = 0  # real forward passes, for tests and benchmarks

    # --- cached encoders -------------------------------------------------
    def image_tokens(self, image_rgb: np.ndarray, resolution: int,
                     surgery_depth: int = DEFAULT_SURGERY_DEPTH, precision: str = "fp32") -> ImageTokens:
        if self.is_resnet:
            check_resnet_resolution(resolution)
        else:
            check_resolution(resolution, self.patch_size)
        precision_scope = autocast(precision)
        key = (image_key(image_rgb), resolution, None if self.is_resnet else surgery_depth, precision)

        def compute() -> ImageTokens:
            self.image_encodings += 1
            calls.info("model call: CLIP image encoder at %d px", resolution)
            pixels = clip_input(image_rgb, resolution, self.mean, self.std)
            with precision_scope:
                if self.is_resnet:  # the surgery is in the attention pool; depth does not apply
                    tokens = encode_resnet_tokens(self.model.visual, pixels)
                else:
                    tokens = encode_image_tokens(self.model.visual, pixels, surgery_depth)
            return ImageTokens(tokens.clip_tokens.float(), tokens.surgery_tokens.float(), tokens.grid)

        return self._image_cache.get_or_compute(key, compute)

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """(K, c) float32 ensemble features, computing only the labels not cached yet.

        Always float32, whatever `MapOptions.precision` says for the image encoders: a label
        is encoded once and then comes from memory or disk, so bf16 would save nothing there
        (docs/performance.md), and one set of features means the
        start-up vocabulary and the disk cache serve every precision.
        """
        missing = [t for t in dict.fromkeys(texts) if (self.weights_id, t) not in self._text_cache]
        if missing and self._text_store is not None:
            for text in list(missing):
                stored = self._text_store.load(text)
                if stored is not None:
                    self._text_cache.put((self.weights_id, text), stored)
                    missing.remove(text)
        if missing:
            calls.info("model call: CLIP text encoder for %d labels", len(missing))
            computed = self._prompts.ensemble(missing).float()
            for text, feature in zip(missing, computed):
                self._text_cache.put((self.weights_id, text), feature)
                if self._text_store is not None:
                    self._text_store.save(text, feature)
        rows = [self._text_cache.get((self.weights_id, t)) for t in texts]
        if any(row is None for row in rows):  # evicted between put and get by a concurrent request
            return self._prompts.ensemble(list(texts)).float()
        return torch.stack(rows)

    def warm_vocabulary(self) -> None:
        """Encode the background vocabulary and the empty prompt ahead of the first request."""
        self.text_features(list(background_vocabulary()) + [""])

    # --- maps --------------------------------------------------------------
    def compute_maps(self, image_rgb: np.ndarray, labels: tuple[Label, ...] | list[Label],
                     options: MapOptions = MapOptions()) -> MapsResult:
        if options.redundancy not in feature_surgery.REDUNDANCY_MODES:
            raise InputError(f"Redundancy must be one of {', '.join(feature_surgery.REDUNDANCY_MODES)}.")
        timings: dict[str, float] = {}
        start = time.perf_counter()
        tokens = self.image_tokens(image_rgb, options.resolution, options.surgery_depth, options.precision)
        timings["clip_image"] = time.perf_counter() - start

        start = time.perf_counter()
        plain_texts = [label.text for label in labels if not label.is_combined]
        part_texts = [part for label in labels if label.is_combined for part in label.parts]
        context = list(dict.fromkeys(plain_texts + part_texts))  # what the labels are contrasted with
        if options.redundancy == "vocab":
            context = list(dict.fromkeys(context + list(background_vocabulary())))
        if options.redundancy == "labels" and plain_texts and len(context) < 2:
            raise InputError(
                "Redundancy 'labels' needs at least two labels (with one it gives a flat map). "
                "Add a label, or choose 'vocab' or 'empty'."
            )
        features = self.text_features(context + [""])  # float32 whatever the image encoders ran in
        context_features, empty_feature = features[:-1], features[-1]
        index = {text: i for i, text in enumerate(context)}
        timings["text"] = time.perf_counter() - start

        start = time.perf_counter()
        surgery_tokens = tokens.surgery_tokens
        # Combined labels' parts always use empty-prompt redundancy (docs/method.md §5); it is computed
        # only when a combined label or the `empty` mode needs it, and once when both do.
        needs_empty = options.redundancy == "empty" or any(label.is_combined for label in labels)
        parts_maps = (feature_surgery.surgery_with_redundant(surgery_tokens, context_features, empty_feature)
                      if needs_empty else None)
        if options.redundancy == "empty":
            context_maps = parts_maps
        else:
            context_maps = feature_surgery.surgery_across_labels(surgery_tokens, context_features)
        clip_maps = feature_surgery.plain_similarity(tokens.clip_tokens, context_features)
        presence = feature_surgery.presence_probabilities(tokens.clip_tokens[0, 0], context_features, self.logit_scale)
        grid = tokens.grid

        def grid_maps(similarity: torch.Tensor, texts: tuple[str, ...]) -> np.ndarray:
            columns = [index[t] for t in texts]
            return similarity[0, 1:, columns].T.reshape(len(columns), grid, grid).numpy().astype(np.float32)

        results = []
        for label in labels:
            clip_parts = grid_maps(clip_maps, label.parts)
            if label.is_combined:
                surgery_parts = grid_maps(parts_maps, label.parts)  # empty-prompt redundancy per part
                surgery_map = mean_of_normalised(surgery_parts)
                clip_map = mean_of_normalised(clip_parts)
            else:
                surgery_parts = grid_maps(context_maps, label.parts)
                surgery_map, clip_map = surgery_parts[0], clip_parts[0]
            label_presence = max(float(presence[index[p]]) for p in label.parts)
            results.append(LabelMaps(label, clip_map, surgery_map, surgery_parts, label_presence))
        timings["surgery"] = time.perf_counter() - start
        height, width = image_rgb.shape[:2]
        return MapsResult(width, height, grid, options, tuple(results), timings)
