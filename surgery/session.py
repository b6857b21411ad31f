"""One person's work in the app, as plain data and functions (no Gradio here).

A `SessionState` keeps what a threshold move needs: the raw maps, the SAM
image embedding and the masks already decoded per (label, points). Moving the
threshold then runs no image encoder, and the SAM decoder only for labels whose
points changed.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np

from . import render
from .engine import MapOptions, MapsResult
from .errors import InputError
from .explain import Explanation, PointOptions, apply_threshold, decode_masks, with_choices
from .image_encoder import MAX_RESOLUTION, MIN_RESOLUTION
from .labels import ParsedLabels
from .maps import otsu_threshold
from .masks import MaskPrediction
from .outputs import PngMemo, mask_layers, output_files, overlay_pngs, result_json

THRESHOLD_LIMIT = 10.0
# Decoded masks kept per session, bit-packed (SAM's 3 candidates at 1024×1024: 384 KB): room for
# ~40 such decodes, so a render with 16 labels and a few slider positions stay decoded, while a
# slider swept across many positions cannot grow one session without bound.
MASK_CACHE_BYTES = 16 << 20


class MaskCache:
    """SAM decodes by prompt points, least recently used dropped first past `max_bytes`.

    Candidates are stored bit-packed (8× smaller than numpy booleans) and unpacked on a hit.
    """

    def __init__(self, max_bytes: int = MASK_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[bytes, tuple[np.ndarray, tuple[int, ...], MaskPrediction]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._held_bytes()

    def _held_bytes(self) -> int:  # callers hold self._lock
        return sum(bits.nbytes for bits, _, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: bytes) -> MaskPrediction | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
        bits, shape, meta = item
        candidates = np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)
        return replace(meta, candidates=candidates)

    def put(self, key: bytes, mask: MaskPrediction) -> None:
        bits = np.packbits(mask.candidates)
        meta = replace(mask, candidates=np.empty((0,), dtype=bool))  # scores and best only
        with self._lock:
            self._items.pop(key, None)
            held = self._held_bytes()
            while self._items and held + bits.nbytes > self.max_bytes:
                _, (dropped, _, _) = self._items.popitem(last=False)
                held -= dropped.nbytes
            self._items[key] = (bits, mask.candidates.shape, meta)


@dataclass
class SessionState:
    image_rgb: np.ndarray
    maps: MapsResult
    model_name: str
    sam_name: str | None
    segmenter: object | None
    embedding: object | None
    notes: tuple[str, ...]
    point_options: PointOptions = PointOptions()
    mask_cache: MaskCache = field(default_factory=MaskCache, repr=False, compare=False)
    mask_choices: dict[str, int] = field(default_factory=dict)
    suggested_threshold: float | None = None
    image_name: str = "image.png"
    source_size: tuple[int, int] | None = None  # (height, width) of the decoded upload; image_rgb may be scaled
    threshold: float | None = None  # the last one rendered (a Run's masks follow a move made meanwhile)
    png_memo: PngMemo = field(default_factory=lambda: PngMemo(16 << 20), repr=False, compare=False)
    # Re-render events of one session run one at a time, so the last one triggered renders last
    # with every option it changed (they share a concurrency group across sessions).
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)


def check_threshold(threshold) -> float | None:
    """None (off) or a finite float; 0 and below mean off, as on the slider."""
    if threshold is None or threshold == "":
        return None
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise InputError("Threshold must be a number (0 turns it off).") from None
    if not math.isfinite(value) or abs(value) > THRESHOLD_LIMIT:
        raise InputError(f"Threshold must be a finite number between 0 and {THRESHOLD_LIMIT:g} (0 turns it off).")
    return value if value > 0 else None


def check_resolution_choice(resolution, patch_size: int) -> tuple[int, str | None]:
    """Snap a requested resolution to the nearest usable multiple of the patch size."""
    try:
        requested = int(float(resolution))
    except (TypeError, ValueError, OverflowError):
        raise InputError("Resolution must be a whole number of pixels, e.g. 512.") from None
    if not MIN_RESOLUTION <= requested <= MAX_RESOLUTION:
        raise InputError(f"Resolution must be between {MIN_RESOLUTION} and {MAX_RESOLUTION} pixels.")
    snapped = round(requested / patch_size) * patch_size  # nearest multiple, then a step inwards if outside
    while snapped < MIN_RESOLUTION:
        snapped += patch_size
    while snapped > MAX_RESOLUTION:
        snapped -= patch_size
    note = None if snapped == requested else (
        f"Resolution {requested} is not a multiple of this backbone's patch size {patch_size}; used {snapped}.")
    return snapped, note


def masks_for(state: SessionState, explanation: Explanation) -> Explanation:
    """Decode masks for found labels, reusing earlier decodes of identical points."""
    if state.segmenter is None or state.embedding is None:
        return explanation

    def predict(points: np.ndarray):
        key = points.tobytes()
        mask = state.mask_cache.get(key)
        if mask is None:
            mask = state.segmenter.predict(state.embedding, points)
            state.mask_cache.put(key, mask)
        return mask

    return with_choices(decode_masks(explanation, predict), state.mask_choices)


def masks_pending(state: SessionState) -> bool:
    """SAM is on but this state's image embedding is still being computed (by its Run)."""
    return state.segmenter is not None and state.embedding is None


def rerender(state: SessionState, threshold: float | None) -> Explanation:
    """A threshold move (or option change): no image encoder, decoder only for new points."""
    state.threshold = threshold
    return masks_for(state, apply_threshold(state.maps, threshold, state.point_options))


def suggest_threshold(state: SessionState) -> float | None:
    """Otsu's threshold over all labels' raw CLIP Surgery values of this image."""
    values = np.concatenate([lm.surgery_parts.reshape(-1) for lm in state.maps.labels])
    state.suggested_threshold = otsu_threshold(values)
    return state.suggested_threshold


# --- what the page shows ---------------------------------------------------------

def page_files(state: SessionState, explanation: Explanation, sam_pending: bool = False) -> dict[str, bytes]:
    """The files one render of the page needs: the overlay PNGs the galleries show (`outputs`' names)
    and, once SAM is done or off, every download file. Each image is drawn and encoded once, for
    both the page and the zip."""
    if sam_pending:
        files = overlay_pngs(state.image_rgb, explanation, with_masks=False, memo=state.png_memo)
    else:
        files = result_and_files(state, explanation)[1]
    state.png_memo.next_render()
    return files


def _gallery_names(text: str) -> tuple[str, str, str]:
    """The `page_files` names of a label's CLIP, CLIP Surgery and points overlays."""
    slug = render.label_slug(text)
    return f"clip_{slug}.png", f"surgery_{slug}.png", f"points_{slug}.png"


def shown_files(explanation: Explanation) -> list[str]:
    """The `page_files` the galleries show (the rest are only in the zip)."""
    return [name for view in explanation.labels for name in _gallery_names(view.text)]


def heatmap_gallery(explanation: Explanation, image_files: dict[str, str]) -> list[tuple[str, str]]:
    """(file, caption) pairs: CLIP and CLIP Surgery overlay per label; `image_files` maps the
    `page_files` names to where they were written."""
    items = []
    for view in explanation.labels:
        clip_name, surgery_name, _ = _gallery_names(view.text)
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
        items.append((image_files[_gallery_names(view.text)[2]], caption))
    return items


def annotated_masks(state: SessionState, explanation: Explanation) -> tuple[np.ndarray, list]:
    names, masks = mask_layers(explanation)
    return state.image_rgb, [(mask.astype(np.float32), name) for name, mask in zip(names, masks) if mask is not None]


def histogram_gallery(state: SessionState, explanation: Explanation) -> list[tuple[np.ndarray, str]]:
    return [
        (render.histogram_image(view.maps.surgery_parts, explanation.threshold, suggested=state.suggested_threshold,
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


def result_and_files(state: SessionState, explanation: Explanation) -> tuple[dict, dict[str, bytes]]:
    result = result_json(explanation, model=state.model_name, sam_model=state.sam_name, notes=state.notes,
                         source_size=state.source_size)
    files = output_files(state.image_rgb, explanation, result, with_masks=state.segmenter is not None,
                         coco_file_name=state.image_name if state.segmenter is not None else None,
                         memo=state.png_memo)
    return result, files
