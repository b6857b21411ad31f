"""The histogram of a label's raw CLIP Surgery values, with the threshold and the suggestion marked."""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .drawing import RGB
from .text import clean_text, fit_text, load_font, text_width

THRESHOLD_RGB: RGB = (213, 94, 0)  # vermillion, solid line
SUGGESTED_RGB: RGB = (0, 114, 178)  # blue, dashed line
HIST_BAR_RGB: RGB = (150, 150, 150)
HIST_BG_RGB: RGB = (255, 255, 255)
HIST_AXIS_RGB: RGB = (60, 60, 60)

_HIST_BINS = 40


def _fmt(v: float) -> str:
    if v != 0 and (abs(v) >= 1000 or abs(v) < 0.001):
        return f"{v:.3g}"
    return f"{v:.3f}"


def _hist_box(width: int, height: int, title: str) -> tuple[int, int, int, int, int]:
    """Plot box (x0, y0, x1, y1) inclusive pixel columns/rows, and the font size."""
    font_px = max(9, min(14, height // 14))
    margin = max(8, width // 40)
    top = margin + (font_px + 4 if title else 0) + 2 * (font_px + 2)  # title + 2 line labels
    bottom = height - (font_px + 8)
    return margin, top, width - 1 - margin, bottom, font_px


def _side(v: float, vmin: float, vmax: float) -> int:
    """-1 below the data range, 1 above, 0 inside (float32 rounding tolerated)."""
    tol = 1e-6 * max(abs(vmin), abs(vmax), 1e-30)
    return -1 if v < vmin - tol else 1 if v > vmax + tol else 0


def _value_to_x(v: float, vmin: float, vmax: float, x0: int, x1: int) -> int:
    """Column of value v on the axis; values outside the data range go to an edge."""
    side = _side(v, vmin, vmax)
    if side:
        return x0 if side < 0 else x1
    if vmax == vmin:
        return (x0 + x1) // 2
    frac = min(1.0, max(0.0, (v - vmin) / (vmax - vmin)))
    return int(round(x0 + frac * (x1 - x0)))


def histogram_image(raw_values: np.ndarray, threshold: float | None, *,
                    suggested: float | None = None, width: int = 480,
                    height: int = 200, title: str = "") -> np.ndarray:
    """Histogram of raw similarity values with threshold markers, as RGB uint8.

    40 bins over [min, max] (one bin for constant data); min/max tick labels
    under the axis; a solid `THRESHOLD_RGB` line at `threshold` and a dashed
    `SUGGESTED_RGB` line at `suggested`, each labelled with its value. A
    marker outside the data range is drawn at the nearer edge, still with its
    true value. Non-finite values are ignored.
    """
    if width < 80 or height < 60:
        raise ValueError("histogram needs width >= 80 and height >= 60")
    values = np.asarray(raw_values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    img = np.full((height, width, 3), HIST_BG_RGB, np.uint8)
    x0, y0, x1, y1, font_px = _hist_box(width, height, title)
    texts: list[tuple[tuple[int, int], str, RGB, str]] = []  # (xy, text, colour, anchor)

    if values.size:
        vmin, vmax = float(values.min()), float(values.max())
        if vmax > vmin:
            counts, edges = np.histogram(values, bins=_HIST_BINS, range=(vmin, vmax))
        else:
            counts, edges = np.array([values.size]), np.array([vmin, vmax])
        peak = max(1, int(counts.max()))
        n = len(counts)
        for i, c in enumerate(counts):
            if c == 0:
                continue
            bx0 = x0 + int(round(i * (x1 - x0 + 1) / n))
            bx1 = x0 + int(round((i + 1) * (x1 - x0 + 1) / n)) - 1
            bh = max(1, int(round(c / peak * (y1 - y0))))
            cv2.rectangle(img, (bx0, y1 - bh), (max(bx0, bx1), y1), HIST_BAR_RGB, -1)
        if vmax > vmin:
            texts.append(((x0, y1 + 4), _fmt(vmin), HIST_AXIS_RGB, "la"))
            texts.append(((x1, y1 + 4), _fmt(vmax), HIST_AXIS_RGB, "ra"))
        else:
            texts.append((((x0 + x1) // 2, y1 + 4), f"all values {_fmt(vmin)}", HIST_AXIS_RGB, "ma"))
        markers = []
        if threshold is not None and math.isfinite(threshold):
            markers.append(("threshold", float(threshold), THRESHOLD_RGB, False))
        if suggested is not None and math.isfinite(suggested):
            markers.append(("suggested", float(suggested), SUGGESTED_RGB, True))
        label_y = y0 - 2 * (font_px + 2)
        for k, (name, v, colour, dashed) in enumerate(markers):
            x = _value_to_x(v, vmin, vmax, x0, x1)
            if dashed:
                dash = max(3, (y1 - y0) // 20)
                for ya in range(label_y + k * (font_px + 2), y1 + 1, 2 * dash):
                    cv2.line(img, (x, ya), (x, min(y1, ya + dash - 1)), colour, 2)
            else:
                cv2.line(img, (x, label_y + k * (font_px + 2)), (x, y1), colour, 2)
            text = f"{name} {_fmt(v)}"
            side = _side(v, vmin, vmax)
            if side < 0:
                text = "< " + text
            elif side > 0:
                text = text + " >"
            anchor = "la" if x < (x0 + x1) // 2 else "ra"
            tx = x + 4 if anchor == "la" else x - 3
            texts.append(((tx, label_y + k * (font_px + 2)), text, colour, anchor))
    else:
        texts.append((((x0 + x1) // 2, (y0 + y1) // 2), "no data", HIST_AXIS_RGB, "mm"))

    cv2.line(img, (x0, y1 + 1), (x1, y1 + 1), HIST_AXIS_RGB, 1)
    font = load_font(font_px)
    if title:
        texts.append(((x0, max(2, x0 // 2)), title, (0, 0, 0), "la"))
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    freetype = isinstance(font, ImageFont.FreeTypeFont)
    for (tx, ty), text, colour, anchor in texts:
        text = fit_text(draw, clean_text(text, font), font, width - 4)
        if not freetype:  # bitmap fonts take no anchor: place the top-left corner
            tw = text_width(draw, text, font)
            tx = tx - tw if anchor[0] == "r" else tx - tw // 2 if anchor[0] == "m" else tx
            draw.text((tx, ty), text, font=font, fill=colour)
        else:
            draw.text((tx, ty), text, font=font, fill=colour, anchor=anchor)
    return np.asarray(pil).copy()
