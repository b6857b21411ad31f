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
from ..method.options import DEFAULT_SURGERY_DEPTH, MapOptions, check_resolution
from ..method.prompts import background_vocabulary, imagenet_templates, prompt_templates
from ..method.results import LabelMaps, MapsResult
from ..method.table import IMAGENET_TEMPLATES, METHOD_TABLE, SURGERY_TEMPLATES, check_backbone
from ..precision import autocast
from . import dense
from .preprocess import CLIP_MEAN, CLIP_STD, clip_input
from .prompt_prefix import PrefixEncoder
from .resnet import OUTPUT_STRIDE, encode_resnet_tokens
from .text_store import TextFeatureStore
from .trunk import TrunkRecord
from .vit import ImageTokens, encode_image_tokens

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
    def check_fits(self, options: MapOptions) -> None:
        """An `InputError` when `options` cannot run on this model: the resolution must be a multiple of
        its patch size (a ResNet's output stride), every method must have a form for its backbone, and
        the surgery depth must fit a ViT's blocks (a ResNet's surgery is in its attention pool)."""
        check_resolution(options.resolution, self.patch_size)
        check_backbone(options.methods, self.is_resnet)
        blocks = None if self.is_resnet else len(self.model.visual.transformer.resblocks)
        if blocks is not None and not 1 <= options.surgery_depth <= blocks:
            raise InputError(f"Surgery depth must be between 1 and {blocks} for this model.")

    def image_tokens(self, image_rgb: np.ndarray, resolution: int,
                     surgery_depth: int = DEFAULT_SURGERY_DEPTH, precision: str = "fp32") -> ImageTokens:
        """CLIP's and CLIP Surgery's tokens of the image at `resolution` (one that `check_fits` accepts)."""
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

    def dense_features(self, image_rgb: np.ndarray, resolution: int, methods: list[str], precision: str = "fp32",
                       tokens: ImageTokens | None = None, label_texts: tuple[str, ...] = (),
                       proxy: dense.ProxyEncoder | None = None) -> dict[str, tuple[torch.Tensor, tuple[int, int]]]:
        """method -> ((rows*cols, D) float32 normalised patch features, (rows, cols)) of methods that replace
        the last block (docs/method.md §9-10), each cached per image and resolution (and per label list
        for ResCLIP, whose map depends on it). The trunk is computed once for all the methods missing
        from the cache, keeping what each reads, and not at all at the native grid when they need only
        its last state, which the dual-path forward's `tokens.trunk` is."""
        image = image_key(image_rgb)
        visual = self.model.visual
        label_key = (IMAGENET_TEMPLATES, tuple(label_texts))

        def key(method: str) -> tuple:
            row = dense.DENSE_METHODS[method]
            return (image, resolution, "dense", method, precision, label_key if row.uses_labels else None,
                    proxy.model_id if row.uses_proxy and proxy is not None else None)

        if proxy is None and any(dense.DENSE_METHODS[m].uses_proxy for m in methods):
            raise InputError("ProxyCLIP takes its attention from SAM's image encoder: load SAM (a vit_* model) "
                             "and pass its proxy.")
        found = {m: self._image_cache.get(key(m)) for m in methods}
        missing = [m for m, value in found.items() if value is None]
        if missing:
            pixels = clip_input(image_rgb, resolution, self.mean, self.std, self.device)
            inputs = dense.DenseInputs(
                visual, self._trunk(image, pixels, resolution, missing, precision, tokens), pixels,
                label_features=(self.text_features(list(label_texts), IMAGENET_TEMPLATES)
                                if any(dense.DENSE_METHODS[m].uses_labels for m in missing) else None),
                proxy=(dense.proxy_features(proxy, image_rgb, pixels, resolution, self.mean, self.std)
                       if any(dense.DENSE_METHODS[m].uses_proxy for m in missing) else None))
            for method in missing:
                calls.info("model call: CLIP last block for %s", method)
                with autocast(precision, self.device):
                    features = dense.method_features(inputs, method)[0]
                found[method] = (features, dense.method_grid(inputs, method))
                self._image_cache.put(key(method), found[method])
        return found

    def _trunk(self, image: str, pixels: torch.Tensor, resolution: int, methods: list[str], precision: str,
               tokens: ImageTokens | None) -> TrunkRecord:
        """The trunk `methods` read: the dual-path forward's at the native grid when they read only its
        last state, else one pass keeping what they all read (its last state cached for later methods)."""
        visual = self.model.visual
        slim_key = (image, resolution, "trunk", precision)
        last = tokens.trunk if tokens is not None and tokens.trunk is not None else self._image_cache.get(slim_key)
        if last is not None and (record := dense.trunk_for(visual, pixels, methods, last)) is not None:
            return record
        self.image_encodings += 1
        calls.info("model call: CLIP image encoder (trunk, bicubic positions) at %d px", resolution)
        with autocast(precision, self.device):
            record = dense.trunk_for(visual, pixels, methods)
        self._image_cache.put(slim_key, record.last)
        return record

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
                     options: MapOptions = MapOptions(), proxy: dense.ProxyEncoder | None = None) -> MapsResult:
        """Raw maps of every method in `options` for each label (docs/method.md §4, §5, §9, §10).

        `options` is trusted: it was checked when it was made (`MapOptions`, `surgery.request`), and
        against this model by `check_fits`. `proxy` gives ProxyCLIP its proxy features (a SAM
        segmenter's `proxy_encoder()`); it must be given when ProxyCLIP is among the methods.
        """
        methods = options.methods
        timings: dict[str, float] = {}
        start = time.perf_counter()
        tokens = self.image_tokens(image_rgb, options.resolution, options.surgery_depth, options.precision)
        timings["clip_image"] = time.perf_counter() - start
        block_methods = [m for m in methods if METHOD_TABLE[m].block]
        plain_texts = [label.text for label in labels if not label.is_combined]
        part_texts = [part for label in labels if label.is_combined for part in label.parts]
        label_texts = list(dict.fromkeys(plain_texts + part_texts))
        if block_methods:
            start = time.perf_counter()
            block_features = self.dense_features(image_rgb, options.resolution, block_methods, options.precision,
                                                 tokens, tuple(label_texts), proxy)
            timings["dense_image"] = time.perf_counter() - start

        start = time.perf_counter()
        context = label_texts  # what the labels are contrasted with
        if options.redundancy == "vocab":
            context = list(dict.fromkeys(context + list(background_vocabulary())))
        features = self.text_features(context + [""])  # float32 whatever the image encoders ran in
        context_features, empty_feature = features[:-1], features[-1]
        index = {text: i for i, text in enumerate(context)}
        imagenet_features = self.text_features(label_texts, IMAGENET_TEMPLATES) if block_methods else None
        timings["text"] = time.perf_counter() - start

        start = time.perf_counter()
        grid = tokens.grid
        similarity = {"clip": feature_surgery.plain_similarity(tokens.clip_tokens, context_features)}
        if "surgery" in methods:
            surgery_tokens = tokens.surgery_tokens
            # Combined labels' parts always use empty-prompt redundancy (docs/method.md §5); it is computed
            # only when a combined label or the `empty` mode needs it, and once when both do.
            needs_empty = options.redundancy == "empty" or any(label.is_combined for label in labels)
            parts_similarity = (feature_surgery.surgery_with_redundant(surgery_tokens, context_features,
                                                                       empty_feature) if needs_empty else None)
            similarity["surgery"] = (parts_similarity if options.redundancy == "empty" else
                                     feature_surgery.surgery_across_labels(surgery_tokens, context_features))
        presence = feature_surgery.presence_probabilities(tokens.clip_tokens[0, 0], context_features,
                                                          self.logit_scale).cpu()
        label_index = {text: i for i, text in enumerate(label_texts)}
        # (rows*cols, labels) cosines and the grid of each method that replaces the last block
        block_similarity = {m: (features @ imagenet_features.T, method_grid)
                            for m, (features, method_grid) in (block_features.items() if block_methods else ())}

        def method_parts(method: str, label: Label) -> np.ndarray:
            """(P, rows, cols) raw maps of one method for a label's parts."""
            if method in block_similarity:
                cosines, (rows, cols) = block_similarity[method]
                columns = [label_index[t] for t in label.parts]
                values = cosines[:, columns].T
            else:
                source = parts_similarity if method == "surgery" and label.is_combined else similarity[method]
                columns = [index[t] for t in label.parts]
                values = source[0, 1:, columns].T
                rows, cols = grid
            return values.reshape(len(columns), rows, cols).cpu().numpy().astype(np.float32)

        results = []
        for label in labels:
            parts = {m: method_parts(m, label) for m in methods}
            maps = {m: mean_of_normalised(p) if label.is_combined else p[0] for m, p in parts.items()}
            label_presence = max(float(presence[index[p]]) for p in label.parts)
            results.append(LabelMaps(label, parts, maps, label_presence, options.points_from))
        timings["surgery"] = time.perf_counter() - start
        height, width = image_rgb.shape[:2]
        return MapsResult(width, height, options, tuple(results), timings)
