"""Label embeddings on disk, keyed by checkpoint hash, so a restarted Space does not
recompute them (the 59-class vocabulary alone is 5,000 prompts through the text encoder)."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..cache import disk_cache_root

log = logging.getLogger(__name__)

MAX_FILES = 50_000  # a few KB each; beyond this, new labels are no longer written
FORMAT_VERSION = "v1"  # bump when the text encoding changes


def default_text_cache_dir() -> Path:
    return disk_cache_root() / "text"


class TextFeatureStore:
    """One `.npy` file per (checkpoint, label); writes are atomic (temp file + rename).

    A cache must never turn a disk hiccup into an outage: an entry that cannot be read
    (empty, truncated, garbage, wrong shape or dtype) is deleted and reported as missing,
    so the caller computes and writes it again; each bad file is logged once.
    """

    def __init__(self, directory: Path, weights_id: str, dimension: int | None = None,
                 templates: tuple[str, ...] | None = None) -> None:
        from ..method.prompts import prompt_templates

        templates_id = hashlib.sha256("\n".join(templates or prompt_templates()).encode("utf-8")).hexdigest()[:12]
        self.directory = Path(directory) / weights_id / f"{FORMAT_VERSION}-{templates_id}"
        self.dimension = dimension  # expected feature length; None accepts any 1-D vector
        self._writable = True

    def _path(self, label: str) -> Path:
        return self.directory / (hashlib.sha256(label.encode("utf-8")).hexdigest()[:32] + ".npy")

    def load(self, label: str) -> torch.Tensor | None:
        """The stored feature, or None when there is none or it is unusable (then it is removed)."""
        path = self._path(label)
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except Exception as exc:  # EOFError (empty), ValueError/UnpicklingError (garbage, truncated), OSError
            self._drop(path, f"unreadable ({type(exc).__name__})")
            return None
        expected = (self.dimension,) if self.dimension is not None else None
        if (not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.ndim != 1
                or (expected is not None and array.shape != expected) or not np.isfinite(array).all()):
            self._drop(path, f"wrong shape or values ({getattr(array, 'dtype', '?')} {getattr(array, 'shape', '?')})")
            return None
        return torch.from_numpy(array)

    def _drop(self, path: Path, why: str) -> None:
        log.warning("label feature cache entry %s is %s; recomputing it", path.name, why)
        try:
            path.unlink()
        except OSError:  # read-only disk: the bad file stays, and is recomputed in memory each start
            pass

    def save(self, label: str, feature: torch.Tensor) -> None:
        if not self._writable:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if sum(1 for _ in self.directory.iterdir()) >= MAX_FILES:
                return
            handle, temp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            with os.fdopen(handle, "wb") as stream:
                np.save(stream, feature.detach().cpu().numpy().astype(np.float32), allow_pickle=False)
            os.replace(temp, self._path(label))
        except OSError as exc:  # read-only disk, full disk: the in-memory cache still works
            log.warning("text feature cache disabled: %s", exc)
            self._writable = False
