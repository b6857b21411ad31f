"""Text on pictures: a font with wide Unicode coverage, and one line that always fits."""

from __future__ import annotations

import functools
import math
import unicodedata

from PIL import ImageDraw, ImageFont


@functools.lru_cache(maxsize=32)
def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu Sans where installed (wide Unicode coverage), else Pillow's default."""
    size = max(6, int(size))
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        pass
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1
    except TypeError:
        return ImageFont.load_default()


def clean_text(text: str, font: object) -> str:
    """Text that PIL can draw on one line whatever the input."""
    text = str(text).encode("utf-8", "replace").decode("utf-8")  # lone surrogates
    text = "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in text)
    if not isinstance(font, ImageFont.FreeTypeFont):  # bitmap font: Latin-1 only
        text = text.encode("latin-1", "replace").decode("latin-1")
    return text


def text_width(draw: ImageDraw.ImageDraw, text: str, font: object) -> int:
    x0, _, x1, _ = draw.textbbox((0, 0), text, font=font)
    return int(math.ceil(x1 - x0))


def fit_text(draw: ImageDraw.ImageDraw, text: str, font: object, max_w: int) -> str:
    if text_width(draw, text, font) <= max_w:
        return text
    ell = "..." if not isinstance(font, ImageFont.FreeTypeFont) else "\u2026"
    lo, hi = 0, len(text)
    while lo < hi:  # longest prefix that fits with the ellipsis
        mid = (lo + hi + 1) // 2
        if text_width(draw, text[:mid] + ell, font) <= max_w:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + ell
