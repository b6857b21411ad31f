"""The app's models as one object with an explicit lifetime.

`ModelStore` loads the default CLIP and SAM in a background thread at start-up
(so the page is usable at once), loads other choices on demand, and keeps at
most `max_loaded` of each kind. Sessions hold model *names* and ask the store,
so an evicted model is really freed. A request that arrives early waits, with a
progress message; a load that fails is remembered with its message, so the
page can say what is missing and how to supply local files.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout  # not the builtin before Python 3.11
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from surgery.clip.explainer import ClipExplainer
from surgery.device import resolve_device, runs_on_gpu
from surgery.errors import InputError, UserError, WeightsUnavailable
from surgery.hub.registry import CLIP_CHECKPOINTS, DEFAULT_CLIP, OPENCLIP_SUGGESTED, SAM_CHECKPOINTS, default_sam_model
from surgery.hub.sources import ModelSource, is_known_clip, resolve_clip, resolve_sam
from surgery.loading import load_clip, load_segmenter
from surgery.memory import IdleTrim, release_freed_memory
from surgery.precision import default_precision, precisions_for
from surgery.sam.segmenter import SamSegmenter

log = logging.getLogger(__name__)

SAM_OFF = "off"
ROOT = Path(__file__).resolve().parents[1]
TINY_CLIP = Path("tests/data/parity/weights.safetensors")
TINY_SAM = Path("tests/data/sam_tiny.safetensors")


def tiny_checkpoints_hint() -> str | None:
    """The command that runs the app on the bundled tiny random checkpoints, where a clone has them."""
    if not ((ROOT / TINY_CLIP).is_file() and (ROOT / TINY_SAM).is_file()):
        return None
    return f"python app.py --clip-checkpoint {TINY_CLIP} --sam-checkpoint {TINY_SAM}"


@dataclass(frozen=True)
class ModelConfig:
    clip_model: str = DEFAULT_CLIP
    clip_checkpoint: Path | None = None
    sam_model: str | None = None  # None: the default for where models run (registry.default_sam_model)
    sam_checkpoint: Path | None = None
    load_sam: bool = True
    backbone_checkpoints: dict[str, Path] = field(default_factory=dict)  # other backbones from local files
    text_cache_dir: Path | None = None  # label embeddings on disk (None: memory only)
    max_loaded: int = 2  # per kind; the defaults count too
    device: str = "auto"  # auto, cpu, cuda or cuda:N (surgery.device)

    def placement(self) -> torch.device | None:
        """Where the models run, or None when the device setting cannot be met (the loads then say why)."""
        try:
            return resolve_device(self.device)
        except InputError:
            return None

    def device_problem(self) -> str | None:
        """The one-line reason the device setting cannot be met, or None."""
        try:
            resolve_device(self.device)
        except InputError as exc:
            return str(exc)
        return None

    def default_sam(self) -> str:
        placement = self.placement()
        return self.sam_model or default_sam_model(runs_on_gpu=placement is not None and runs_on_gpu(placement))

    def default_precision(self) -> str:
        """The image encoders' precision when a request names none: bf16 on a GPU, fp32 on the CPU."""
        placement = self.placement()
        return "fp32" if placement is None else default_precision(placement)

    def precisions(self) -> list[str]:
        """The precisions this device runs (the page offers these; the API refuses the others clearly)."""
        return precisions_for(self.placement() or "cpu")


class ModelStore:
    def __init__(self, config: ModelConfig,
                 loaders: tuple[Callable[..., ClipExplainer], Callable[..., SamSegmenter]] = (load_clip, load_segmenter),
                 ) -> None:
        self.config = config
        self._load_clip, self._load_sam = loaders
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self._futures: OrderedDict[tuple, Future] = OrderedDict()
        self._evicted: set[tuple] = set()
        self._lock = threading.Lock()
        self.idle_trim = IdleTrim()  # handlers report finished model jobs; freed memory goes back when quiet

    # --- lifetime ------------------------------------------------------------
    def start(self, wait: bool = False, warm: bool = True) -> None:
        """Begin loading the defaults in the background; returns at once, or once they are loaded with `wait`.
        `warm`: also encode the background vocabulary now (not where models may only run inside GPU tasks)."""
        for key in self._default_keys():
            self._future(key)
        warmed = self._executor.submit(self._warm_vocabulary, warm)
        if wait:
            warmed.result()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.idle_trim.cancel()

    def _warm_vocabulary(self, warm: bool = True) -> None:
        future = self._futures.get(("clip", self.config.clip_model))
        if warm and future is not None and future.done() and future.exception() is None:
            future.result().warm_vocabulary()
        release_freed_memory()  # what loading and the vocabulary batches freed
        text, ready = self.status()
        log.info("default models %s", "loaded and ready" if ready else "not all available:\n" + text)
        if self._weights_missing() and tiny_checkpoints_hint():
            print(f"To try the app without downloading weights: {tiny_checkpoints_hint()}", flush=True)

    def _weights_missing(self) -> bool:
        """A default model could not be obtained (offline, Hub unreachable, not cached)."""
        return any(future.done() and isinstance(future.exception(), WeightsUnavailable)
                   for key, future in list(self._futures.items()) if key in self._default_keys())

    def _default_keys(self) -> list[tuple]:
        keys = [("clip", self.config.clip_model)]
        if self.config.load_sam:
            keys.append(("sam", self.config.default_sam(), self.config.default_precision()))
        return keys

    # --- names to sources: the one place the app resolves a model name -------------
    def clip_source(self, name: str | None = None) -> ModelSource:
        name = name or self.config.clip_model
        if name == self.config.clip_model and self.config.clip_checkpoint:
            return resolve_clip(name, self.config.clip_checkpoint)
        if name in self.config.backbone_checkpoints:
            path = Path(self.config.backbone_checkpoints[name])
            return resolve_clip(name, path, display_name=f"{name} ({path.name})")
        if not is_known_clip(name):
            raise InputError(f"Unknown backbone '{name}'. Choose one of: {', '.join(self.clip_choices())}.")
        return resolve_clip(name)

    def sam_source(self, name: str | None = None) -> ModelSource:
        name = name or self.config.default_sam()
        if name not in SAM_CHECKPOINTS:
            raise InputError(f"Unknown SAM model '{name}'. Choose one of: {', '.join(self.sam_choices())}.")
        local = self.config.sam_checkpoint if name == self.config.default_sam() else None
        return resolve_sam(name, local)

    # --- loading ---------------------------------------------------------------
    def _load(self, key: tuple):
        if key[0] == "clip":
            return self._load_clip(self.clip_source(key[1]), text_cache_dir=self.config.text_cache_dir,
                                   device=self.config.device)
        return self._load_sam(self.sam_source(key[1]), precision=key[2], device=self.config.device)

    def _future(self, key: tuple) -> Future:
        with self._lock:
            future = self._futures.get(key)
            if future is not None and future.done() and future.exception() is not None:
                if not isinstance(future.exception(), UserError):
                    future = None  # an unexpected failure (e.g. out of memory) may pass: try again
            if future is None:
                future = self._executor.submit(self._load, key)
                self._futures[key] = future
                self._evicted.discard(key)
            self._futures.move_to_end(key)
            same_kind = [k for k in self._futures if k[0] == key[0]]
            for old in same_kind[: max(0, len(same_kind) - self.config.max_loaded)]:
                if old != key:
                    self._futures.pop(old)
                    self._evicted.add(old)
            return future

    def _wait(self, key: tuple, what: str, progress: Callable[[str], None] | None) -> object:
        future = self._future(key)
        started = time.monotonic()
        while True:
            try:
                return future.result(timeout=0.5)
            except FutureTimeout:
                if progress is not None:
                    progress(f"Loading {what} weights… {time.monotonic() - started:.0f} s")
            except UserError:
                raise
            except Exception:
                log.exception("loading %s failed", what)
                raise UserError(f"Loading {what} failed on the server. Try again in a minute.") from None

    def loaded(self, kind: str) -> list[tuple]:
        """Keys of the models of `kind` the store holds (loaded or loading), least recently used first."""
        with self._lock:
            return [key for key in self._futures if key[0] == kind]

    def clip(self, name: str | None = None, progress: Callable[[str], None] | None = None) -> ClipExplainer:
        source = self.clip_source(name)
        return self._wait(("clip", name or self.config.clip_model), f"CLIP {source.display_name}", progress)

    def sam(self, name: str | None = None, precision: str | None = None,
            progress: Callable[[str], None] | None = None) -> SamSegmenter | None:
        """The segmenter, or None when SAM is switched off."""
        key = self.sam_key(name, precision)
        if key is None:
            return None
        return self._wait(("sam", *key), f"SAM {key[0]}", progress)

    def sam_key(self, name: str | None, precision: str | None = None) -> tuple[str, str] | None:
        """(SAM choice, precision), or None when SAM is off: what a session keeps. An unknown name is
        refused here; the precision is one the request resolved (None: the device's default)."""
        name = name or self.config.default_sam()
        if name == SAM_OFF or not self.config.load_sam:
            return None
        self.sam_source(name)  # unknown names are refused here
        return name, precision or self.config.default_precision()

    # --- what the page shows ---------------------------------------------------
    def clip_display_name(self, name: str | None = None) -> str:
        return self.clip_source(name).display_name

    def sam_display_name(self, name: str | None = None) -> str | None:
        name = name or self.config.default_sam()
        if name == SAM_OFF or not self.config.load_sam:
            return None
        return self.sam_source(name).display_name

    def clip_choices(self) -> list[str]:
        return list(dict.fromkeys([self.config.clip_model, *self.config.backbone_checkpoints,
                                   *CLIP_CHECKPOINTS, *OPENCLIP_SUGGESTED]))

    def sam_choices(self) -> list[str]:
        if not self.config.load_sam:
            return [SAM_OFF]
        return list(dict.fromkeys([self.config.default_sam(), *SAM_CHECKPOINTS, SAM_OFF]))

    def status(self) -> tuple[str, bool]:
        """(markdown, nothing left to wait for): one line per default model."""
        lines, ready = [], True
        for key in self._default_keys():
            what = (f"CLIP {self.clip_display_name(key[1])}" if key[0] == "clip"
                    else f"SAM {self.sam_display_name(key[1])}")
            future = self._futures.get(key)
            if future is None and key in self._evicted:
                lines.append(f"**{what}**: unloaded to free memory; loads again when used")
            elif future is None or not future.done():
                lines.append(f"**{what}**: loading weights…")
                ready = False
            elif future.exception() is not None:
                error = future.exception()
                message = str(error) if isinstance(error, UserError) else "failed to load (see server log)"
                lines.append(f"**{what}**: not available. {message}")
                ready = False
            else:
                lines.append(f"**{what}**: ready on {self.config.placement() or self.config.device}")
        hint = tiny_checkpoints_hint()
        if hint and self._weights_missing():
            lines.append(f"To try the app without downloading weights (random tiny models: the maps mean nothing, "
                         f"the code path is the real one): `{hint}`")
        return "\n\n".join(lines), ready
