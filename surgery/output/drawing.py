"""Overlays drawn on the image: heatmaps, SAM prompt points, masks and the masks legend.

Numpy arrays in, uint8 RGB arrays out; every function returns a new array and
leaves its input untouched. Images are `uint8 (H, W, 3)` RGB.

Point prompts follow SAM's convention: rows `[x, y, label]` in image pixels,
label 1 for a positive (foreground) point and 0 for a negative one; any other
label (SAM pads with -1) is not drawn.
"""

from __future__ import annotations

import colorsys
import functools
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .text import clean_text, fit_text, load_font, text_width

__all__ = [
    "POSITIVE_RGB",
    "NEGATIVE_RGB",
    "MASK_RGB",
    "heat_overlay",
    "draw_points",
    "draw_mask",
    "palette",
    "draw_masks_legend",
]

RGB = tuple[int, int, int]

# Green vs magenta stays distinguishable under red-green colour blindness
# (deuteranopes/protanopes see yellowish vs bluish), unlike red vs green.
POSITIVE_RGB: RGB = (0, 230, 118)  # #00E676
NEGATIVE_RGB: RGB = (255, 0, 200)  # #FF00C8
OUTLINE_RGB: RGB = (20, 20, 20)
MASK_RGB: RGB = (30, 144, 255)  # default single-mask tint (dodger blue)

# Okabe-Ito (colour-blind safe) first, black left out; then golden-ratio hues.
_BASE_PALETTE: tuple[RGB, ...] = (
    (230, 159, 0),  # orange
    (86, 180, 233),  # sky blue
    (0, 158, 115),  # bluish green
    (240, 228, 66),  # yellow
    (0, 114, 178),  # blue
    (213, 94, 0),  # vermillion
    (204, 121, 167),  # reddish purple
)


# --------------------------------------------------------------------------- checks


def _check_rgb(image_rgb: np.ndarray) -> np.ndarray:
    image = np.asarray(image_rgb)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image of shape {image.shape}")
    return image


def _check_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != shape:
        raise ValueError(f"mask shape {m.shape} does not match image shape {shape}")
    return m.astype(bool, copy=False)


def _check_points(points: np.ndarray | Sequence | None) -> np.ndarray:
    if points is None:
        return np.zeros((0, 3), dtype=np.int64)
    p = np.asarray(points)
    if p.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must have shape (n, 3) rows [x, y, label], got {p.shape}")
    return np.rint(p.astype(np.float64)).astype(np.int64)


def _colour(c: Sequence[int]) -> RGB:
    if len(c) != 3:
        raise ValueError(f"colour must be an (r, g, b) triple, got {c!r}")
    return tuple(int(np.clip(v, 0, 255)) for v in c)  # type: ignore[return-value]


# ------------------------------------------------------------------------ heatmaps


def heat_overlay(image_rgb: np.ndarray, map_hw: np.ndarray) -> np.ndarray:
    """Blend a [0, 1] map over the image as CLIP Surgery's demo does.

    `vis = (map * 255).astype(uint8)`, JET colour map, then `0.4 * image +
    0.6 * colour` in float, truncated to uint8. The map must already be (H, W);
    values outside [0, 1] are clipped. An all-zero map gives a blue tint.
    """
    image = _check_rgb(image_rgb)
    m = np.asarray(map_hw, dtype=np.float32)
    if m.shape != image.shape[:2]:
        raise ValueError(f"map shape {m.shape} does not match image shape {image.shape[:2]}")
    vis = (np.clip(m, 0.0, 1.0) * 255).astype(np.uint8)
    colour_bgr = cv2.applyColorMap(vis, cv2.COLORMAP_JET)
    colour_rgb = cv2.cvtColor(colour_bgr, cv2.COLOR_BGR2RGB)
    blended = image.astype(np.float64) * 0.4 + colour_rgb.astype(np.float64) * 0.6
    return blended.astype(np.uint8)


# -------------------------------------------------------------------------- points


def _point_radius(h: int, w: int) -> int:
    """Markers scale with the image, so that they keep their size on the page whatever the image's: about
    1/64 of the long side (a 10 px radius on a 640 px image), never under 4."""
    return max(4, int(round(max(h, w) / 64)))


def _blend_rect(img: np.ndarray, x0: int, y0: int, x1: int, y1: int,
                colour: RGB, alpha: float) -> None:
    """Blend a filled rectangle into img in place, clipped to the image."""
    h, w = img.shape[:2]
    x0, x1 = max(0, x0), min(w, x1)
    y0, y1 = max(0, y0), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        return
    region = img[y0:y1, x0:x1].astype(np.float32)
    region = region * (1 - alpha) + np.array(colour, np.float32) * alpha
    img[y0:y1, x0:x1] = np.clip(np.rint(region), 0, 255).astype(np.uint8)


def _draw_dot(img: np.ndarray, x: int, y: int, r: int, colour: RGB, sign: int | None = None,
              ring: bool = False) -> None:
    """An outlined disc; `sign` 1 or 0 draws a dark + or − inside (so the kind reads without colour);
    `ring` adds a white ring outside (a point a person placed)."""
    outline = max(1, r // 3)
    if ring:
        cv2.circle(img, (x, y), r + outline + max(2, r // 4), (255, 255, 255), -1, cv2.LINE_AA)
    cv2.circle(img, (x, y), r + outline, OUTLINE_RGB, -1, cv2.LINE_AA)
    cv2.circle(img, (x, y), r, colour, -1, cv2.LINE_AA)
    if sign is None or r < 4:
        return
    arm, width = max(2, int(round(r * 0.55))), max(1, int(round(r / 4)))
    cv2.line(img, (x - arm, y), (x + arm, y), OUTLINE_RGB, width, cv2.LINE_AA)
    if sign == 1:
        cv2.line(img, (x, y - arm), (x, y + arm), OUTLINE_RGB, width, cv2.LINE_AA)


def _draw_points_legend(img: np.ndarray, radius: int) -> None:
    """'(dot) positive  (dot) negative' in a dark box in the bottom-left corner."""
    h, w = img.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.35, max(h, w) / 1100)
    thick = max(1, int(round(scale * 1.5)))
    (tw_p, th), base = cv2.getTextSize("positive", font, scale, thick)
    (tw_n, _), _ = cv2.getTextSize("negative", font, scale, thick)
    r = max(3, min(radius, th // 2 + 1))
    pad = max(3, th // 2)
    gap = pad * 2
    box_w = pad + 2 * r + pad + tw_p + gap + 2 * r + pad + tw_n + pad
    box_h = pad + max(th + base, 2 * r) + pad
    x0, y1 = pad, h - pad
    y0 = y1 - box_h
    _blend_rect(img, x0, y0, x0 + box_w, y1, (0, 0, 0), 0.6)
    cy = y0 + box_h // 2
    text_y = cy + th // 2
    x = x0 + pad + r
    for colour, text, tw, sign in ((POSITIVE_RGB, "positive", tw_p, 1), (NEGATIVE_RGB, "negative", tw_n, 0)):
        _draw_dot(img, x, cy, r, colour, sign)
        cv2.putText(img, text, (x + r + pad, text_y), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
        x += r + pad + tw + gap + r


def draw_points(image_rgb: np.ndarray, points: np.ndarray | Sequence | None,
                radius: int | None = None, *, legend: bool = True,
                marked: np.ndarray | Sequence | None = None) -> np.ndarray:
    """Draw SAM point prompts as outlined dots with a dark + (positive) or − (negative), and a small legend.

    Positive (label 1) in `POSITIVE_RGB`, negative (label 0) in `NEGATIVE_RGB`;
    other labels are skipped. `radius` defaults to `_point_radius` (1/64 of the long side, at least 4).
    Points also in `marked` (a person's own) get a white ring. The legend (bottom-left) is drawn only
    when there is a point to explain, and under the points, so that it never hides one.
    """
    out = _check_rgb(image_rgb).copy()
    pts = _check_points(points)
    mine = {tuple(row) for row in _check_points(marked).tolist()}
    h, w = out.shape[:2]
    r = _point_radius(h, w) if radius is None else max(1, int(radius))
    drawable = pts[(pts[:, 2] == 1) | (pts[:, 2] == 0)] if len(pts) else pts
    if legend and len(drawable):
        _draw_points_legend(out, r)
    for x, y, label in drawable:
        _draw_dot(out, int(x), int(y), r, POSITIVE_RGB if label == 1 else NEGATIVE_RGB, int(label),
                  ring=(int(x), int(y), int(label)) in mine)
    return out


# --------------------------------------------------------------------------- masks


def _tint(img: np.ndarray, mask: np.ndarray, colour: RGB, alpha: float = 0.5) -> None:
    if not mask.any():
        return
    px = img[mask].astype(np.float32)
    px = px * (1 - alpha) + np.array(colour, np.float32) * alpha
    img[mask] = np.clip(np.rint(px), 0, 255).astype(np.uint8)


def _contour(img: np.ndarray, mask: np.ndarray, colour: RGB, thickness: int) -> None:
    """The mask's outline in its colour over a dark edge, so it reads on light and dark images alike."""
    if not mask.any():
        return
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(img, contours, -1, OUTLINE_RGB, thickness + 2, cv2.LINE_8)
    cv2.drawContours(img, contours, -1, colour, thickness, cv2.LINE_8)


def _contour_thickness(h: int, w: int) -> int:
    """About 1/200 of the long side (3 px on a 640 px image), never under 2: visible when shown smaller."""
    return max(2, int(round(max(h, w) / 200)))


def draw_mask(image_rgb: np.ndarray, mask: np.ndarray,
              points: np.ndarray | Sequence | None = None,
              colour: Sequence[int] = MASK_RGB, marked: np.ndarray | Sequence | None = None) -> np.ndarray:
    """Tint the mask at alpha 0.5, outline it, then draw the points on top (`marked` ones ringed)."""
    out = _check_rgb(image_rgb).copy()
    m = _check_mask(mask, out.shape[:2])
    c = _colour(colour)
    _tint(out, m, c)
    _contour(out, m, c, _contour_thickness(*out.shape[:2]))
    return draw_points(out, points, marked=marked)


@functools.lru_cache(maxsize=1)
def _palette_order() -> tuple[RGB, ...]:
    """Okabe-Ito colours, then an HSV grid in greedy farthest-point order (CIELAB).

    The point colours are seeded as taken, so that mask colours stay apart from
    them; the order is fixed, so `palette` is deterministic.
    """
    grid: list[RGB] = []
    for val in (1.0, 0.75, 0.5):
        for sat in (1.0, 0.6, 0.35):
            for k in range(24):
                r, g, b = colorsys.hsv_to_rgb(k / 24, sat, val)
                grid.append((int(round(r * 255)), int(round(g * 255)), int(round(b * 255))))
    grid = [c for c in dict.fromkeys(grid) if c not in _BASE_PALETTE]

    def lab(cols: Sequence[RGB]) -> np.ndarray:
        arr = np.array(cols, np.float32).reshape(-1, 1, 3) / 255.0
        return cv2.cvtColor(arr, cv2.COLOR_RGB2Lab).reshape(-1, 3)

    cand = lab(grid)
    taken = lab(list(_BASE_PALETTE) + [POSITIVE_RGB, NEGATIVE_RGB])
    dist = np.min(np.linalg.norm(cand[:, None] - taken[None], axis=2), axis=1)
    order = list(_BASE_PALETTE)
    used = np.zeros(len(grid), bool)
    for _ in range(len(grid)):
        i = int(np.argmax(np.where(used, -1.0, dist)))
        used[i] = True
        order.append(grid[i])
        dist = np.minimum(dist, np.linalg.norm(cand - cand[i], axis=1))
    return tuple(order)


def palette(n: int) -> list[RGB]:
    """n well-separated RGB colours, deterministic; the first 7 are colour-blind safe.

    Past the ~200 distinct colours available the sequence repeats.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    order = _palette_order()
    return [order[i % len(order)] for i in range(n)]


# ------------------------------------------------------------------- masks + legend


def draw_masks_legend(image_rgb: np.ndarray, masks: Sequence[np.ndarray | None],
                      names: Sequence[str]) -> np.ndarray:
    """Every label's mask in its own `palette` colour, plus a legend (top-left).

    A `None` mask (or an empty one) is listed as "name (not found)". Names may
    be any Unicode; glyphs the font lacks (emoji) show as boxes.
    """
    out = _check_rgb(image_rgb).copy()
    if len(masks) != len(names):
        raise ValueError(f"{len(masks)} masks but {len(names)} names")
    h, w = out.shape[:2]
    colours = palette(len(names))
    thickness = _contour_thickness(h, w)
    found: list[bool] = []
    for mask, colour in zip(masks, colours):
        if mask is None:
            found.append(False)
            continue
        m = _check_mask(mask, (h, w))
        found.append(bool(m.any()))
        _tint(out, m, colour)
        _contour(out, m, colour, thickness)
    if not names:
        return out

    font_px = max(10, int(round(min(h, w) / 32)))
    font = load_font(font_px)
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    pad = max(3, font_px // 3)
    line_h = font_px + pad
    swatch = font_px
    max_lines = max(1, (h - 3 * pad) // line_h)
    entries = [(clean_text(n, font) + ("" if f else " (not found)"), c)
               for n, f, c in zip(names, found, colours)]
    if len(entries) > max_lines:
        hidden = len(entries) - (max_lines - 1)
        entries = entries[: max_lines - 1] + [(f"+{hidden} more", None)]
    max_text_w = max(1, w // 2 - swatch - 4 * pad)
    entries = [(fit_text(draw, t, font, max_text_w), c) for t, c in entries]
    text_w = max(text_width(draw, t, font) for t, _ in entries)
    box_w = pad + swatch + pad + text_w + pad
    box_h = pad + len(entries) * line_h
    x0 = y0 = pad
    arr = np.asarray(pil).copy()
    _blend_rect(arr, x0, y0, x0 + box_w, y0 + box_h, (0, 0, 0), 0.6)
    pil = Image.fromarray(arr)
    draw = ImageDraw.Draw(pil)
    for i, (text, colour) in enumerate(entries):
        top = y0 + pad + i * line_h
        if colour is not None:
            draw.rectangle([x0 + pad, top, x0 + pad + swatch - 1, top + swatch - 1],
                           fill=colour, outline=(255, 255, 255))
        if isinstance(font, ImageFont.FreeTypeFont):
            draw.text((x0 + 2 * pad + swatch, top + swatch // 2), text, font=font,
                      fill=(255, 255, 255), anchor="lm")
        else:  # bitmap fonts take no anchor
            draw.text((x0 + 2 * pad + swatch, top), text, font=font, fill=(255, 255, 255))
    return np.asarray(pil).copy()
