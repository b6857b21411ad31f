"""The histogram of a map's raw values, with the threshold and the suggestion marked: computed once
(`histogram_of`: bins, axis, ticks, markers), then drawn as a PNG (`histogram_image`, the output
files) or as SVG (`histogram_svg`, the page's cards and the reports).

The axis spans the values; a marker a little outside them widens it, one far outside is drawn at the
nearer edge with its true value and an arrow (`MARKER_REACH`). One number format (`format_value`) and
one set of colours serve every drawing.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .drawing import RGB
from .text import clean_text, fit_text, load_font, text_width

HISTOGRAM_BINS = 40
MARKER_REACH = 0.25  # a marker within this share of the values' range beyond it widens the axis
AXIS_PAD = 0.02  # share of the axis left free at each end

THRESHOLD_RGB: RGB = (213, 94, 0)  # vermillion, solid line (Okabe-Ito: safe for colour-blind readers)
SUGGESTED_RGB: RGB = (0, 114, 178)  # blue, dashed line
HIST_BAR_RGB: RGB = (150, 150, 150)
HIST_BG_RGB: RGB = (255, 255, 255)
HIST_AXIS_RGB: RGB = (60, 60, 60)
MARKER_RGB = {"threshold": THRESHOLD_RGB, "suggested": SUGGESTED_RGB}


def hex_colour(rgb: RGB) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def format_value(value: float) -> str:
    """A raw value as the histograms, cards and reports write it: three decimals, trailing zeros dropped,
    or three significant digits for very small and large values."""
    if value == 0:
        return "0"
    if abs(value) >= 100 or abs(value) < 0.001:
        return f"{value:.3g}"
    return f"{value:.3f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Marker:
    """A threshold or suggestion line: its true `value`, drawn at `at` (the value, or the axis edge it lies
    beyond), `beyond` -1 / 1 when it lies left / right of the axis."""

    name: str
    value: float
    at: float
    beyond: int


@dataclass(frozen=True)
class Histogram:
    """What every drawing of one histogram shows. `counts` / `edges` are the bins (empty for no data);
    `low`..`high` the axis; `ticks` round values on it; `threshold` the value bins at or above count as
    evidence."""

    counts: np.ndarray
    edges: np.ndarray
    low: float
    high: float
    ticks: tuple[float, ...]
    markers: tuple[Marker, ...]
    threshold: float | None

    @property
    def empty(self) -> bool:
        return self.counts.size == 0 or int(self.counts.sum()) == 0

    def fraction(self, value: float) -> float:
        """Where `value` lies on the axis, 0 (low) to 1 (high)."""
        if not self.high > self.low:
            return 0.5
        return min(1.0, max(0.0, (value - self.low) / (self.high - self.low)))

    def evidence(self, index: int) -> bool:
        """Whether bin `index` lies at or above the threshold."""
        return self.threshold is not None and float(self.edges[index]) >= self.threshold


def nice_ticks(low: float, high: float, count: int = 5) -> tuple[float, ...]:
    """Round values (1, 2, 2.5 or 5 times a power of ten apart) from `low` to `high`, about `count` of them."""
    if not high > low:
        return (low,)
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return tuple(round(first + i * step, 10) for i in range(int((high - first) / step + 1e-9) + 1))


def histogram_of(values: np.ndarray | None = None, *, counts: np.ndarray | None = None,
                 edges: np.ndarray | None = None, threshold: float | None = None,
                 suggested: float | None = None, bins: int = HISTOGRAM_BINS) -> Histogram:
    """The histogram of raw `values` (non-finite ones ignored) in `bins` bins over their range, or of
    counts already binned (`counts`, `edges`, e.g. pooled over a dataset), with the markers placed."""
    if counts is None:
        data = np.asarray(values if values is not None else [], dtype=np.float64).ravel()
        data = data[np.isfinite(data)]
        if data.size == 0:
            counts, edges = np.zeros(0, np.int64), np.zeros(0)
        elif data.max() > data.min():
            counts, edges = np.histogram(data, bins=bins, range=(float(data.min()), float(data.max())))
        else:  # one bar, centred on the constant value
            counts, edges = np.array([data.size]), np.array([data[0] - 0.5, data[0] + 0.5])
    counts, edges = np.asarray(counts, dtype=np.int64), np.asarray(edges, dtype=np.float64)
    if counts.size == 0:
        return Histogram(counts, edges, 0.0, 1.0, (), (), threshold)
    low, high = float(edges[0]), float(edges[-1])
    reach = MARKER_REACH * (high - low)
    named = [(name, float(v)) for name, v in (("threshold", threshold), ("suggested", suggested))
             if v is not None and math.isfinite(v)]
    for _, value in named:  # a marker close outside the values widens the axis
        if low - reach <= value < low:
            low = value
        if high < value <= high + reach:
            high = value
    pad = AXIS_PAD * (high - low)
    axis_low, axis_high = low - pad, high + pad
    markers = tuple(Marker(name, value, min(max(value, low), high), -1 if value < low else 1 if value > high else 0)
                    for name, value in named)
    return Histogram(counts, edges, axis_low, axis_high, nice_ticks(axis_low, axis_high), markers,
                     None if threshold is None or not math.isfinite(threshold) else float(threshold))


def _marker_text(marker: Marker) -> str:
    text = f"{marker.name} {format_value(marker.value)}"
    return "< " + text if marker.beyond < 0 else text + " >" if marker.beyond > 0 else text


# --------------------------------------------------------------------------------------------- PNG

def histogram_image(raw_values: np.ndarray, threshold: float | None, *, suggested: float | None = None,
                    width: int = 480, height: int = 200, title: str = "") -> np.ndarray:
    """`histogram_of(raw_values)` drawn as an RGB uint8 image: grey bars, round values under the axis, a
    solid `THRESHOLD_RGB` line at the threshold and a dashed `SUGGESTED_RGB` line at the suggestion, each
    labelled with its value."""
    if width < 80 or height < 60:
        raise ValueError("histogram needs width >= 80 and height >= 60")
    hist = histogram_of(raw_values, threshold=threshold, suggested=suggested)
    img = np.full((height, width, 3), HIST_BG_RGB, np.uint8)
    font_px = max(9, min(14, height // 14))
    margin = max(8, width // 40)
    x0, x1 = margin, width - 1 - margin
    y0 = margin + (font_px + 4 if title else 0) + 2 * (font_px + 2)  # title and two marker labels
    y1 = height - (font_px + 8)
    texts: list[tuple[tuple[int, int], str, RGB, str]] = []  # (xy, text, colour, anchor)

    def x_of(value: float) -> int:
        return int(round(x0 + hist.fraction(value) * (x1 - x0)))

    if hist.empty:
        texts.append((((x0 + x1) // 2, (y0 + y1) // 2), "no data", HIST_AXIS_RGB, "mm"))
    else:
        peak = max(1, int(hist.counts.max()))
        for i, count in enumerate(hist.counts):
            if count:
                bx0, bx1 = x_of(hist.edges[i]), max(x_of(hist.edges[i]), x_of(hist.edges[i + 1]) - 1)
                bar = max(1, int(round(count / peak * (y1 - y0))))
                cv2.rectangle(img, (bx0, y1 - bar), (bx1, y1), HIST_BAR_RGB, -1)
        for tick in hist.ticks:
            x = x_of(tick)
            cv2.line(img, (x, y1 + 1), (x, y1 + 4), HIST_AXIS_RGB, 1)
            texts.append(((x, y1 + 5), format_value(tick), HIST_AXIS_RGB, "ma"))
        label_y = y0 - 2 * (font_px + 2)
        for row, marker in enumerate(hist.markers):
            x, top = x_of(marker.at), label_y + row * (font_px + 2)
            colour = MARKER_RGB[marker.name]
            if marker.name == "suggested":
                dash = max(3, (y1 - y0) // 20)
                for ya in range(top, y1 + 1, 2 * dash):
                    cv2.line(img, (x, ya), (x, min(y1, ya + dash - 1)), colour, 2)
            else:
                cv2.line(img, (x, top), (x, y1), colour, 2)
            anchor = "la" if x < (x0 + x1) // 2 else "ra"
            texts.append(((x + 4 if anchor == "la" else x - 3, top), _marker_text(marker), colour, anchor))
    cv2.line(img, (x0, y1 + 1), (x1, y1 + 1), HIST_AXIS_RGB, 1)
    if title:
        texts.append(((x0, max(2, x0 // 2)), title, (0, 0, 0), "la"))
    _draw_texts(img, texts, font_px, width)
    return img


def _draw_texts(img: np.ndarray, texts: list, font_px: int, width: int) -> None:
    font = load_font(font_px)
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
    img[...] = np.asarray(pil)


# --------------------------------------------------------------------------------------------- SVG

def histogram_svg(hist: Histogram, *, description: str, axis_title: str = "", width: int = 320,
                  height: int = 170, font_px: float = 12.5, bar_titles: str | None = "{count} patches with raw value "
                  "{start} to {stop}") -> str:
    """`hist` as inline SVG (colours set on the elements; text in `currentColor`, so it follows the page's
    light or dark theme). `description` is the picture's accessible name; `bar_titles` a tooltip per bin
    (None: none), on a transparent `rect.bin` over the bin's whole column (`data-bin` pairs it with its
    `rect.bar`); bins at or above the threshold are drawn in the threshold's colour."""
    # Room for two marker labels above, the tick values (and the axis title) below, at this font size.
    line = font_px + 1
    left, right, top = 12, width - 12, 2 * line + 8
    bottom = height - (2 * line + 6 if axis_title else line + 6)
    e = html.escape
    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{e(description, quote=True)}" '
             f'font-size="{font_px}" fill="currentColor">']
    if hist.empty:
        parts.append(f'<text x="{width // 2}" y="{height // 2}" text-anchor="middle">no data</text></svg>')
        return "".join(parts)

    def x_of(value: float) -> float:
        return left + hist.fraction(value) * (right - left)

    peak = max(1, int(hist.counts.max()))
    bar, evidence = hex_colour(HIST_BAR_RGB), hex_colour(THRESHOLD_RGB)
    hits: list[str] = []
    for i, count in enumerate(hist.counts):
        if count == 0:
            continue
        start, stop = float(hist.edges[i]), float(hist.edges[i + 1])
        x0, x1 = x_of(start), max(x_of(stop), x_of(start) + 1)
        tall = (bottom - top) * count / peak
        kind = "bar evidence" if hist.evidence(i) else "bar"
        parts.append(f'<rect class="{kind}" data-bin="{i}" fill="{evidence if hist.evidence(i) else bar}" '
                     f'x="{x0:.1f}" y="{bottom - tall:.1f}" width="{x1 - x0:.1f}" height="{tall:.1f}"/>')
        if bar_titles is not None:  # the bin's whole column answers a pointer or a tap, however short its bar
            title = e(bar_titles.format(count=count, start=format_value(start), stop=format_value(stop)))
            hits.append(f'<rect class="bin" data-bin="{i}" fill="transparent" x="{x0:.1f}" y="{top:.1f}" '
                        f'width="{x1 - x0:.1f}" height="{bottom - top:.1f}"><title>{title}</title></rect>')
    parts.append(f'<line class="axis" stroke="currentColor" x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}"/>')
    for tick in hist.ticks:
        x = x_of(tick)
        parts.append(f'<line class="tick" stroke="currentColor" x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" '
                     f'y2="{bottom + 4}"/><text x="{x:.1f}" y="{bottom + 4 + line:.1f}" text-anchor="middle">'
                     f"{format_value(tick)}</text>")
    if axis_title:
        parts.append(f'<text x="{left}" y="{height - 3}">{e(axis_title)}</text>')
    for row, marker in enumerate(hist.markers):
        x = x_of(marker.at)
        anchor = "end" if x > (left + right) / 2 else "start"
        colour = hex_colour(MARKER_RGB[marker.name])
        dashes = ' stroke-dasharray="5 3"' if marker.name == "suggested" else ""
        parts.append(f'<line class="{marker.name}" stroke="{colour}" stroke-width="2"{dashes} x1="{x:.1f}" '
                     f'y1="{top - 4}" x2="{x:.1f}" y2="{bottom}"/>'
                     f'<text class="{marker.name}-label" fill="{colour}" font-weight="600" '
                     f'x="{x + (-4 if anchor == "end" else 4):.1f}" y="{line * (row + 1) - 1:.1f}" text-anchor="{anchor}">'
                     f"{e(_marker_text(marker))}</text>")
    parts.extend(hits)  # last: above the lines, so that a pointer over a column finds its bin
    parts.append("</svg>")
    return "".join(parts)
