"""Decoding uploaded images safely, and the working size they are explained at.

Decoding is defensive: the pixel count is checked from the header before the
full image is decoded (decompression bombs), EXIF orientation is applied, and
every mode PIL knows (16-bit, CMYK, palette, alpha, grayscale) ends as RGB uint8.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

MAX_PIXELS = 40_000_000  # 40 MP: beyond this a 2-core Space would spend seconds just decoding
MIN_SIDE = 8
# Longest side images are worked on at (app and CLI default). SAM encodes at most 1024 px on the
# long side and its masks are 256×256 logits scaled up; CLIP reads at most 1024 px: more pixels add
# nothing to maps, points or masks, but every overlay, mask and PNG grows with them (a 16 MP photo:
# several times slower per Run and gigabytes of memory; docs/performance.md).
WORK_MAX_SIDE = 1024


def _open_checked(source: str | os.PathLike | bytes | Image.Image, name: str) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    try:
        handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
    except OSError:
        raise InputError(f"{name} could not be opened. Check that the file exists and is readable.") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(handle)
    except Image.DecompressionBombError:  # PIL refuses at open() above 2 * Image.MAX_IMAGE_PIXELS
        raise InputError(
            f"{name} has more than {MAX_PIXELS / 1e6:.0f} megapixels, the limit. Downscale it and try again."
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InputError(
            f"{name} is not an image this app can read. Use a JPEG, PNG, WebP, GIF, BMP or TIFF file."
        ) from None
    return image


def check_pixel_count(width: int, height: int, name: str = "The image") -> None:
    if width * height > MAX_PIXELS:
        raise InputError(
            f"{name} is {width}×{height} = {width * height / 1e6:.0f} megapixels; the limit is "
            f"{MAX_PIXELS / 1e6:.0f} MP. Downscale it and try again."
        )
    if min(width, height) < MIN_SIDE:
        raise InputError(f"{name} is {width}×{height}; both sides must be at least {MIN_SIDE} pixels.")


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """RGB uint8 (H, W, 3) from any PIL mode; transparency is composited onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def load_image(source: str | os.PathLike | bytes | Image.Image, name: str = "The image") -> np.ndarray:
    """Decode, check size, apply EXIF orientation, return RGB uint8 (H, W, 3).

    Raises `InputError` for anything unreadable, truncated, empty or too large.
    """
    image = _open_checked(source, name)
    check_pixel_count(*image.size, name=name)
    try:
        image.seek(0)  # GIF/TIFF: the first frame
    except (EOFError, AttributeError, ValueError):
        pass
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        rgb = to_rgb_array(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise InputError(f"{name} is truncated or corrupt. Re-export or re-download it and try again.") from None
    check_pixel_count(rgb.shape[1], rgb.shape[0], name=name)
    return rgb


@dataclass(frozen=True)
class WorkingImage:
    """The pixels the app and the CLI work on, and the size of the decoded image they came from."""

    rgb: np.ndarray
    source_size: tuple[int, int]  # (height, width) as decoded
    note: str | None = None  # set when `rgb` was scaled down

    @property
    def scaled(self) -> bool:
        return self.rgb.shape[:2] != self.source_size


def fit_long_side(image_rgb: np.ndarray, max_side: int = WORK_MAX_SIDE) -> WorkingImage:
    """The image scaled (area averaging) so its longer side is at most `max_side` (0: no limit;
    the shorter side never drops below MIN_SIDE), or the image itself when it already fits."""
    height, width = image_rgb.shape[:2]
    if max_side <= 0 or max(height, width) <= max_side:
        return WorkingImage(image_rgb, (height, width))
    scale = max_side / max(height, width)
    size = (max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale)))
    scaled = np.ascontiguousarray(cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA))
    note = (f"The image ({width}×{height}) was scaled to {size[0]}×{size[1]} (at most {max_side} px a side) "
            f"to work on: SAM and CLIP never read more than {WORK_MAX_SIDE} px. Points, masks and overlays "
            "are in these pixels; source_width/source_height in result.json give the original size, "
            "and coco.json's masks are at the original size.")
    return WorkingImage(scaled, (height, width), note)


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def expand_images(paths: list[str]) -> list[Path]:
    """The image files a command was given: files as they are, folders as their image files (by suffix,
    sorted by name, not recursing)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(path)
    return found


def unique_stem(path: Path, used: set[str]) -> str:
    """An output folder name for `path` not in `used` (the stem, then stem-2, stem-3, ...), added to `used`."""
    stem, n = path.stem or "image", 2
    candidate = stem
    while candidate in used:
        candidate, n = f"{stem}-{n}", n + 1
    used.add(candidate)
    return candidate
