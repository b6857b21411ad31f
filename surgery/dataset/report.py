"""report.html: a calibration run's summary as one self-contained page that opens offline.

Pooled histograms (inline SVG) with the suggested threshold marked, found rates per label, and a
contact sheet: one row (`tr.image-row`) per image of the folder, per label its overlay of each computed
map and its SAM mask as inline JPEG thumbnails (data: URIs). A label not found at the suggested
threshold is marked (`td.not-found`, red, "not found"); an image that failed gets its row with the reason
(`data-status="failed"`). Labels, file names and reasons are untrusted text and are always escaped.
"""

from __future__ import annotations

import base64
import io
import json
from html import escape
from pathlib import Path

from PIL import Image

from ..method.table import method_title
from ..output.files import label_slug, map_overlay_name
from ..output.histogram import format_value, histogram_of, histogram_svg

THUMB_SIDE = 120
MAX_ROWS = 1000  # beyond this the page would weigh hundreds of MB; summary.json lists every image

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.hist { display: inline-block; margin: 0 1.5em 1em 0; vertical-align: top; }
.hist svg { background: #fff; border: 1px solid #ccc; color: #333; width: 380px; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: 4px; vertical-align: top; }
th.file { text-align: left; max-width: 14em; word-break: break-all; font-weight: normal; }
td.label-cell figure { display: inline-block; margin: 0 2px; text-align: center; }
td.label-cell figcaption { font-size: 10px; color: #555; }
td.label-cell img { display: block; width: 120px; height: auto; }
td.not-found { background: #fde8e8; outline: 3px solid #c62828; outline-offset: -3px; }
.badge { display: inline-block; background: #c62828; color: #fff; border-radius: 3px; padding: 0 5px; font-size: 11px; }
tr[data-status="failed"] th, tr[data-status="failed"] td { background: #f3f3f3; color: #8b0000; }
.empty-thumb { width: 120px; height: 60px; display: flex; align-items: center; justify-content: center;
               color: #888; border: 1px dashed #ccc; font-size: 11px; }
.note { color: #8b4500; }
.scroll { overflow-x: auto; max-width: 100%; }  /* a wide sheet scrolls by itself, never the page */
pre { white-space: pre-wrap; word-break: break-all; }
@media (max-width: 700px) { body { margin: 0.6em; } .hist svg { max-width: 100%; height: auto; } }
"""


def thumbnail_uri(path: Path, side: int = THUMB_SIDE) -> str | None:
    """A PNG file as a small inline JPEG (data: URI), or None when the file is absent or unreadable."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((side, side), Image.Resampling.BILINEAR)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(uri: str | None, caption: str) -> str:
    picture = (f'<img src="{uri}" alt="{escape(caption)}">' if uri
               else f'<div class="empty-thumb">no {escape(caption.lower())}</div>')
    return f"<figure>{picture}<figcaption>{escape(caption)}</figcaption></figure>"


def _label_cell(directory: Path, label: str, found: bool, methods: list[str]) -> str:
    figures = [_figure(thumbnail_uri(directory / map_overlay_name(method, label)), method_title(method))
               for method in methods]
    figures.append(_figure(thumbnail_uri(directory / f"sam_{label_slug(label)}.png"), "Mask"))
    badge = "" if found else '<span class="badge">not found</span>'
    state = "found" if found else "not-found"
    return (f'<td class="label-cell {state}" data-label="{escape(label)}">{badge}{"".join(figures)}</td>')


def contact_sheet_rows(summary: dict, out: Path, max_rows: int = MAX_ROWS) -> list[str]:
    """One `<tr class="image-row">` per image (explained or failed), in file-name order, at most `max_rows`."""
    labels = [record["label"] for record in summary["labels"]]
    rows = [(entry["file"], "ok", entry) for entry in summary["results"]]
    rows += [(entry["file"], "failed", entry) for entry in summary["failed"]]
    rows.sort(key=lambda row: row[0])
    html = []
    for file, status, entry in rows[:max_rows]:
        if status == "failed":
            html.append(f'<tr class="image-row" data-status="failed" data-file="{escape(file)}">'
                        f'<th class="file">{escape(file)}</th><td class="failed-reason" colspan="{len(labels)}">'
                        f'failed: {escape(entry["reason"])}</td></tr>')
            continue
        missing = not all(entry["found"])
        cells = "".join(_label_cell(out / entry["folder"], label, found, summary["options"]["methods"])
                        for label, found in zip(labels, entry["found"]))
        html.append(f'<tr class="image-row" data-status="{"missing" if missing else "found"}" '
                    f'data-file="{escape(file)}"><th class="file">{escape(file)}</th>{cells}</tr>')
    return html


def report_html(summary: dict, out: Path, max_rows: int = MAX_ROWS) -> str:
    """The whole page for `summary` (summary.json's content), thumbnails read from the image folders under
    `out`. Makes no external request: no scripts, styles or images from elsewhere."""
    suggested = summary["suggested_threshold"]
    threshold = summary["options"].get("threshold")
    labels = summary["labels"]
    title = "CLIP Surgery calibration report"
    head = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
            f'style-src \'unsafe-inline\'"><style>{CSS}</style></head><body>')
    suggested_text = "none (constant values)" if suggested is None else f"{suggested:.6g}"
    intro = [f"<h1>{title}</h1>",
             f'<p><strong>Suggested threshold: <span id="suggested">{escape(suggested_text)}</span></strong> '
             f"(Otsu over the pooled raw {escape(summary['points_from'])} values of every label and image, as the "
             "app's \"Suggest threshold\" does for one image). Type it into the app's threshold, or pass "
             "<code>--threshold</code> to <code>python -m surgery explain</code>.</p>",
             f"<p>{summary['images']} images, {summary['explained']} explained, {len(summary['failed'])} failed. "
             f"Options hash <code>{escape(summary['options']['options_hash'])}</code>.</p>"]
    if summary.get("suggested_threshold_note"):
        intro.append(f'<p class="note">{escape(summary["suggested_threshold_note"])}</p>')
    rates = ["<h2>Found at the suggested threshold</h2><table><tr><th>label</th><th>found</th><th>rate</th></tr>"]
    for record in labels:
        rate = "–" if record["found_rate"] is None else f"{100 * record['found_rate']:.1f} %"
        rates.append(f'<tr class="rate-row"><td>{escape(record["label"])}</td>'
                     f'<td>{record["found"]} / {summary["explained"]}</td><td>{rate}</td></tr>')
    rates.append("</table>")
    histograms = ["<h2>Pooled raw values per label</h2>"]
    for record in labels:
        pooled = histogram_of(counts=record["histogram"]["counts"], edges=record["histogram"]["edges"],
                              threshold=threshold, suggested=suggested)
        caption = f"{record['label']} · {record['values']} values"
        histograms.append(f'<div class="hist"><div>{escape(caption)}</div>'
                          + histogram_svg(pooled, description=caption, width=380, height=150, font_px=11,
                                          bar_titles="{count} values from {start} to {stop}") + "</div>")
    rows = contact_sheet_rows(summary, out, max_rows)
    total = summary["images"]
    sheet = ["<h2>Contact sheet</h2>",
             "<p>One row per image. Overlays are drawn at the run's own threshold "
             f"({'off' if threshold is None else escape(format_value(threshold))}); the red cells are labels not found at "
             "the suggested threshold.</p>"]
    if total > len(rows):
        sheet.append(f'<p class="note">The first {len(rows)} of {total} images; summary.json lists every image.</p>')
    header = "".join(f"<th>{escape(label['label'])}</th>" for label in labels)
    sheet.append(f'<div class="scroll"><table id="contact-sheet"><thead><tr><th>image</th>{header}</tr></thead>'
                 "<tbody>" + "".join(rows) + "</tbody></table></div>")
    options = escape(json.dumps(summary["options"], indent=1, ensure_ascii=False))
    footer = f"<h2>Options</h2><pre>{options}</pre></body></html>"
    return "".join([head, *intro, *rates, *histograms, *sheet, footer])


def write_report(summary: dict, out: Path) -> Path:
    """Write `out/report.html` and return its path."""
    path = out / "report.html"
    path.write_text(report_html(summary, out), encoding="utf-8")
    return path
