"""The straightforward implementation the pipeline benchmark compares the product against.

Per request it does what a plain implementation of CLIP Surgery + SAM does:

* CLIP: a plain CLIP forward and a separate dual-path Surgery forward over the
  image (two passes, nothing cached);
* text: for every label, for the 59-class background vocabulary and for the
  empty prompt, the 85 prompts encoded at the full 77 tokens with
  `CLIP.encode_text`, one batch per text, nothing cached; always float32, as
  the product's text features are (`ClipExplainer.text_features`);
* SAM: stock `segment_anything` attention (the product's fast encoder taken
  out) and `SamPredictor.set_image` on every request;
* a threshold move is the whole request again.

Everything else is the product's own: models are loaded by `surgery.loading`
through an `explorer.model_store.ModelStore`, and requests go through
`explorer.handlers.Handlers.run`, so thresholding, points, mask decoding,
rendering and output files are exactly the product's, and the engine's
`MapsResult.timings` / `Explanation.timings` time the baseline's stages too.

`text_sample` > 0 encodes only the labels, the empty prompt and that many
vocabulary classes per request; every other class is the same 85×77 batch, so
its time is counted (`extrapolated_s`) at the measured mean per sampled class
and its feature is a random unit vector.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from explorer.handlers import Handlers
from explorer.model_store import ModelConfig, ModelStore
from surgery.cache import image_key
from surgery.clip.explainer import ClipExplainer
from surgery.clip.preprocess import clip_input
from surgery.clip.vit import ImageTokens, _patch_embeddings, _project, encode_image_tokens
from surgery.hub.sources import ModelSource
from surgery.loading import load_clip, load_segmenter
from surgery.method.prompts import background_vocabulary, prompt_templates, tokenize
from surgery.method.options import DEFAULT_SURGERY_DEPTH
from surgery.precision import autocast
from surgery.sam.fast_encoder import uninstall_fast_attention
from surgery.sam.segmenter import ImageEmbedding, SamSegmenter

calls = logging.getLogger("surgery.calls")  # the engine's model-call log: the benchmark counts these lines


class BaselineExplainer(ClipExplainer):
    """`ClipExplainer.compute_maps` (so the surgery math and its timings are the product's), with every
    encoder call fresh and done the plain way."""

    def __init__(self, *args, text_sample: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.text_sample = text_sample
        self.extrapolated_s = 0.0  # running total of text-encoding seconds counted but not run

    @classmethod
    def from_loaded(cls, explainer: ClipExplainer, text_sample: int = 0) -> BaselineExplainer:
        """The baseline around a model `surgery.loading.load_clip` loaded (same name, weights, normalisation)."""
        return cls(explainer.model, name=explainer.name, weights_id=explainer.weights_id, mean=explainer.mean,
                   std=explainer.std, text_sample=text_sample)

    def image_tokens(self, image_rgb: np.ndarray, resolution: int, surgery_depth: int = DEFAULT_SURGERY_DEPTH,
                     precision: str = "fp32") -> ImageTokens:
        """A plain CLIP forward for the CLIP tokens, then a second, dual-path forward for the surgery tokens."""
        if self.is_resnet:
            raise NotImplementedError("the baseline is a ViT baseline")
        self.image_encodings += 1
        calls.info("model call: CLIP image encoder at %d px (baseline: two forwards)", resolution)
        visual = self.model.visual
        pixels = clip_input(image_rgb, resolution, self.mean, self.std)
        with torch.inference_mode(), autocast(precision):
            x = _patch_embeddings(visual, pixels)
            for block in visual.transformer.resblocks:
                x = block(x)
            clip_tokens = _project(visual, x)
        with autocast(precision):
            tokens = encode_image_tokens(visual, pixels, surgery_depth)
        return dataclasses.replace(tokens, clip_tokens=clip_tokens.float(),
                                   surgery_tokens=tokens.surgery_tokens.float())

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """The reference prompt ensemble: per text, its 85 prompts at the full 77 tokens, one batch each."""
        vocabulary = set(background_vocabulary())
        rows: dict[int, torch.Tensor] = {}
        sampled = skipped = 0
        vocab_seconds = 0.0
        calls.info("model call: CLIP text encoder for %d labels (baseline: 77 tokens, no cache)", len(texts))
        with torch.inference_mode():
            for i, text in enumerate(texts):
                if self.text_sample and text in vocabulary and sampled >= self.text_sample:
                    skipped += 1
                    continue
                start = time.perf_counter()
                tokens = tokenize([template.format(text) for template in prompt_templates()])
                features = F.normalize(self.model.encode_text(tokens).float(), dim=-1).mean(dim=0)
                rows[i] = F.normalize(features, dim=-1)
                if text in vocabulary:
                    sampled += 1
                    vocab_seconds += time.perf_counter() - start
        if skipped:
            self.extrapolated_s += vocab_seconds / sampled * skipped
            generator = torch.Generator().manual_seed(len(texts))
            width = self.model.text_projection.shape[1]
            for i in range(len(texts)):
                if i not in rows:
                    rows[i] = F.normalize(torch.randn(width, generator=generator), dim=0)
        return torch.stack([rows[i] for i in range(len(texts))])

    def warm_vocabulary(self) -> None:
        """Nothing is kept, so there is nothing to warm."""


class StockSegmenter(SamSegmenter):
    """SAM with stock attention whose image embedding is computed again on every request
    (`SamPredictor.set_image`, no cache); decoding is `SamSegmenter.predict`."""

    _requests = itertools.count()

    @classmethod
    def from_loaded(cls, segmenter: SamSegmenter) -> StockSegmenter:
        """The baseline around a model `surgery.loading.load_segmenter` loaded, its fast encoder taken out."""
        uninstall_fast_attention(segmenter.sam.image_encoder)
        return cls(segmenter.sam, precision=segmenter.precision, name=segmenter.name)

    def embed(self, image_rgb: np.ndarray) -> ImageEmbedding:
        """SAM's own encoding, every request again (a key of its own each time, so nothing is reused)."""
        return self._encode(image_rgb, f"{self.model_id}:{image_key(image_rgb)}#{next(self._requests)}")


def baseline_loaders(text_sample: int = 0):
    """`ModelStore` loaders that load through `surgery.loading` and hand out the baseline models."""

    def clip(source: ModelSource, text_cache_dir: Path | None = None, device: str = "cpu") -> BaselineExplainer:
        return BaselineExplainer.from_loaded(load_clip(source, device=device), text_sample)  # no disk cache either

    def sam(source: ModelSource, precision: str = "fp32", device: str = "cpu") -> StockSegmenter:
        return StockSegmenter.from_loaded(load_segmenter(source, precision=precision, device=device))

    return clip, sam


class BaselineApp:
    """The product's `Handlers` on the baseline models; a threshold move runs the whole request again.

    `run(image, labels_text, threshold)` is `Handlers.run` with the benchmark's fixed options (a
    generator of two 10-tuples, as the product's); `rethreshold(state, threshold)` returns the last
    10-tuple of a whole new Run of that state's image and labels.
    """

    def __init__(self, config: ModelConfig, output_dir: Path, *, resolution: int, redundancy: str,
                 precision: str, text_sample: int = 0) -> None:
        self.store = ModelStore(config, loaders=baseline_loaders(text_sample))
        self.handlers = Handlers(self.store, output_dir)
        self.options = (config.clip_model, resolution, redundancy, config.default_sam(), precision)
        self.requests: dict[int, tuple] = {}  # id(state) -> (image, labels): what a rerun needs

    def load(self) -> None:
        """Load both models now (not inside the first timed request)."""
        backbone, _, _, sam_name, precision = self.options
        self.store.clip(backbone)
        self.store.sam(sam_name, precision)

    def extrapolated_s(self) -> float:
        """Running total of text-encoding seconds counted but not run (see `text_sample`)."""
        return self.store.clip(self.options[0]).extrapolated_s

    def run(self, image, labels_text: str, threshold: float) -> Iterator[tuple]:
        backbone, resolution, redundancy, sam_name, precision = self.options
        for outputs in self.handlers.run(image, labels_text, threshold, backbone, resolution, redundancy,
                                         sam_name, precision):
            self.requests[id(outputs[-1])] = (image, labels_text)  # Run's last output: the state
            yield outputs

    def rethreshold(self, state, threshold: float) -> tuple:
        """Nothing kept: a threshold move is the whole request again."""
        image, labels_text = self.requests[id(state)]
        *_, last = self.run(image, labels_text, threshold)
        return last

    def close(self) -> None:
        self.store.close()
