"""One card per label, as HTML: the label's whole story in one place.

A card holds each computed map, the points and the mask (each picture whole, aspect kept, at least
320 px wide on a desktop and the screen's width on a phone; a click opens the large view,
`explorer.large_view`), then the histogram of the label's values on the map the points come from, as
an SVG with its axis values, the threshold and the suggestion drawn and labelled, and a bar's count on
hover or tap. Colours come from the page's theme variables, so the cards follow light and dark mode.
Every text that comes from a person (labels, file names) is escaped: it shows as text.
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

PICTURE_MIN_PX = 320  # a card picture's least width on a desktop (a phone shows one per row, full width)

CSS = f"""
.label-cards {{ display: grid; gap: 16px; }}
.label-card {{ border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 12px;
  background: var(--block-background-fill); color: var(--body-text-color); }}
.label-card h3 {{ margin: 0 0 8px; font-size: 1.1rem; display: flex; flex-wrap: wrap; gap: 8px; align-items: baseline; }}
.label-card .badge {{ font-size: 0.8rem; padding: 1px 8px; border-radius: 999px; font-weight: 600; }}
.label-card .badge.found {{ background: #0b6b3a; color: #ffffff; }}
.label-card .badge.absent {{ background: #5a5a5a; color: #ffffff; }}
.label-card .meta {{ font-size: 0.9rem; color: var(--body-text-color); }}
.card-pictures {{ display: grid; grid-template-columns: repeat(auto-fill, minmax({PICTURE_MIN_PX}px, 1fr)); gap: 10px; }}
.card-pictures figure {{ margin: 0; min-width: 0; }}
.card-pictures button.picture {{ display: block; width: 100%; padding: 0; border: 0; background: none; cursor: zoom-in;
  border-radius: 4px; }}
.card-pictures button.picture:focus-visible {{ outline: 3px solid #0072b2; outline-offset: 2px; }}
.card-pictures img {{ display: block; width: 100%; height: auto; border-radius: 4px; }}
.card-pictures figcaption {{ font-size: 0.9rem; line-height: 1.35; margin-top: 4px; color: var(--body-text-color); }}
.card-pictures .placeholder {{ display: flex; align-items: center; justify-content: center; text-align: center; width: 100%;
  box-sizing: border-box; border: 1px dashed var(--border-color-primary); border-radius: 4px; font-size: 0.9rem;
  padding: 6px; color: var(--body-text-color); }}
.card-histogram {{ display: grid; grid-template-columns: minmax(0, 480px) minmax(0, 1fr); gap: 4px 16px; margin-top: 12px;
  align-items: start; }}
.card-histogram > svg, .card-histogram details svg {{ width: 100%; height: auto; display: block; max-width: 480px; }}
.card-histogram svg {{ color: var(--body-text-color); font-family: var(--font); }}
.card-histogram svg rect.bin {{ cursor: pointer; }}
.card-histogram svg rect.bar.picked {{ stroke: var(--body-text-color); stroke-width: 1.5; }}
.card-histogram .hist-side {{ font-size: 0.9rem; }}
.card-histogram .hist-side p {{ margin: 0 0 6px; }}
.card-histogram .hist-readout {{ min-height: 1.4em; }}
.card-histogram .hist-readout.count {{ font-weight: 700; }}
.card-histogram details {{ font-size: 0.9rem; grid-column: 1 / -1; }}
.hint-touch {{ display: none; }}
.colour-bar {{ display: flex; align-items: center; gap: 8px; font-size: 0.9rem; flex-wrap: wrap; }}
.colour-bar .ramp {{ width: 180px; height: 12px; border-radius: 3px;
  background: linear-gradient(to right, #00007f, #0000ff, #007fff, #00ffff, #7fff7f, #ffff00, #ff7f00, #ff0000, #7f0000); }}
"""
# Gradio scopes the `css` it is given, and inside @media it scopes to its content area only, so
# media rules go into the page's <head> as they are (`explorer.layout.PAGE_HEAD`).
MEDIA_CSS = """
@media (hover: none) { .hint-touch { display: inline !important; } .hint-hover { display: none !important; } }
@media (max-width: 900px) { .card-histogram { grid-template-columns: minmax(0, 1fr) !important; } }
@media (max-width: 700px) {
  .card-pictures { grid-template-columns: minmax(0, 1fr) !important; }
  .label-card { padding: 8px 4px !important; border-radius: 6px !important; }
}
"""


def file_url(path: str | Path) -> str:
    """The URL under which Gradio serves a file of an allowed folder."""
    return "/gradio_api/file=" + quote(str(path))


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _picture(path: str | None, caption: str, alt: str, size: tuple[int, int], kind: str,
             data: dict[str, object] | None = None) -> str:
    """A figure; with a file, its picture is a button that opens the large view (never a new tab)."""
    width, height = size
    attributes = "".join(f' data-{name}="{_e(value)}"' for name, value in {"kind": kind, **(data or {})}.items())
    if path is None:
        return (f'<figure{attributes}><div class="placeholder" style="aspect-ratio: {width} / {height}">{_e(caption)}'
                "</div></figure>")
    url = _e(file_url(path))
    return (f'<figure{attributes}><button class="picture" type="button" aria-label="Open larger: {_e(alt)}">'
            f'<img src="{url}" alt="{_e(alt)}" width="{width}" height="{height}"></button>'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def mask_quality(score: float) -> str:
    return f"SAM's quality estimate {score:.2f}"


def _mask_caption(view: LabelView) -> str:
    mask = view.chosen_mask
    if view.instances:
        return (f"SAM mask · {len(view.instances)} instances · best {mask_quality(view.chosen_score)} · "
                f"{mask.mean():.1%} of the image")
    which = "" if view.choice is None else f" (candidate {view.chosen + 1})"
    return f"SAM mask{which} · {mask_quality(view.chosen_score)} · {mask.mean():.1%} of the image"


def histogram_svg(raw_values: np.ndarray, threshold: float | None, suggested: float | None, label: str,
                  method_title: str = "CLIP Surgery") -> str:
    """The histogram of a label's values of one map as SVG (`surgery.output.histogram`), the threshold
    (solid) and the suggestion (dashed) marked and labelled, each bar's count in its title (shown on
    hover, and by the card's script on a tap). Its text is 13 units in a 360-unit-wide picture: at least
    11 px wherever the picture is shown 305 px wide or more."""
    return draw_histogram_svg(histogram_of(raw_values, threshold=threshold, suggested=suggested),
                              description=f"How strongly each place matches {label} on the {method_title} map: "
                                          "the number of places per value",
                              axis_title=f"match strength ({method_title} map) →", width=360, height=190,
                              font_px=13, bar_titles="{count} places from {start} to {stop}")


def _points_caption(view: LabelView) -> str:
    positives = int((view.points[:, 2] == 1).sum())
    mine = len(view.added)
    yours = f" ({mine} of them yours)" if mine else ""
    return f"Points for SAM: {positives} positive (+), {len(view.points) - positives} negative (−){yours}"


def label_card(view: LabelView, files: dict[str, str], size: tuple[int, int], *, threshold: float | None,
               suggested: float | None, sam_state: str, methods: tuple[str, ...], points_from: str) -> str:
    """One label's card: each method's map in the table's order, the points, the mask, the histogram of
    the map the points come from. `files` maps overlay file names to served paths; `sam_state` is "on",
    "pending" (SAM still encoding) or "off"."""
    sam_name = f"sam_{label_slug(view.text)}.png"
    status = "found" if view.found else "not found"
    presence = f"presence {view.maps.presence:.2f}"
    if not view.found:
        mask = _picture(None, "not found at this threshold: no points, no mask", "", size, "mask")
    elif sam_state == "pending":
        mask = _picture(None, "computing masks…", "", size, "mask")
    elif sam_state == "off" or sam_name not in files:
        mask = _picture(None, "SAM is off", "", size, "mask")
    else:
        mask = _picture(files[sam_name], _mask_caption(view), f"SAM mask of {view.text}", size, "mask")
    pictures = []
    for method in methods:
        title = method_title(method)
        caption = f"{title} map" + (" · points and threshold from here" if method == points_from and len(methods) > 1
                                    else "")
        if method == "clip" and method != points_from:
            caption += " (CLIP as trained)"
        if method == points_from and not view.found:
            caption += " (nothing reaches the threshold)"
        pictures.append(_picture(files.get(map_overlay_name(method, view.text)), caption,
                                 f"{title} map of {view.text}", size, "map", {"method": method}))
    positives = int((view.points[:, 2] == 1).sum())
    points_caption = _points_caption(view) if len(view.points) else "no points: open to add your own"
    pictures.append(_picture(files.get(f"points_{label_slug(view.text)}.png"), points_caption,
                             f"points for {view.text}", size, "points",
                             {"positive": positives, "negative": len(view.points) - positives,
                              "mine": len(view.added)}))
    pictures.append(mask)
    histogram = histogram_svg(view.maps.point_parts, threshold, suggested, view.text, method_title(points_from))
    side = ('<div class="hist-side"><p class="hist-readout" aria-live="polite">'
            '<span class="hint-hover">Point at a bar to see how many places have that value.</span>'
            '<span class="hint-touch">Tap a bar to see how many places have that value.</span></p>'
            f"<p>Places to the right match {_e(view.text)} more strongly. "
            + ("The threshold (solid line) splits match from no match."
               if threshold is not None else "Set a threshold to split match from no match.")
            + (" The dashed line is the suggested threshold." if suggested is not None else "") + "</p></div>")
    others = [m for m in methods if m != points_from]
    if others:  # each map's values on its own scale; the threshold belongs to the points' map only
        side += ('<details class="other-histograms"><summary>Values of the other maps</summary>'
                 + "".join(histogram_svg(view.maps.parts[m], None, None, view.text, method_title(m)) for m in others)
                 + "</details>")
    return (f'<section class="label-card {"found" if view.found else "absent"}" data-label="{_e(view.text)}">'
            f'<h3><span class="label-text">{_e(view.text)}</span>'
            f'<span class="badge {"found" if view.found else "absent"}">{status}</span>'
            f'<span class="meta">{presence}</span></h3>'
            f'<div class="card-pictures">{"".join(pictures)}</div>'
            f'<div class="card-histogram">{histogram}{side}</div></section>')


def cards_html(explanation: Explanation, files: dict[str, str], *, suggested: float | None, sam_state: str) -> str:
    """Every label's card, in the order the labels were typed."""
    size = (explanation.maps.width, explanation.maps.height)
    options = explanation.maps.options
    cards = [label_card(view, files, size, threshold=explanation.threshold, suggested=suggested, sam_state=sam_state,
                        methods=options.methods, points_from=options.points_from)
             for view in explanation.labels]
    return (f'<div class="label-cards" data-width="{size[0]}" data-height="{size[1]}" data-sam="{_e(sam_state)}">'
            f'{"".join(cards)}</div>')


def legend_html(threshold: float | None, points_from: str = "surgery") -> str:
    """The colour bar and what the colours mean."""
    title = method_title(points_from)
    stretch = ("Threshold off: each map runs from its weakest place (blue) to its strongest (red), so even a "
               "label that is not in the image shows its best guess."
               if threshold is None else
               f"Threshold {format_value(threshold)} on the {title} map: places below it are blue (no match); the "
               "rest run from blue at the threshold to red at the map's strongest place. The other maps always "
               "run from their own weakest to strongest place.")
    return (f'<div class="colour-bar"><span>weak</span><span class="ramp"></span><span>strong match</span>'
            f"<span>{_e(stretch)}</span></div>")


def methods_markdown() -> str:
    """'About the methods': each method with its paper and what it changes."""
    return "\n".join(f"- **{m.title}** ({m.citation}): {m.summary}" for m in METHOD_TABLE.values())


HOW_TO_READ = (
    "**How to read a card.** Each map shows how strongly each place in the image matches the label (red: "
    "strong). **Presence** says how much the whole image points to this label rather than to the other "
    "labels (shares that add up to 1). The **points** are the strongest (+) and weakest (−) places of the "
    "map the points come from; Segment Anything (SAM) draws the **mask** from them. Click any picture to "
    "see it large; in the large view of the points or the mask, a click adds your own point. The mask's "
    "**quality estimate** is SAM's own guess of how good its mask is (its predicted IoU): with trained "
    "weights usually between 0 and 1, and it can be below 0 on untrained weights."
)

GLOSSARY = """\
- **Cosine similarity**: how closely two lists of numbers point the same way (1: the same, 0: unrelated).
  CLIP turns the image's places and the label's text into such lists; a map's raw values are these
  similarities.
- **Raw value / match strength**: a place's similarity to the label on one map, before any stretching.
  The threshold is a raw value of the map the points come from.
- **Patch / place**: CLIP cuts the image into a grid of small squares (patches); each gets one value.
- **Softmax**: turns scores into shares that add up to 1. Presence is the softmax of CLIP's whole-image
  similarities over your labels (and the vocabulary, below).
- **Redundancy**: what CLIP Surgery subtracts because every label has it (CLIP's habit of matching the
  same background to any word). *vocab*: it is estimated from 59 everyday background words;
  *labels*: from your other labels; *empty*: from an empty text.
- **Vocabulary (vocab)**: those 59 background words, from the CLIP Surgery reference demo.
- **Otsu's threshold** (Suggest threshold): the value that best splits the image's values into two groups.
- **IoU (intersection over union)**: the pixels two regions share, divided by the pixels in either; 1 is a
  perfect match, 0 no overlap. SAM's **quality estimate** is its own prediction of this number for its mask.
"""
