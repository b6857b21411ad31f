"""One card per label, as HTML: the label's whole story in one place.

A card holds the CLIP map, the CLIP Surgery map, the points and the mask side by side (each picture
whole, aspect kept, opening larger on click), then the histogram of the label's raw CLIP Surgery
values as an SVG with its axis values, the threshold and the suggestion drawn and labelled, and a
tooltip per bar. Colours come from the page's theme variables, so the cards follow light and dark
mode. Every text that comes from a person (labels, file names) is escaped: it shows as text.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from urllib.parse import quote

import numpy as np

from surgery.method.results import METHOD_TITLES
from surgery.method.views import Explanation, LabelView
from surgery.output.files import label_slug, map_overlay_name

HISTOGRAM_BINS = 40
SVG_WIDTH, SVG_HEIGHT = 320, 170

CSS = """
.label-cards { display: grid; gap: 14px; }
.label-card { border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 10px 12px;
  background: var(--block-background-fill); color: var(--body-text-color); }
.label-card h3 { margin: 0 0 6px; font-size: 1.05rem; display: flex; flex-wrap: wrap; gap: 8px; align-items: baseline; }
.label-card .badge { font-size: 0.8rem; padding: 1px 8px; border-radius: 999px; font-weight: 600; }
.label-card .badge.found { background: #0b6b3a; color: #ffffff; }
.label-card .badge.absent { background: #5a5a5a; color: #ffffff; }
.label-card .meta { font-size: 0.85rem; color: var(--body-text-color); }
.card-pictures { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 8px; }
.card-pictures figure { margin: 0; min-width: 0; }
.card-pictures img { display: block; width: 100%; height: auto; border-radius: 4px; }
.card-pictures figcaption { font-size: 0.8rem; line-height: 1.3; margin-top: 3px; color: var(--body-text-color); }
.card-pictures .placeholder { display: flex; align-items: center; justify-content: center; text-align: center; width: 100%; box-sizing: border-box;
  border: 1px dashed var(--border-color-primary); border-radius: 4px; font-size: 0.85rem; padding: 6px;
  color: var(--body-text-color); }
.card-body { display: grid; grid-template-columns: minmax(0, 2.5fr) minmax(0, 1.4fr); gap: 10px; align-items: start; }
.card-histogram svg { width: 100%; height: auto; display: block; }
.card-histogram details { font-size: 0.85rem; margin-top: 4px; }
.card-histogram details svg { margin-top: 4px; }
.card-histogram .bar { fill: var(--neutral-400); }
.card-histogram .bar.evidence { fill: #d55e00; }
.card-histogram .axis, .card-histogram .tick { stroke: var(--body-text-color); }
.card-histogram text { fill: var(--body-text-color); font-size: 12.5px; font-family: var(--font); }
.card-histogram .threshold { stroke: #d55e00; stroke-width: 2; }
.card-histogram .suggested { stroke: #0072b2; stroke-width: 2; stroke-dasharray: 5 3; }
.card-histogram text.threshold-label { fill: #d55e00; font-weight: 600; }
.card-histogram text.suggested-label { fill: #0072b2; font-weight: 600; }
.colour-bar { display: flex; align-items: center; gap: 8px; font-size: 0.85rem; flex-wrap: wrap; }
.colour-bar .ramp { width: 180px; height: 12px; border-radius: 3px;
  background: linear-gradient(to right, #00007f, #0000ff, #007fff, #00ffff, #7fff7f, #ffff00, #ff7f00, #ff0000, #7f0000); }
@media (max-width: 1100px) { .card-body { grid-template-columns: minmax(0, 1fr); } }
@media (max-width: 700px) { .card-pictures { grid-template-columns: repeat(2, minmax(0, 1fr)); } }
"""


def file_url(path: str | Path) -> str:
    """The URL under which Gradio serves a file of an allowed folder."""
    return "/gradio_api/file=" + quote(str(path))


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _picture(path: str | None, caption: str, alt: str, size: tuple[int, int]) -> str:
    width, height = size
    if path is None:
        return (f'<figure><div class="placeholder" style="aspect-ratio: {width} / {height}">{_e(caption)}</div>'
                "</figure>")
    url = _e(file_url(path))
    return (f'<figure><a href="{url}" target="_blank" rel="noopener" title="Open larger">'
            f'<img src="{url}" alt="{_e(alt)}" width="{width}" height="{height}"></a>'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _mask_caption(view: LabelView) -> str:
    mask = view.chosen_mask
    if view.instances:
        return f"SAM mask · {len(view.instances)} instances · {mask.mean():.1%} of the image"
    which = "best" if view.choice is None else f"candidate {view.chosen + 1}"
    return f"SAM mask ({which}) · score {view.chosen_score:.2f} · {mask.mean():.1%} of the image"


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if not high > low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step) + 1)]


def _fmt(value: float) -> str:
    return f"{value:.3g}" if value != 0 and (abs(value) >= 100 or abs(value) < 0.001) else f"{value:.3f}".rstrip("0").rstrip(".") or "0"


def histogram_svg(raw_values: np.ndarray, threshold: float | None, suggested: float | None, label: str,
                  method_title: str = "CLIP Surgery") -> str:
    """The histogram of a label's raw CLIP Surgery values as SVG, the threshold (solid) and the
    suggestion (dashed) marked and labelled where they fall in (or at the edge of) the range."""
    values = np.asarray(raw_values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    left, right, top, bottom = 12, SVG_WIDTH - 12, 34, SVG_HEIGHT - 30
    parts = [f'<svg viewBox="0 0 {SVG_WIDTH} {SVG_HEIGHT}" role="img" '
             f'aria-label="{_e(f"Histogram of raw {method_title} values for {label}")}">']
    if values.size == 0:
        parts.append(f'<text x="{SVG_WIDTH // 2}" y="{SVG_HEIGHT // 2}" text-anchor="middle">no data</text></svg>')
        return "".join(parts)
    low, high = float(values.min()), float(values.max())
    markers = [m for m in (threshold, suggested) if m is not None]
    span_low, span_high = min([low, *markers]), max([high, *markers])
    if not span_high > span_low:
        span_low, span_high = span_low - 0.5, span_high + 0.5
    pad = 0.02 * (span_high - span_low)
    span_low, span_high = span_low - pad, span_high + pad
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(low, high) if high > low else None)
    peak = max(1, int(counts.max()))

    def x_of(value: float) -> float:
        return left + (value - span_low) / (span_high - span_low) * (right - left)

    for count, start, stop in zip(counts, edges[:-1], edges[1:]):
        if count == 0:
            continue
        x0, x1 = x_of(start), max(x_of(stop), x_of(start) + 1)
        height = (bottom - top) * count / peak
        evidence = threshold is not None and start >= threshold
        parts.append(f'<rect class="bar{" evidence" if evidence else ""}" x="{x0:.1f}" y="{bottom - height:.1f}" '
                     f'width="{x1 - x0:.1f}" height="{height:.1f}"><title>{count} patches with raw value '
                     f"{_fmt(start)} to {_fmt(stop)}</title></rect>")
    parts.append(f'<line class="axis" x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}"/>')
    for tick in _nice_ticks(span_low, span_high):
        x = x_of(tick)
        parts.append(f'<line class="tick" x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}"/>'
                     f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{_fmt(tick)}</text>')
    parts.append(f'<text x="{left}" y="{SVG_HEIGHT - 2}">raw {_e(method_title)} value</text>'
                 f'<text x="{right}" y="{SVG_HEIGHT - 2}" text-anchor="end">hover a bar: its count</text>')
    label_row = 12
    for value, css, name in ((threshold, "threshold", "threshold"), (suggested, "suggested", "suggested")):
        if value is None:
            continue
        x = x_of(value)
        anchor = "end" if x > (left + right) / 2 else "start"
        shift = -4 if anchor == "end" else 4
        parts.append(f'<line class="{css}" x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{bottom}"/>'
                     f'<text class="{css}-label" x="{x + shift:.1f}" y="{label_row}" text-anchor="{anchor}">'
                     f"{name} {_fmt(value)}</text>")
        label_row += 13
    parts.append("</svg>")
    return "".join(parts)


def _points_caption(view: LabelView) -> str:
    positives = int((view.points[:, 2] == 1).sum())
    return f"Points for SAM: {positives} positive (+), {len(view.points) - positives} negative (−)"


def label_card(view: LabelView, files: dict[str, str], size: tuple[int, int], *, threshold: float | None,
               suggested: float | None, sam_state: str, methods: tuple[str, ...] = ("clip", "surgery"),
               points_from: str = "surgery") -> str:
    """One label's card: each method's map in the table's order, the points, the mask, the histogram of
    the map the points come from. `files` maps overlay file names to served paths; `sam_state` is "on",
    "pending" (SAM still encoding) or "off"."""
    sam_name = f"sam_{label_slug(view.text)}.png"
    status = "found" if view.found else "not found"
    presence = f"presence {view.maps.presence:.2f}"
    if not view.found:
        mask = _picture(None, "not found at this threshold: no points, no mask", "", size)
    elif sam_state == "pending":
        mask = _picture(None, "computing masks…", "", size)
    elif sam_state == "off" or sam_name not in files:
        mask = _picture(None, "SAM is off", "", size)
    else:
        mask = _picture(files[sam_name], _mask_caption(view), f"SAM mask of {view.text}", size)
    pictures = []
    for method in methods:
        title = METHOD_TITLES.get(method, method)
        caption = f"{title} map" + (" · points from here" if method == points_from and len(methods) > 1 else "")
        if method == "clip" and method != points_from:
            caption += " (plain cosine similarity)"
        if method == points_from and not view.found:
            caption += " (nothing reaches the threshold)"
        pictures.append(_picture(files.get(map_overlay_name(method, view.text)), caption, f"{title} map of {view.text}",
                                 size))
    pictures.append(_picture(files.get(f"points_{label_slug(view.text)}.png"),
                             _points_caption(view) if view.found else "no points", f"points for {view.text}", size))
    pictures.append(mask)
    histogram = histogram_svg(view.maps.point_parts, threshold, suggested, view.text,
                              METHOD_TITLES.get(points_from, points_from))
    others = [m for m in methods if m != points_from and m in view.maps.method_parts]
    if others:  # each map's raw values on its own scale; the threshold belongs to the points' map only
        histogram += ('<details class="other-histograms"><summary>Raw values of the other maps</summary>'
                      + "".join(histogram_svg(view.maps.method_parts[m], None, None, view.text,
                                              METHOD_TITLES.get(m, m)) for m in others)
                      + "</details>")
    return (f'<section class="label-card {"found" if view.found else "absent"}" data-label="{_e(view.text)}">'
            f'<h3><span class="label-text">{_e(view.text)}</span>'
            f'<span class="badge {"found" if view.found else "absent"}">{status}</span>'
            f'<span class="meta">{presence}</span></h3>'
            f'<div class="card-body"><div class="card-pictures">{"".join(pictures)}</div>'
            f'<div class="card-histogram">{histogram}</div></div></section>')


def cards_html(explanation: Explanation, files: dict[str, str], *, suggested: float | None, sam_state: str) -> str:
    """Every label's card, in the order the labels were typed."""
    size = (explanation.maps.width, explanation.maps.height)
    options = explanation.maps.options
    cards = [label_card(view, files, size, threshold=explanation.threshold, suggested=suggested, sam_state=sam_state,
                        methods=options.methods, points_from=options.points_from)
             for view in explanation.labels]
    return f'<div class="label-cards">{"".join(cards)}</div>'


def legend_html(threshold: float | None, points_from: str = "surgery") -> str:
    """The colour bar and what the numbers mean."""
    title = METHOD_TITLES.get(points_from, points_from)
    stretch = ("Threshold off: each map is stretched so its weakest patch is blue and its strongest red, so an "
               "absent label still shows its least-bad region."
               if threshold is None else
               f"Threshold {_fmt(threshold)} on the raw {title} values: patches below it are blue (no evidence); "
               "the rest are stretched from the threshold (blue) to the map's strongest patch (red). The other "
               "maps are always stretched.")
    return (f'<div class="colour-bar"><span>weak</span><span class="ramp"></span><span>strong evidence</span>'
            f"<span>{_e(stretch)}</span></div>")


def methods_markdown() -> str:
    """'About the methods': each method with its paper and what it changes."""
    from surgery.clip.methods import METHODS

    return "\n".join(f"- **{m.title}** ({m.citation}): {m.summary}" for m in METHODS.values())


FOOTNOTE = (
    "**Presence**: how much the whole image supports the label compared with the other labels "
    "(softmax of CLIP's image-level similarities; they sum to 1 over the labels, plus 59 background "
    "classes in `vocab` mode). **Points (+/−)**: where the CLIP Surgery map is strongest (+) and weakest (−); "
    "they are the prompts SAM segments from. **Mask score**: SAM's own estimate of its mask's quality "
    "(0 to 1); area is the share of the image the mask covers."
)
