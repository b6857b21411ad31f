"""What the page shows of a render: the overview of all masks, one card per label, the summary
table, the mask chooser's choices, and the files the page is handed."""

from __future__ import annotations

import html
import re

import numpy as np

from surgery.errors import InputError
from surgery.method.scoring import STRETCHED_CUT
from surgery.method.table import method_title
from surgery.method.views import Explanation
from surgery.output.files import label_slug, mask_layers, overlay_names
from surgery.output.histogram import format_value

from .session import SessionState

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>:])")


def markdown_text(text: str) -> str:
    """Text a person typed, shown literally inside Markdown: HTML escaped, Markdown's syntax escaped (':' too,
    so that a typed URL is not made a link by the page's autolinking, which would also show the escapes)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False))


def shown_files(explanation: Explanation, with_masks: bool) -> list[str]:
    """The overlay files the cards show (the rest are only in the zip)."""
    names = []
    for view in explanation.labels:
        names.extend(overlay_names(view.text, explanation.maps.options.methods))
        if with_masks and view.chosen_mask is not None:
            names.append(f"sam_{label_slug(view.text)}.png")
    return names


def annotated_masks(state: SessionState, explanation: Explanation) -> tuple[np.ndarray, list]:
    """The image with one (mask, name) layer per label or instance, for gr.AnnotatedImage."""
    names, masks = mask_layers(explanation)
    return state.image_rgb, [(mask.astype(np.float32), name) for name, mask in zip(names, masks) if mask is not None]


def found_labels(explanation: Explanation) -> list[str]:
    """Labels with a mask to choose a candidate for."""
    return [view.text for view in explanation.labels if view.mask is not None]


def candidate_choices(explanation: Explanation | None, label: str | None) -> list[tuple[str, str]]:
    """The SAM candidates of `label` as radio choices: "best", then "2 · 0.91 · 12 %" per candidate."""
    view = next((v for v in (explanation.labels if explanation else ()) if v.text == label), None)
    if view is None or view.mask is None:
        return [("best", "best")]
    choices = [(f"best ({view.mask.best + 1})", "best")]
    for index, (candidate, score) in enumerate(zip(view.mask.candidates, view.mask.scores)):
        choices.append((f"{index + 1} · {float(score):.2f} · {candidate.mean():.0%}", str(index + 1)))
    return choices


def headline_markdown(state: SessionState, explanation: Explanation, sam_pending: bool = False) -> str:
    """What was found, with which settings, and any notes (shown above the cards)."""
    found = [markdown_text(v.text) for v in explanation.labels if v.found]
    missing = [markdown_text(v.text) for v in explanation.labels if not v.found]
    threshold = "off" if explanation.threshold is None else f"{explanation.threshold:g}"
    lines = [
        f"**Found:** {', '.join(found) or 'none'}  \n**Not found:** {', '.join(missing) or 'none'}  \n"
        f"Threshold {threshold} · {markdown_text(state.model_name)} at {state.maps.options.resolution} px · "
        f"redundancy `{state.maps.options.redundancy}` · SAM {markdown_text(state.sam_name or 'off')}"
        + ("  \n*Computing masks… the heatmaps are ready; the threshold can be moved meanwhile.*"
           if sam_pending else "")
    ]
    if state.notes:
        lines += ["", *(f"> Note: {markdown_text(note)}" for note in state.notes)]
    return "\n".join(lines)


def details_markdown(state: SessionState, explanation: Explanation, sam_pending: bool = False) -> str:
    """The per-label table and the time per stage (the page's collapsed "Details")."""
    lines = [
        "| label | found | presence | points (+/−) | mask area | mask score |",
        "|---|---|---|---|---|---|",
    ]
    for view in explanation.labels:
        positives = int((view.points[:, 2] == 1).sum())
        area = score = "—"
        mask = view.chosen_mask
        if mask is not None:
            area = f"{int(mask.sum()):,} px ({mask.mean():.1%})"
            score = f"{view.chosen_score:.3f}"
            if view.instances:
                score += f" ({len(view.instances)} instances)"
            elif view.choice is not None:
                score += f" (candidate {view.chosen + 1})"
        elif view.found and sam_pending:
            area = score = "computing…"
        lines.append(f"| {markdown_text(view.text)} | {'yes' if view.found else 'no'} | {view.maps.presence:.2f} | "
                     f"{positives}/{len(view.points) - positives} | {area} | {score} |")
    stages = ", ".join(f"{name.replace('_', ' ')} {seconds * 1000:.0f} ms"
                       for name, seconds in explanation.timings.items())
    return "\n".join(lines + ["", f"Time per stage: {stages}"])


def summary_markdown(state: SessionState, explanation: Explanation, sam_pending: bool = False) -> str:
    """Headline and details together (what the API returns as its summary)."""
    return headline_markdown(state, explanation, sam_pending) + "\n\n" + details_markdown(state, explanation, sam_pending)


def painted_mask(editor_value: object) -> np.ndarray:
    """The pixels painted in the image editor, on any of its layers (alpha above 0), as bool (H, W); an
    `InputError` when nothing is painted."""
    layers = editor_value.get("layers") if isinstance(editor_value, dict) else None
    painted = None
    for layer in layers or ():
        array = np.asarray(layer)
        if array.ndim == 3 and array.shape[2] == 4:
            alpha = array[:, :, 3] > 0
            painted = alpha if painted is None else painted | alpha
    if painted is None or not painted.any():
        raise InputError("Paint over the label's pixels on the picture first (the brush), then press Score.")
    return painted


def scores_html(record: dict | None) -> str:
    """The IoU of each map's region and of the SAM mask with a person's mask (result.json's `truth`), as a table."""
    if record is None:
        return ""
    e = html.escape
    rows = []
    for method, score in record["maps"].items():
        rule = (f"where it reaches the threshold {format_value(score['cut'])}" if score["region"] == "threshold"
                else f"the upper half of its own range (stretched value ≥ {format_value(STRETCHED_CUT)})")
        rows.append((f"{method_title(method)} map", rule, score))
    sam = record["sam_mask"]
    if sam is not None:
        rows.append(("SAM mask", "the mask shown in the card" if sam["area"] else "no mask (not found)", sam))
    body = "".join(f"<tr><th scope=\"row\">{e(name)}</th><td class=\"iou\">{score['iou']:.3f}</td>"
                   f"<td>{score['intersection']:,} / {score['union']:,}</td><td>{e(rule)}</td></tr>"
                   for name, rule, score in rows)
    return (f'<div class="truth-scores" data-label="{e(record["label"], quote=True)}">'
            f"<p>Your mask of <b>{e(record['label'])}</b>: {record['area']:,} pixels. IoU = pixels shared ÷ pixels in "
            "either (1: a perfect match, 0: no overlap).</p>"
            "<table><thead><tr><th>Region</th><th>IoU</th><th>shared / either (pixels)</th><th>The region is</th>"
            f"</tr></thead><tbody>{body}</tbody></table></div>")
