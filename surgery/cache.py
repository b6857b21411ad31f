"""Caches: a small thread-safe LRU cache, the content key it is indexed by, and the disk cache's root."""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Generic, Hashable, TypeVar

import numpy as np

V = TypeVar("V")


def disk_cache_root() -> Path:
    """The engine's files on disk (label features, recorded digests): `CLIP_SURGERY_CACHE`, else
    `$XDG_CACHE_HOME/clip-surgery-explorer` (default `~/.cache/clip-surgery-explorer`)."""
    root = os.environ.get("CLIP_SURGERY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "clip-surgery-explorer")
    return Path(root)


def image_key(image_rgb: np.ndarray) -> str:
    """Content hash of an image array (pixels and shape), so equal uploads share work."""
    digest = hashlib.sha256(np.ascontiguousarray(image_rgb).data)
    digest.update(repr(image_rgb.shape).encode())
    return digest.hexdigest()


class LRUCache(Generic[V]):
    """Bounded in entries. `get_or_compute` runs the computation outside the cache lock
    so a slow miss does not block hits, and a second request for a key already being
    computed waits for that computation instead of repeating it (an upload starts the
    image encoders; a Run pressed meanwhile must not encode the image twice)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()
        self._in_flight: dict[Hashable, threading.Lock] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            return None

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        found = self.get(key)
        if found is not None:
            return found
        with self._lock:
            key_lock = self._in_flight.setdefault(key, threading.Lock())
        with key_lock:  # one computation per key at a time
            found = self.get(key)
            if found is not None:
                return found
            with self._lock:
                self.misses += 1
            try:
                value = compute()
                self.put(key, value)
            finally:
                with self._lock:
                    self._in_flight.pop(key, None)
        return value

    def keys(self) -> list[Hashable]:
        """Keys, least recently used first."""
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
