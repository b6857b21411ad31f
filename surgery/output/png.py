"""PNG encoding: one fast encoder, and a memo that lets a render reuse the previous render's PNGs."""

from __future__ import annotations

from typing import Callable, Hashable

import cv2
import numpy as np


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 grey (H, W), RGB (H, W, 3) or RGBA (H, W, 4) array.

    OpenCV's fast zlib setting: several times faster than PIL's default level for
    slightly larger files; PNG encoding is most of what a Run spends after the
    models (docs/performance.md).
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(f"expected uint8 (H, W), (H, W, 3) or (H, W, 4), got {arr.dtype} {arr.shape}")
    if arr.ndim == 3:  # OpenCV orders channels BGR(A)
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, encoded = cv2.imencode(".png", arr)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image of these shapes
        raise RuntimeError("PNG encoding failed")
    return encoded.tobytes()


class PngMemo:
    """PNG bytes of one image's overlays, kept from one render to the next.

    A render asks `png(key, draw)` for each overlay; what the previous render already
    encoded under the same key is reused (the heatmaps and points when only SAM's masks
    arrived, everything a threshold move left as it was). `next_render` drops what the
    render just finished did not use. Stores at most `max_bytes` per render.
    """

    def __init__(self, max_bytes: int = 32 << 20) -> None:
        self.max_bytes = max_bytes
        self._previous: dict[Hashable, bytes] = {}
        self._current: dict[Hashable, bytes] = {}
        self._current_bytes = 0
        self.encoded = 0  # PNGs actually drawn and encoded (tests)

    def png(self, key: Hashable, draw: Callable[[], np.ndarray]) -> bytes:
        data = self._current.get(key) or self._previous.get(key)
        if data is None:
            data = encode_png(draw())
            self.encoded += 1
        if key not in self._current and self._current_bytes + len(data) <= self.max_bytes:
            self._current[key] = data
            self._current_bytes += len(data)
        return data

    def next_render(self) -> None:
        self._previous, self._current, self._current_bytes = self._current, {}, 0
