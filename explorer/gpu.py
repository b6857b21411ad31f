"""The app's model calls as GPU tasks: one short task per call on ZeroGPU, a plain call everywhere else.

On a ZeroGPU Space (`SPACES_ZERO_GPU` set) Hugging Face's `spaces.GPU` runs each
decorated function in a forked worker that holds a GPU only for that call; its
arguments and results are pickled across. So every task here takes plain data
(model names, arrays, dataclasses) and returns CPU data (maps as numpy, SAM
embeddings on the CPU), never a CUDA tensor, and a refusal comes back as data,
so the page shows the engine's own message. Session state, caches and the model
store stay in the app's process and behave the same on every device. Elsewhere
`spaces.GPU` leaves the function as it is, and without the `spaces` package the
decorator is the identity: the same code path on a laptop, a CPU Space and a GPU.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np
import torch

from surgery.errors import InputError, UserError
from surgery.method.labels import Label
from surgery.method.options import MapOptions
from surgery.method.results import MapsResult, MaskPrediction
from surgery.method.table import METHOD_TABLE
from surgery.pipeline import proxy_of
from surgery.sam.segmenter import ImageEmbedding

from .model_store import ModelStore

F = TypeVar("F", bound=Callable)

LONGEST_TASK_S = 120  # ZeroGPU refuses longer durations for most accounts


def on_zero_gpu() -> bool:
    """Whether this process runs on a ZeroGPU Space (Hugging Face sets SPACES_ZERO_GPU there)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in {"1", "t", "true"}


def gpu_task(duration: Callable[..., float]) -> Callable[[F], F]:
    """`spaces.GPU(duration=…)` where the `spaces` package is installed (a no-op off ZeroGPU), else the identity.

    `duration` gets the task's arguments and returns the seconds to ask for.
    """
    try:
        import spaces
    except ImportError:
        return lambda task: task

    def bounded(*args, **kwargs) -> int:
        return int(min(LONGEST_TASK_S, max(5, duration(*args, **kwargs))))

    return lambda task: spaces.GPU(duration=bounded)(task)


@dataclass(frozen=True)
class Refusal:
    """A `UserError` raised inside a task, carried back as data (a worker's exception would lose its text)."""

    kind: str
    message: str

    def raise_again(self) -> None:
        error = {"InputError": InputError}.get(self.kind, UserError)
        raise error(self.message)


def _refusals_as_data(task: Callable, in_worker: bool) -> Callable:
    @functools.wraps(task)
    def run(*args, **kwargs):
        if in_worker:  # OpenMP's CPU thread pool does not survive ZeroGPU's fork; the GPU does the work
            torch.set_num_threads(1)
        try:
            return task(*args, **kwargs)
        except UserError as exc:
            return Refusal(type(exc).__name__, str(exc))
    return run


def _refusals_raised(task: Callable) -> Callable:
    @functools.wraps(task)
    def call(*args, **kwargs):
        result = task(*args, **kwargs)
        if isinstance(result, Refusal):
            result.raise_again()
        return result
    return call


# Seconds to ask ZeroGPU for, generous for a first call in a fresh worker (CUDA start, weights moved):
# a fixed start, then per unit of work, an image's work scaled by its pixels relative to 512 px.
TASK_START_S = 20
DECODE_START_S = 10
CLIP_IMAGE_S = 10  # one image encoder pass (or one dense method's trunk and block) at 512 px
PER_LABEL_S = 0.1
PER_DECODE_S = 0.2
SAM_IMAGE_S = {"vit_h": 20}  # the SAM encoder's pass, by model; others:
SAM_IMAGE_DEFAULT_S = 15
REFERENCE_SIDE = 512


def _scaled(resolution: int) -> float:
    return (resolution / REFERENCE_SIDE) ** 2


def _maps_seconds(backbone, rgb, labels, options: MapOptions, sam_key=None) -> float:
    dense = sum(1 for m in options.methods if METHOD_TABLE[m].block)
    proxy = sum(1 for m in options.methods if METHOD_TABLE[m].proxy)
    return (TASK_START_S + CLIP_IMAGE_S * _scaled(options.resolution) * (1 + dense) + PER_LABEL_S * len(labels)
            + proxy * _embed_seconds(sam_key, rgb))


def _embed_seconds(sam_key, rgb) -> float:
    return SAM_IMAGE_S.get(sam_key[0] if sam_key else None, SAM_IMAGE_DEFAULT_S)


def _decode_seconds(sam_key, embedding, prompts) -> float:
    return DECODE_START_S + PER_DECODE_S * len(prompts)


def _pre_encode_seconds(backbone, resolution, precision, sam_key, rgb) -> float:
    return TASK_START_S + CLIP_IMAGE_S * _scaled(resolution) + _embed_seconds(sam_key, rgb)


class ModelWork:
    """The model calls handlers make, each a GPU task (see the module docstring). Thread-safe."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.to_cpu = on_zero_gpu()  # results leave a ZeroGPU worker as CPU data

        def task(duration, method):
            return _refusals_raised(gpu_task(duration)(_refusals_as_data(method, self.to_cpu)))

        # Wrapped once, at start-up: ZeroGPU registers its tasks before the app launches.
        self.maps = task(_maps_seconds, self._maps)
        self.embed = task(_embed_seconds, self._embed)
        self.decode = task(_decode_seconds, self._decode)  # every label's prompt in one task
        self.pre_encode = task(_pre_encode_seconds, self._pre_encode)

    def _maps(self, backbone: str | None, rgb: np.ndarray, labels: tuple[Label, ...], options: MapOptions,
              sam_key: tuple[str, str] | None = None) -> MapsResult:
        """The raw maps; the SAM of `sam_key` is ProxyCLIP's proxy where that method is computed."""
        proxy = proxy_of(self.store.sam(*sam_key)) if sam_key is not None else None
        return self.store.clip(backbone).compute_maps(rgb, labels, options, proxy=proxy)

    def _embed(self, sam_key: tuple[str, str], rgb: np.ndarray) -> ImageEmbedding:
        embedding = self.store.sam(*sam_key).embed(rgb)
        return embedding.to("cpu") if self.to_cpu else embedding

    def _decode(self, sam_key: tuple[str, str], embedding: ImageEmbedding,
                prompts: list[np.ndarray]) -> list[MaskPrediction]:
        return self.store.sam(*sam_key).predict_many(embedding, prompts)

    def _pre_encode(self, backbone: str | None, resolution: int, precision: str,
                    sam_key: tuple[str, str] | None, rgb: np.ndarray) -> None:
        self.store.clip(backbone).image_tokens(rgb, resolution, precision=precision)
        if sam_key is not None:
            self.store.sam(*sam_key).embed(rgb)

    def segmenter(self, sam_key: tuple[str, str] | None, progress: Callable[[str], None] | None = None
                  ) -> "GpuSegmenter | None":
        """What session code uses as the SAM for `sam_key`: the loaded model's identity, with its
        encoder and decoder called as GPU tasks. None when SAM is off."""
        if sam_key is None:
            return None
        loaded = self.store.sam(*sam_key, progress=progress)
        return GpuSegmenter(self, sam_key, loaded.name, loaded.model_id, loaded.family)


@dataclass(frozen=True)
class GpuSegmenter:
    """`SamSegmenter`'s interface as the session uses it (`name`, `model_id`, `embed`, `predict`)."""

    work: ModelWork
    key: tuple[str, str]
    name: str
    model_id: str
    family: str

    def embed(self, image_rgb: np.ndarray) -> ImageEmbedding:
        return self.work.embed(self.key, image_rgb)

    def predict(self, embedding: ImageEmbedding, points: np.ndarray) -> MaskPrediction:
        return self.work.decode(self.key, embedding, [points])[0]

    def predict_many(self, embedding: ImageEmbedding, prompts: list[np.ndarray]) -> list[MaskPrediction]:
        return self.work.decode(self.key, embedding, list(prompts)) if prompts else []
