"""Giving freed memory back to the operating system after model jobs.

glibc's malloc keeps freed blocks in its arenas for reuse; after an encoder
pass that is hundreds of MB the process still holds (docs/performance.md).
`malloc_trim(0)` returns the free pages of every arena;
it takes a few milliseconds and changes no allocation in use. The app trims
when it has been quiet for a while (`IdleTrim`), the CLI after each image.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
from typing import Callable


@functools.lru_cache(maxsize=None)
def _libc_function(name: str):
    """A glibc function by name, or None where the C library has none (musl, macOS, Windows)."""
    library = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(library), name) if library else None
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Return the allocator's free pages to the OS; True where that was possible."""
    trim = _libc_function("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


class IdleTrim:
    """Calls `trim` (default `release_freed_memory`) once no job has finished for `idle_s` seconds.

    Trimming right after every job would make the next one, typically a threshold move
    seconds later, fault its working memory back in. Waiting for a quiet moment gives the memory back without slowing a session down.
    """

    def __init__(self, idle_s: float = 30.0, trim: Callable[[], object] = release_freed_memory) -> None:
        self.idle_s = idle_s
        self._trim = trim
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def job_done(self) -> None:
        """(Re)start the quiet-period countdown."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.idle_s, self._trim)
            self._timer.daemon = True
            self._timer.start()

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (default: 8 per core) before a server starts its threads.

    Each thread that allocates under contention gets its own arena, and freed blocks stay in the
    arena that served them, so a server whose requests hop between threads keeps growing: a long
    run held more memory per request the longer it ran. Fewer arenas keep freed memory reusable
    by every thread. True where the C library has `mallopt` and took the value.
    """
    mallopt = _libc_function("mallopt")
    return mallopt is not None and mallopt(M_ARENA_MAX, arenas) == 1


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
REUSED_BLOCK_LIMIT = 1 << 30


def reuse_freed_blocks(limit: int = REUSED_BLOCK_LIMIT) -> bool:
    """Let glibc serve blocks up to `limit` bytes from its heap and keep freed heap memory, so large
    tensors reuse freed pages instead of faulting in fresh zeroed ones (SAM 2.1's encoder touched ~1.4 GB of
    fresh pages per image: docs/performance.md). Process-wide; the app sets it at start-up, where an
    idle trim (`IdleTrim`) gives the kept memory back. True where the C library took both values."""
    mallopt = _libc_function("mallopt")
    return mallopt is not None and mallopt(M_MMAP_THRESHOLD, limit) == 1 and mallopt(M_TRIM_THRESHOLD, limit) == 1


def configure_server_allocator() -> None:
    """glibc's settings for a long-running server: few arenas, freed large blocks reused."""
    limit_malloc_arenas()
    reuse_freed_blocks()

