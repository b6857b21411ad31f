"""report.html: an evaluation as one self-contained page that opens offline and reads on a phone.

A summary table (mIoU, aAcc, mAcc per scored method, and the published number a preset targets),
the IoU table (one row per class, one column per method: `table#iou-table`), one bar chart per
method (inline SVG, the classes that have a union), and per method its worst images (lowest own
mIoU) with the image, the ground truth and the prediction side by side (inline data: URIs, PASCAL
VOC colours). Class names, ids and reasons are untrusted text and are always escaped.
"""

from __future__ import annotations

import base64
import io
import json
from html import escape
from pathlib import Path

import numpy as np
from PIL import Image

from .results import PALETTE, Results, palette_image
from .settings import EvaluationSettings
from .single import read_record

WORST_IMAGES = 3
THUMB_WIDTH = 200

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1100px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; } h3 { font-size: 1em; margin: 1em 0 .3em; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: 3px 6px; text-align: right; }
th.class, td.class { text-align: left; white-space: nowrap; max-width: 12em; overflow: hidden; text-overflow: ellipsis; }
td.none { color: #999; text-align: center; }
.scroll { overflow-x: auto; max-width: 100%; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; }
figure.bars { margin: 0; flex: 0 1 360px; min-width: 0; }
figure.bars svg { width: 100%; height: auto; background: #fff; border: 1px solid #ccc; }
figure.bars text { font-size: 11px; fill: #333; } figure.bars rect { fill: #0072b2; }
.triptych { display: flex; gap: 4px; margin-bottom: .6em; }
.triptych figure { margin: 0; flex: 0 1 200px; min-width: 0; }
.triptych img { max-width: 100%; max-height: 180px; width: auto; height: auto; display: block; }
.triptych figcaption { font-size: 11px; color: #555; word-break: break-all; }
.note { color: #8b4500; } pre { white-space: pre-wrap; word-break: break-all; }
@media (max-width: 700px) { body { margin: .6em; } }
"""


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _data_uri(image: Image.Image, kind: str) -> str:
    buffer = io.BytesIO()
    if kind == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=80)
    else:
        image.save(buffer, format="PNG", optimize=True)
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _thumb_size(height: int, width: int) -> tuple[int, int]:
    scale = min(1.0, THUMB_WIDTH / width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _classes_uri(classes: np.ndarray) -> str:
    size = _thumb_size(*classes.shape)
    return _data_uri(palette_image(classes).convert("RGB").resize(size, Image.Resampling.NEAREST), "png")


def bar_chart_svg(per_class: dict[str, float | None], title: str) -> str:
    """Horizontal bars of IoU (0-100) for the classes that have a value, in class order."""
    rows = [(name, value) for name, value in per_class.items() if value is not None]
    width, label_width, row = 360, 120, 14
    height = 24 + row * max(len(rows), 1)
    bar_span = width - label_width - 46
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(title)}"><text x="4" y="14">{escape(title)}</text>']
    for i, (name, value) in enumerate(rows):
        y = 22 + i * row
        shown = name if len(name) <= 18 else name[:17] + "…"
        parts.append(f'<text x="{label_width - 4}" y="{y + 10}" text-anchor="end">{escape(shown)}</text>'
                     f'<rect class="bar" data-class="{escape(name)}" data-iou="{value:.4f}" x="{label_width}" '
                     f'y="{y + 2}" width="{max(bar_span * value / 100, 0.5):.2f}" height="{row - 4}"/>'
                     f'<text x="{label_width + bar_span * value / 100 + 4:.2f}" y="{y + 10}">{value:.1f}</text>')
    if not rows:
        parts.append('<text x="4" y="34">no class present or predicted</text>')
    parts.append("</svg>")
    return "".join(parts)


def _worst_images(results: Results, name: str, settings: EvaluationSettings, out: Path) -> str:
    from ..images import load_image
    from .datasets import read_label

    scored = [(sample_id, score) for sample_id, score in results.image_scores.get(name, []) if score is not None]
    scored.sort(key=lambda item: (item[1], item[0]))
    html = []
    for sample_id, score in scored[:WORST_IMAGES]:
        try:
            image = load_image(settings.image_path(sample_id))
            label = read_label(settings.label_path(sample_id), settings.reduce_zero_label)
            prediction = read_record(out, sample_id, (name,))["pred"][name]
        except Exception:  # noqa: BLE001 - a file gone since the run: leave the row out
            continue
        size = _thumb_size(*image.shape[:2])
        picture = _data_uri(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR), "jpeg")
        figures = [(picture, f"{sample_id} · image"), (_classes_uri(label), "ground truth"),
                   (_classes_uri(prediction), f"{name} · mIoU {score:.1f}")]
        html.append(f'<div class="triptych" data-id="{escape(sample_id)}">' + "".join(
            f'<figure><img src="{uri}" alt="{escape(caption)}"><figcaption>{escape(caption)}</figcaption></figure>'
            for uri, caption in figures) + "</div>")
    return "".join(html) or '<p class="note">no image with a score</p>'


def report_html(metrics: dict, results: Results, settings: EvaluationSettings, out: Path) -> str:
    """The whole page; makes no external request (no scripts, styles or images from elsewhere)."""
    title = "CLIP Surgery evaluation report"
    names = list(metrics["methods"])
    head = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
            f'style-src \'unsafe-inline\'"><style>{CSS}</style></head><body>')
    protocol = metrics["protocol"]
    intro = [f"<h1>{title}</h1>",
             f"<p>Dataset <strong>{escape(metrics['dataset'])}</strong>: {metrics['images']} images, "
             f"{metrics['evaluated']} evaluated, {len(metrics['failed'])} failed. Short side "
             f"{protocol['resize']['scale'][1]}, windows {protocol['slide_crop'] or 'off (whole image)'}"
             f"{'' if not protocol['slide_crop'] else ' / ' + str(protocol['slide_stride'])}, logit scale "
             f"{protocol['logit_scale']}, probability threshold {protocol['prob_thd']}, area threshold "
             f"{protocol['area_thd'] if protocol['area_thd'] is not None else 'off'}"
             f"{', PAMR ' + str(protocol['pamr_steps']) + ' steps' if protocol['pamr_steps'] else ''}.</p>"]
    preset = metrics.get("preset")
    if preset:
        intro.append(f"<p>Preset <strong>{escape(preset['method'])}</strong>: its published configuration for "
                     f"this dataset, targeting mIoU {_fmt(preset['published_miou'], 1)} "
                     f"({escape(preset['number_source'])}).</p>")
    if metrics.get("note"):
        intro.append(f'<p class="note">{escape(metrics["note"])}</p>')
    published = "<th>published mIoU</th>" if preset else ""
    summary = ['<h2>Summary</h2><div class="scroll"><table id="summary"><tr><th class="class">method</th>'
               f"<th>mIoU</th><th>aAcc</th><th>mAcc</th>{published}</tr>"]
    for name in names:
        record = metrics["methods"][name]
        target = ""
        if preset:
            target = f'<td class="published">{_fmt(preset["published_miou"], 1) if name == preset["method"] else ""}</td>'
        summary.append(f'<tr data-method="{escape(name)}"><td class="class">{escape(name)}</td>'
                       f'<td class="miou">{_fmt(record["mIoU"])}</td><td>{_fmt(record["aAcc"])}</td>'
                       f'<td>{_fmt(record["mAcc"])}</td>{target}</tr>')
    summary.append("</table></div>")
    header = "".join(f'<th data-method="{escape(n)}">{escape(n)}</th>' for n in names)
    table = ['<h2>IoU per class (%)</h2><p>– : the class is neither in the ground truth nor predicted.</p>'
             f'<div class="scroll"><table id="iou-table"><thead><tr><th class="class">class</th>{header}</tr></thead><tbody>']
    for index, cls in enumerate(metrics["classes"]):
        cells = []
        for name in names:
            value = metrics["methods"][name]["per_class"][cls]
            cells.append('<td class="none">–</td>' if value is None else
                         f'<td class="iou" data-method="{escape(name)}" data-value="{value:.6f}">{value:.1f}</td>')
        colour = "#%02x%02x%02x" % tuple(int(v) for v in PALETTE[index])
        table.append(f'<tr class="class-row" data-class="{escape(cls)}"><td class="class">'
                     f'<span style="color:{colour}">■</span> {escape(cls)}</td>{"".join(cells)}</tr>')
    table.append("</tbody></table></div>")
    charts = ['<h2>IoU per class, per method</h2><div class="charts">']
    for name in names:
        record = metrics["methods"][name]
        charts.append(f'<figure class="bars" data-method="{escape(name)}">'
                      + bar_chart_svg(record["per_class"], f"{name} · mIoU {_fmt(record['mIoU'])}") + "</figure>")
    charts.append("</div>")
    worst = ["<h2>Worst images per method</h2><p>Each method's lowest-scoring images (the image's own mIoU over the "
             "classes in its ground truth or prediction): image, ground truth, prediction.</p>"]
    for name in names:
        worst.append(f'<section class="worst" data-method="{escape(name)}"><h3>{escape(name)}</h3>'
                     + _worst_images(results, name, settings, out) + "</section>")
    failed = ""
    if metrics["failed"]:
        items = "".join(f'<li data-id="{escape(f["id"])}">{escape(f["id"])}: {escape(f["reason"])}</li>'
                        for f in metrics["failed"])
        failed = f'<h2>Failed images</h2><ul id="failed">{items}</ul>'
    options = escape(json.dumps({k: metrics[k] for k in ("protocol", "preset", "model", "options_hash")},
                                indent=1, ensure_ascii=False))
    footer = f"<h2>Protocol and options</h2><pre>{options}</pre></body></html>"
    return "".join([head, *intro, *summary, *table, *charts, *worst, failed, footer])


def write_report(metrics: dict, results: Results, settings: EvaluationSettings, out: Path) -> Path:
    path = Path(out) / "report.html"
    path.write_text(report_html(metrics, results, settings, out), encoding="utf-8")
    return path
