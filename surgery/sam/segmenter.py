"""Segment Anything as a stateless per-request service: embed an image once, prompt it many times.

`segment_anything.SamPredictor` (and SAM 2's `SAM2ImagePredictor`) keep the
current image inside the predictor, so one shared predictor cannot serve two
requests at once. Here the image embedding is a frozen value (`ImageEmbedding`)
kept in a small LRU cache, and every prediction is handed that value, so
requests never share mutable state and an image is encoded once however often
it is clicked. `Segmenter` holds what SAM and SAM 2.1 share (the cache, the
checks, the call log); `SamSegmenter` here and `Sam2Segmenter`
(`surgery.sam.sam2_segmenter`) encode and decode.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam

from ..cache import LRUCache, image_key
from ..errors import InputError
from ..method.results import MaskPrediction
from ..precision import autocast
from .proxy import SamProxyEncoder

calls = logging.getLogger("surgery.calls")  # one line per real model call (tests count them)

DEFAULT_CACHE_ENTRIES = 4


@dataclass(frozen=True)
class ImageEmbedding:
    """A segmenter's encoding of one image plus the sizes needed to map points and masks back onto it."""

    features: torch.Tensor  # (1, C, h, w) float32: what the mask decoder attends to
    original_size: tuple[int, int]  # (H, W) of the image as given
    input_size: tuple[int, int]  # (H, W) the image was resized to for the encoder
    key: str  # "<model id>:<image digest>"
    # SAM 2.1's finer feature maps for its mask decoder (strides 4 and 8), float32; empty for SAM.
    high_res_features: tuple[torch.Tensor, ...] = ()

    def to(self, device: torch.device | str) -> "ImageEmbedding":
        """The same embedding with its features on `device` (CPU to leave a GPU worker, e.g. on ZeroGPU)."""
        return ImageEmbedding(self.features.to(device), self.original_size, self.input_size, self.key,
                              tuple(t.to(device) for t in self.high_res_features))


def _check_image(image_rgb: object) -> np.ndarray:
    if not isinstance(image_rgb, np.ndarray) or image_rgb.dtype != np.uint8:
        raise InputError("The image must be a uint8 RGB array (height × width × 3).")
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.shape[0] < 1 or image_rgb.shape[1] < 1:
        raise InputError(f"The image must be height × width × 3 RGB; got shape {image_rgb.shape}.")
    return image_rgb


def _check_points(points: object, original_size: tuple[int, int]) -> np.ndarray:
    array = np.asarray(points)
    if array.size == 0:
        raise InputError("Click at least one point on the image to segment.")
    if array.ndim != 2 or array.shape[1] != 3 or not np.issubdtype(array.dtype, np.number):
        raise InputError(f"Points must be rows of [x, y, label]; got an array of shape {array.shape}.")
    labels = array[:, 2]
    if not np.isin(labels, (0, 1)).all():
        raise InputError("Point labels must be 1 (include) or 0 (exclude).")
    height, width = original_size
    x, y = array[:, 0], array[:, 1]
    if (x < 0).any() or (x >= width).any() or (y < 0).any() or (y >= height).any():
        raise InputError(f"A point lies outside the {width}×{height} image.")
    return array


class Segmenter:
    """What every segmenter shares: one model, a bounded thread-safe LRU cache of its image
    embeddings, and the checks of images, points and embeddings. Subclasses encode and decode.

    `precision` is one the model's device runs (`surgery.precision.resolve_precision` decides that where
    a request comes in).

    `encode_calls` counts real image encodings (cache misses), the expensive
    step; tests use it to check that each image is encoded once.
    """

    family = "sam"  # the first part of `model_id`

    def __init__(self, model: torch.nn.Module, precision: str = "fp32", cache_entries: int = DEFAULT_CACHE_ENTRIES,
                 name: str = "sam") -> None:
        if cache_entries < 1:
            raise InputError("The embedding cache needs room for at least one image.")
        self.model = model
        self.name = name  # what outputs call this model
        self.precision = precision
        self.cache_entries = cache_entries
        self.model_id = f"{self.family}@{id(model):x}/{precision}"
        self.encode_calls = 0
        self._cache: LRUCache[ImageEmbedding] = LRUCache(cache_entries)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def cached_keys(self) -> list[str]:
        """Keys of the cached embeddings, least recently used first."""
        return self._cache.keys()

    def embed(self, image_rgb: np.ndarray) -> ImageEmbedding:
        """The image's embedding, encoded only if it is not cached (once even under concurrent calls)."""
        image_rgb = _check_image(image_rgb)
        key = f"{self.model_id}:{image_key(image_rgb)}"
        return self._cache.get_or_compute(key, lambda: self._encode(image_rgb, key))

    def _encode(self, image_rgb: np.ndarray, key: str) -> ImageEmbedding:
        """One real encoding (counted and logged), bypassing the cache."""
        self.encode_calls += 1
        calls.info("model call: SAM image encoder")
        return self._encode_image(image_rgb, key)

    def predict_many(self, embedding: ImageEmbedding, prompts: list[np.ndarray]) -> list[MaskPrediction]:
        """`predict` for each prompt, in order (one call where each call has a fixed cost, e.g. a GPU task)."""
        return [self.predict(embedding, points) for points in prompts]

    def predict(self, embedding: ImageEmbedding, points: np.ndarray) -> MaskPrediction:
        """Three candidate masks for point prompts: rows of [x, y, label], label 1 = object, 0 = not."""
        if not embedding.key.startswith(self.model_id + ":"):
            raise InputError("This image embedding was computed by a different SAM model or precision; embed it again.")
        points = _check_points(points, embedding.original_size)
        calls.info("model call: SAM mask decoder (%d points)", len(points))
        return self._decode(embedding, points)

    def _encode_image(self, image_rgb: np.ndarray, key: str) -> ImageEmbedding:
        raise NotImplementedError

    def _decode(self, embedding: ImageEmbedding, points: np.ndarray) -> MaskPrediction:
        raise NotImplementedError


def prediction_from_logits(logits: torch.Tensor, scores: torch.Tensor, threshold: float) -> MaskPrediction:
    """Candidate masks (logits above `threshold`) and scores of one prompt, as CPU numpy."""
    candidates = (logits.float() > threshold).cpu().numpy()
    scores_np = scores.float().cpu().numpy().astype(np.float32)
    return MaskPrediction(candidates=candidates, scores=scores_np, best=int(np.argmax(scores_np)))


class SamSegmenter(Segmenter):
    """Segment Anything (vit_b/l/h) through `segment_anything.SamPredictor`, a fresh one per call."""

    def __init__(self, sam: Sam, precision: str = "fp32", cache_entries: int = DEFAULT_CACHE_ENTRIES,
                 name: str = "sam") -> None:
        super().__init__(sam, precision, cache_entries, name)
        self.proxy = SamProxyEncoder(sam, precision, self.model_id)  # ProxyCLIP's proxy, its own cache

    @property
    def sam(self) -> Sam:
        return self.model

    def _encode_image(self, image_rgb: np.ndarray, key: str) -> ImageEmbedding:
        predictor = SamPredictor(self.sam)
        with torch.inference_mode(), autocast(self.precision, self.device):
            predictor.set_image(image_rgb)
        return ImageEmbedding(
            features=predictor.features.float(),
            original_size=(int(predictor.original_size[0]), int(predictor.original_size[1])),
            input_size=(int(predictor.input_size[0]), int(predictor.input_size[1])),
            key=key,
        )

    def _decode(self, embedding: ImageEmbedding, points: np.ndarray) -> MaskPrediction:
        predictor = SamPredictor(self.sam)
        predictor.features = embedding.features.to(self.device)
        predictor.original_size = embedding.original_size
        predictor.input_size = embedding.input_size
        predictor.is_image_set = True
        coords = predictor.transform.apply_coords(points[:, :2].astype(np.float32), embedding.original_size)
        coords_torch = torch.as_tensor(coords, dtype=torch.float, device=self.device)[None]
        labels_torch = torch.as_tensor(points[:, 2], dtype=torch.int, device=self.device)[None]
        with torch.inference_mode(), autocast(self.precision, self.device):
            logits, scores, _ = predictor.predict_torch(
                coords_torch, labels_torch, multimask_output=True, return_logits=True)
        return prediction_from_logits(logits[0], scores[0], self.sam.mask_threshold)
