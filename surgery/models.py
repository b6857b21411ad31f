"""The app's models as one object with an explicit lifetime.

`ModelStore` loads the default CLIP and SAM in a background thread at start-up
(so the page is usable at once), loads other choices on demand, and keeps a
bounded number of them. A request that arrives early waits, with a progress
message; a load that fails is remembered with its message, so the page can say
what is missing and how to supply local files.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .engine import ClipExplainer
from .errors import InputError, UserError
from .loading import load_clip_explainer, load_sam_segmenter
from .masks import PRECISIONS
from .memory import IdleTrim, release_freed_memory
from .openclip_models import parse_openclip_name
from .registry import CLIP_CHECKPOINTS, DEFAULT_CLIP, OPENCLIP_SUGGESTED, SAM_CHECKPOINTS, default_sam_model

log = logging.getLogger(__name__)

SAM_OFF = "off"


@dataclass(frozen=True)
class ModelConfig:
    clip_model: str = DEFAULT_CLIP
    clip_checkpoint: Path | None = None
    sam_model: str | None = None  # None: vit_b on CPU, vit_h with CUDA
    sam_checkpoint: Path | None = None
    load_sam: bool = True
    backbone_checkpoints: dict[str, Path] = field(default_factory=dict)  # other backbones from local files
    text_cache_dir: Path | None = None  # label embeddings on disk (None: memory only)
    max_loaded: int = 2  # per kind; the defaults count too

    def default_sam(self) -> str:
        if self.sam_model:
            return self.sam_model
        import torch

        return default_sam_model(torch.cuda.is_available())


class ModelStore:
    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self._futures: OrderedDict[tuple, Future] = OrderedDict()
        self._lock = threading.Lock()
        self.idle_trim = IdleTrim()  # handlers report finished model jobs; freed memory goes back when quiet

    # --- lifetime ------------------------------------------------------------
    def start(self) -> None:
        """Begin loading the defaults in the background; returns at once."""
        self._future(("clip", self.config.clip_model))
        if self.config.load_sam:
            self._future(("sam", self.config.default_sam(), "fp32"))
        self._executor.submit(self._warm_vocabulary)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.idle_trim.cancel()

    def _warm_vocabulary(self) -> None:
        future = self._futures.get(("clip", self.config.clip_model))
        if future is not None and future.done() and future.exception() is None:
            future.result().warm_vocabulary()
        release_freed_memory()  # what loading and the vocabulary batches freed
        text, ready = self.status()
        log.info("default models %s", "loaded and ready" if ready else "not all available:\n" + text)

    # --- loading ---------------------------------------------------------------
    def _load(self, key: tuple):
        kind = key[0]
        if kind == "clip":
            name = key[1]
            if name != self.config.clip_model and name in self.config.backbone_checkpoints:
                explainer = load_clip_explainer(name, self.config.backbone_checkpoints[name],
                                                self.config.text_cache_dir)
                explainer.name = self.clip_display_name(name)
                return explainer
            local = self.config.clip_checkpoint if name == self.config.clip_model else None
            return load_clip_explainer(name, local, self.config.text_cache_dir)
        name, precision = key[1], key[2]
        local = self.config.sam_checkpoint if name == self.config.default_sam() else None
        return load_sam_segmenter(name, local, precision)

    def _future(self, key: tuple) -> Future:
        with self._lock:
            future = self._futures.get(key)
            if future is not None and future.done() and future.exception() is not None:
                if not isinstance(future.exception(), UserError):
                    future = None  # an unexpected failure (e.g. out of memory) may pass: try again
            if future is None:
                future = self._executor.submit(self._load, key)
                self._futures[key] = future
            self._futures.move_to_end(key)
            same_kind = [k for k in self._futures if k[0] == key[0]]
            for old in same_kind[: max(0, len(same_kind) - self.config.max_loaded)]:
                if old != key:
                    self._futures.pop(old)
            return future

    def _wait(self, key: tuple, what: str, progress: Callable[[str], None] | None) -> object:
        future = self._future(key)
        started = time.monotonic()
        while True:
            try:
                return future.result(timeout=0.5)
            except TimeoutError:
                if progress is not None:
                    progress(f"Loading {what} weights… {time.monotonic() - started:.0f} s")
            except UserError:
                raise
            except Exception:
                log.exception("loading %s failed", what)
                raise UserError(f"Loading {what} failed on the server. Try again in a minute.") from None

    def clip(self, name: str | None = None, progress: Callable[[str], None] | None = None) -> ClipExplainer:
        name = name or self.config.clip_model
        known = name in CLIP_CHECKPOINTS or name in self.config.backbone_checkpoints or parse_openclip_name(name)
        if not known and name != self.config.clip_model:
            raise InputError(f"Unknown backbone '{name}'. Choose one of: {', '.join(self.clip_choices())}.")
        return self._wait(("clip", name), f"CLIP {name}", progress)

    def sam(self, name: str | None = None, precision: str = "fp32",
            progress: Callable[[str], None] | None = None):
        """The segmenter, or None when SAM is switched off."""
        name = name or self.config.default_sam()
        if name == SAM_OFF or not self.config.load_sam:
            return None
        if name not in SAM_CHECKPOINTS:
            raise InputError(f"Unknown SAM model '{name}'. Choose one of: {', '.join(self.sam_choices())}.")
        if precision not in PRECISIONS:
            raise InputError(f"Precision must be one of {', '.join(PRECISIONS)}.")
        return self._wait(("sam", name, precision), f"SAM {name}", progress)

    # --- what the page shows ---------------------------------------------------
    def clip_display_name(self, name: str | None = None) -> str:
        name = name or self.config.clip_model
        if name == self.config.clip_model and self.config.clip_checkpoint:
            return Path(self.config.clip_checkpoint).name
        if name in self.config.backbone_checkpoints:
            return f"{name} ({Path(self.config.backbone_checkpoints[name]).name})"
        return name

    def sam_display_name(self, name: str | None = None) -> str | None:
        name = name or self.config.default_sam()
        if name == SAM_OFF or not self.config.load_sam:
            return None
        if name == self.config.default_sam() and self.config.sam_checkpoint:
            return Path(self.config.sam_checkpoint).name
        return name

    def clip_choices(self) -> list[str]:
        return list(dict.fromkeys([self.config.clip_model, *self.config.backbone_checkpoints,
                                   *CLIP_CHECKPOINTS, *OPENCLIP_SUGGESTED]))

    def sam_choices(self) -> list[str]:
        if not self.config.load_sam:
            return [SAM_OFF]
        return list(dict.fromkeys([self.config.default_sam(), *SAM_CHECKPOINTS, SAM_OFF]))

    def status(self) -> tuple[str, bool]:
        """(markdown, all defaults ready)."""
        lines, ready = [], True
        keys = [("clip", self.config.clip_model)]
        if self.config.load_sam:
            keys.append(("sam", self.config.default_sam(), "fp32"))
        for key in keys:
            what = (f"CLIP {self.clip_display_name(key[1])}" if key[0] == "clip"
                    else f"SAM {self.sam_display_name(key[1])}")
            future = self._futures.get(key)
            if future is None or not future.done():
                lines.append(f"**{what}**: loading weights…")
                ready = False
            elif future.exception() is not None:
                error = future.exception()
                message = str(error) if isinstance(error, UserError) else "failed to load (see server log)"
                lines.append(f"**{what}**: not available. {message}")
                ready = False
            else:
                lines.append(f"**{what}**: ready")
        return "\n\n".join(lines), ready
