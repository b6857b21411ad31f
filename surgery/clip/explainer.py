"""The CLIP side of the product as one object with an explicit lifetime.

`ClipExplainer` owns a read-only CLIP model and two bounded caches (image
tokens per image and resolution, text features per label). `compute_maps`
turns an image and labels into raw CLIP and CLIP Surgery maps; everything
threshold-dependent happens later, on these arrays, without the model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
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
from ..method.prompts import background_vocabulary, imagenet_templates, prompt_templates
from ..method.results import DEFAULT_SURGERY_DEPTH, LabelMaps, MapOptions, MapsResult
from ..precision import autocast
from . import dense_methods
from .methods import IMAGENET_TEMPLATES, METHODS, SURGERY_TEMPLATES, check_methods
from .preprocess import CLIP_MEAN, CLIP_STD, clip_input
from .prompt_prefix import PrefixEncoder
from .resnet import OUTPUT_STRIDE, check_resnet_resolution, encode_resnet_tokens
from .text_store import TextFeatureStore
from .vit import ImageTokens, check_resolution, encode_image_tokens

calls = logging.getLogger("surgery.calls")  # one line per real model call (tests count them)

class ClipExplainer:
    """CLIP + architecture/feature surgery with caches; safe to share between threads."""

    def __init__(self, model: CLIP, *, name: str, weights_id: str, mean: tuple[float, ...] = CLIP_MEAN,
                 std: tuple[float, ...] = CLIP_STD, image_cache_entries: int = 16,
                 text_cache_entries: int = 4096, text_cache_dir: Path | None = None) -> None:
        self.is_resnet = isinstance(model.visual, ModifiedResNet)
        if not self.is_resnet and not hasattr(model.visual, "transformer"):
            raise InputError(f"{name} has neither a ViT nor a ResNet image tower; it is not supported by this engine.")
        self.model = model
        self.device = model.logit_scale.device  # where the model was placed (surgery.loading)
        self.name = name
        self.weights_id = weights_id
        self.patch_size = OUTPUT_STRIDE if self.is_resnet else model.visual.conv1.kernel_size[0]
        self.logit_scale = float(model.logit_scale.exp())
        self.mean, self.std = tuple(mean), tuple(std)
        self._image_cache: LRUCache = LRUCache(image_cache_entries)  # tokens, trunks and dense tokens per image
        self._text_cache: LRUCache[torch.Tensor] = LRUCache(text_cache_entries)
        templates = {SURGERY_TEMPLATES: prompt_templates(), IMAGENET_TEMPLATES: imagenet_templates()}
        dimension = model.text_projection.shape[1]
        self._text_stores = {name: TextFeatureStore(text_cache_dir, weights_id, dimension=dimension, templates=t)
                             for name, t in templates.items()} if text_cache_dir else {}
        # template prefixes encoded once per model and template set
        self._prompts = {name: PrefixEncoder(model, t) for name, t in templates.items()}
        self.image_encodings = 0  # real forward passes, for tests and benchmarks

    def to(self, device: torch.device | str) -> "ClipExplainer":
        """Place the model and what is derived from it (template prefixes) on `device`; caches start empty.

        `surgery.loading` builds an explainer on the CPU and then places it, so nothing runs on the
        device before the request that needs it (ZeroGPU lends a GPU only inside its tasks).
        """
        self.model = self.model.to(device)
        self.device = self.model.logit_scale.device
        for prompts in self._prompts.values():
            prompts.to(self.device)
        self._image_cache.clear()
        self._text_cache.clear()
        return self

    # --- cached encoders -------------------------------------------------
    def image_tokens(self, image_rgb: np.ndarray, resolution: int,
                     surgery_depth: int = DEFAULT_SURGERY_DEPTH, precision: str = "fp32") -> ImageTokens:
        if self.is_resnet:
            check_resnet_resolution(resolution)
        else:
            check_resolution(resolution, self.patch_size)
        precision_scope = autocast(precision, self.device)
        key = (image_key(image_rgb), resolution, None if self.is_resnet else surgery_depth, precision)

        def compute() -> ImageTokens:
            self.image_encodings += 1
            calls.info("model call: CLIP image encoder at %d px", resolution)
            pixels = clip_input(image_rgb, resolution, self.mean, self.std, self.device)
            with precision_scope:
                if self.is_resnet:  # the surgery is in the attention pool; depth does not apply
                    tokens = encode_resnet_tokens(self.model.visual, pixels)
                else:
                    tokens = encode_image_tokens(self.model.visual, pixels, surgery_depth)
            return ImageTokens(tokens.clip_tokens.float(), tokens.surgery_tokens.float(), tokens.grid, tokens.trunk)

        return self._image_cache.get_or_compute(key, compute)

    def dense_tokens(self, image_rgb: np.ndarray, resolution: int, method: str, precision: str = "fp32",
                     tokens: ImageTokens | None = None) -> torch.Tensor:
        """(g*g, c) float32 normalised patch tokens of a method that replaces the last block
        (docs/method.md §9). The trunk is computed once per image and resolution for all such methods,
        and not at all at the native grid, where the dual-path forward's `tokens.trunk` is the same."""
        entry = METHODS[method]
        if self.is_resnet or not entry.replaces_last_block:
            raise InputError(f"{entry.title} works on ViT backbones only.")
        check_resolution(resolution, self.patch_size)
        image = image_key(image_rgb)
        visual = self.model.visual

        def trunk() -> torch.Tensor:
            if tokens is not None and tokens.trunk is not None:
                return tokens.trunk
            self.image_encodings += 1
            calls.info("model call: CLIP image encoder (trunk, bicubic positions) at %d px", resolution)
            pixels = clip_input(image_rgb, resolution, self.mean, self.std, self.device)
            with autocast(precision, self.device):
                return dense_methods.trunk(visual, pixels)

        def compute() -> torch.Tensor:
            h = self._image_cache.get_or_compute((image, resolution, "trunk", precision), trunk)
            calls.info("model call: CLIP last block for %s", method)
            with torch.inference_mode(), autocast(precision, self.device):
                out = entry.last_block(visual.transformer.resblocks[-1], h, resolution // self.patch_size)
                return dense_methods.patch_tokens(visual, out)[0].float()

        return self._image_cache.get_or_compute((image, resolution, "dense", method, precision), compute)

    def text_features(self, texts: list[str], templates: str = SURGERY_TEMPLATES) -> torch.Tensor:
        """(K, c) float32 ensemble features over a template set, computing only the labels not cached yet.

        Always float32, whatever `MapOptions.precision` says for the image encoders: a label
        is encoded once and then comes from memory or disk, so bf16 would save nothing there
        (docs/performance.md), and one set of features means the
        start-up vocabulary and the disk cache serve every precision.
        """
        prompts, store = self._prompts[templates], self._text_stores.get(templates)
        key = lambda text: (self.weights_id, templates, text)  # noqa: E731
        missing = [t for t in dict.fromkeys(texts) if key(t) not in self._text_cache]
        if missing and store is not None:
            for text in list(missing):
                stored = store.load(text)
                if stored is not None:
                    self._text_cache.put(key(text), stored.to(self.device))
                    missing.remove(text)
        if missing:
            calls.info("model call: CLIP text encoder for %d labels", len(missing))
            computed = prompts.ensemble(missing).float()
            for text, feature in zip(missing, computed):
                self._text_cache.put(key(text), feature)
                if store is not None:
                    store.save(text, feature)
        rows = [self._text_cache.get(key(t)) for t in texts]
        if any(row is None for row in rows):  # evicted between put and get by a concurrent request
            return prompts.ensemble(list(texts)).float()
        return torch.stack(rows)

    def warm_vocabulary(self) -> None:
        """Encode the background vocabulary and the empty prompt ahead of the first request."""
        self.text_features(list(background_vocabulary()) + [""])

    # --- maps --------------------------------------------------------------
    def compute_maps(self, image_rgb: np.ndarray, labels: tuple[Label, ...] | list[Label],
                     options: MapOptions = MapOptions()) -> MapsResult:
        """Raw maps of every chosen method for each label (docs/method.md §4, §5, §9)."""
        if options.redundancy not in feature_surgery.REDUNDANCY_MODES:
            raise InputError(f"Redundancy must be one of {', '.join(feature_surgery.REDUNDANCY_MODES)}.")
        methods, points_from = check_methods(options.methods, options.points_from, self.is_resnet)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        tokens = self.image_tokens(image_rgb, options.resolution, options.surgery_depth, options.precision)
        timings["clip_image"] = time.perf_counter() - start
        dense = [m for m in methods if METHODS[m].replaces_last_block]
        if dense:
            start = time.perf_counter()
            dense_tokens = {m: self.dense_tokens(image_rgb, options.resolution, m, options.precision, tokens)
                            for m in dense}
            timings["dense_image"] = time.perf_counter() - start

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
        label_texts = list(dict.fromkeys(plain_texts + part_texts))
        imagenet_features = self.text_features(label_texts, IMAGENET_TEMPLATES) if dense else None
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
        presence = feature_surgery.presence_probabilities(tokens.clip_tokens[0, 0], context_features,
                                                          self.logit_scale).cpu()
        grid = tokens.grid

        def grid_maps(similarity: torch.Tensor, texts: tuple[str, ...]) -> np.ndarray:
            columns = [index[t] for t in texts]
            return similarity[0, 1:, columns].T.reshape(len(columns), grid, grid).cpu().numpy().astype(np.float32)

        dense_maps = {}  # method -> (g*g, labels) cosine of its patch tokens with the ImageNet-ensemble features
        if dense:
            label_index = {text: i for i, text in enumerate(label_texts)}
            dense_maps = {m: dense_tokens[m] @ imagenet_features.T for m in dense}

        def dense_parts(method: str, texts: tuple[str, ...]) -> np.ndarray:
            columns = [label_index[t] for t in texts]
            return dense_maps[method][:, columns].T.reshape(len(columns), grid, grid).cpu().numpy().astype(np.float32)

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
            parts = {"clip": clip_parts, "surgery": surgery_parts}
            parts.update({m: dense_parts(m, label.parts) for m in dense})
            stored = {"clip": clip_map, "surgery": surgery_map}
            stored.update({m: mean_of_normalised(parts[m]) if label.is_combined else parts[m][0] for m in dense})
            results.append(LabelMaps(label, clip_map, surgery_map, surgery_parts, label_presence,
                                     method_maps={m: stored[m] for m in methods},
                                     method_parts={m: parts[m] for m in methods}, points_from=points_from))
        timings["surgery"] = time.perf_counter() - start
        height, width = image_rgb.shape[:2]
        options = replace(options, methods=methods, points_from=points_from)
        return MapsResult(width, height, grid, options, tuple(results), timings)
