"""One card per label, as HTML: the label's whole story in one place.

A card holds the CLIP map, the CLIP Surgery map, the points and the mask side by side (each picture
whole, aspect kept, opening larger on click), then the histogram of the label's raw CLIP Surgery
values as an SVG with its axis values, the threshold and the suggestion drawn and labelled, and a
tooltip per bar. Colours come from the page's theme variables, so the cards follow light and dark
mode. Every text that comes from a person (labels, file names) is escaped: it shows as text.
"""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote

import numpy as np

from surgery.method.table import METHOD_TABLE, method_title
from surgery.method.views import Explanation, LabelView
from surgery.output.files import label_slug, map_overlay_name
from surgery.output.histogram import format_value, histogram_of
from surgery.output.histogram import histogram_svg as draw_histogram_svg

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
.card-histogram svg { color: var(--body-text-color); font-family: var(--font); }
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


def histogram_svg(raw_values: np.ndarray, threshold: float | None, suggested: float | None, label: str,
                  method_title: str = "CLIP Surgery") -> str:
    """The histogram of a label's raw values of one map as SVG (`surgery.output.histogram`), the
    threshold (solid) and the suggestion (dashed) marked and labelled, a tooltip per bar."""
    return draw_histogram_svg(histogram_of(raw_values, threshold=threshold, suggested=suggested),
                              description=f"Histogram of raw {method_title} values for {label}",
                              axis_title=f"raw {method_title} value")


def _points_caption(view: LabelView) -> str:
    positives = int((view.points[:, 2] == 1).sum())
    return f"Points for SAM: {positives} positive (+), {len(view.points) - positives} negative (−)"


def label_card(view: LabelView, files: dict[str, str], size: tuple[int, int], *, threshold: float | None,
               suggested: float | None, sam_state: str, methods: tuple[str, ...], points_from: str) -> str:
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
        title = method_title(method)
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
                              method_title(points_from))
    others = [m for m in methods if m != points_from]
    if others:  # each map's raw values on its own scale; the threshold belongs to the points' map only
        histogram += ('<details class="other-histograms"><summary>Raw values of the other maps</summary>'
                      + "".join(histogram_svg(view.maps.parts[m], None, None, view.text,
                                              method_title(m)) for m in others)
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
    title = method_title(points_from)
    stretch = ("Threshold off: each map is stretched so its weakest patch is blue and its strongest red, so an "
               "absent label still shows its least-bad region."
               if threshold is None else
               f"Threshold {format_value(threshold)} on the raw {title} values: patches below it are blue (no evidence); "
               "the rest are stretched from the threshold (blue) to the map's strongest patch (red). The other "
               "maps are always stretched.")
    return (f'<div class="colour-bar"><span>weak</span><span class="ramp"></span><span>strong evidence</span>'
            f"<span>{_e(stretch)}</span></div>")


def methods_markdown() -> str:
    """'About the methods': each method with its paper and what it changes."""
    return "\n".join(f"- **{m.title}** ({m.citation}): {m.summary}" for m in METHOD_TABLE.values())


FOOTNOTE = (
    "**Presence**: how much the whole image supports the label compared with the other labels "
    "(softmax of CLIP's image-level similarities; they sum to 1 over the labels, plus 59 background "
    "classes in `vocab` mode). **Points (+/−)**: where the CLIP Surgery map is strongest (+) and weakest (−); "
    "they are the prompts SAM segments from. **Mask score**: SAM's own estimate of its mask's quality "
    "(0 to 1); area is the share of the image the mask covers."
)
