"""What the page shows of a render: gallery items, the masks layers, histograms and the summary table."""

from __future__ import annotations

import numpy as np

from surgery.method.views import Explanation
from surgery.output.files import mask_layers, overlay_names
from surgery.output.histogram import histogram_image

from .session import SessionState


def shown_files(explanation: Explanation) -> list[str]:
    """The overlay files the galleries show (the rest are only in the zip)."""
    return [name for view in explanation.labels for name in overlay_names(view.text)]


def heatmap_gallery(explanation: Explanation, image_files: dict[str, str]) -> list[tuple[str, str]]:
    """(file, caption) pairs: CLIP and CLIP Surgery overlay per label; `image_files` maps the
    overlay file names to where they were written."""
    items = []
    for view in explanation.labels:
        clip_name, surgery_name, _ = overlay_names(view.text)
        items.append((image_files[clip_name], f"CLIP · {view.text}"))
        caption = f"CLIP Surgery · {view.text}" + ("" if view.found else " (not found)")
        items.append((image_files[surgery_name], caption))
    return items


def points_gallery(explanation: Explanation, image_files: dict[str, str]) -> list[tuple[str, str]]:
    items = []
    for view in explanation.labels:
        positives = int((view.points[:, 2] == 1).sum())
        negatives = len(view.points) - positives
        caption = (f"{view.text}: {positives} positive, {negatives} negative" if view.found
                   else f"{view.text}: not found")
        items.append((image_files[overlay_names(view.text)[2]], caption))
    return items


def annotated_masks(state: SessionState, explanation: Explanation) -> tuple[np.ndarray, list]:
    """The image with one (mask, name) layer per label or instance, for gr.AnnotatedImage."""
    names, masks = mask_layers(explanation)
    return state.image_rgb, [(mask.astype(np.float32), name) for name, mask in zip(names, masks) if mask is not None]


def histogram_gallery(state: SessionState, explanation: Explanation) -> list[tuple[np.ndarray, str]]:
    return [
        (histogram_image(view.maps.surgery_parts, explanation.threshold, suggested=state.suggested_threshold,
                                title=f"raw CLIP Surgery · {view.text}"), view.text)
        for view in explanation.labels
    ]


def summary_markdown(state: SessionState, explanation: Explanation, sam_pending: bool = False) -> str:
    found = [v.text for v in explanation.labels if v.found]
    missing = [v.text for v in explanation.labels if not v.found]
    threshold = "off" if explanation.threshold is None else f"{explanation.threshold:g}"
    lines = [
        f"**Found:** {', '.join(found) or 'none'}  \n**Not found:** {', '.join(missing) or 'none'}  \n"
        f"Threshold {threshold} · {state.model_name} at {state.maps.options.resolution} px · "
        f"redundancy `{state.maps.options.redundancy}` · SAM {state.sam_name or 'off'}",
        "",
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
        lines.append(f"| {view.text} | {'yes' if view.found else 'no'} | {view.maps.presence:.2f} | "
                     f"{positives}/{len(view.points) - positives} | {area} | {score} |")
    stages = ", ".join(f"{name.replace('_', ' ')} {seconds * 1000:.0f} ms"
                       for name, seconds in explanation.timings.items())
    lines += ["", f"Time per stage: {stages}"]
    if state.notes:
        lines += ["", *(f"> Note: {note}" for note in state.notes)]
    return "\n".join(lines)
