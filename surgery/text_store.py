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

log = logging.getLogger(__name__)

MAX_FILES = 50_000  # a few KB each; beyond this, new labels are no longer written
FORMAT_VERSION = "v1"  # bump when the text encoding changes


def default_text_cache_dir() -> Path:
    root = os.environ.get("CLIP_SURGERY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "clip-surgery-explorer")
    return Path(root) / "text"


class TextFeatureStore:
    """One `.npy` file per (checkpoint, label); writes are atomic (temp file + rename)."""

    def __init__(self, directory: Path, weights_id: str) -> None:
        from .text_encoder import prompt_templates

        templates = hashlib.sha256("\n".join(prompt_templates()).encode("utf-8")).hexdigest()[:12]
        self.directory = Path(directory) / weights_id / f"{FORMAT_VERSION}-{templates}"
        self._writable = True

    def _path(self, label: str) -> Path:
        return self.directory / (hashlib.sha256(label.encode("utf-8")).hexdigest()[:32] + ".npy")

    def load(self, label: str) -> torch.Tensor | None:
        try:
            return torch.from_numpy(np.load(self._path(label), allow_pickle=False))
        except (OSError, ValueError):
            return None

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
