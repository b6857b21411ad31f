"""One person's work in the app, as plain data and functions (no Gradio here).

A `SessionState` keeps what a threshold move needs: the raw maps, the SAM
image embedding and the masks already decoded per (label, points). Moving the
threshold then runs no image encoder, and the SAM decoder only for labels whose
points changed. A session names its SAM model (`sam_key`) and is handed the
model by the caller, who asks the model store: an evicted model is freed, not
kept alive by the sessions that used it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Callable, TypeVar

import numpy as np

from surgery.errors import InputError
from surgery.method.results import MapsResult, MaskPrediction
from surgery.method.scoring import TruthMask
from surgery.method.threshold import otsu_threshold
from surgery.method.options import PointOptions
from surgery.method.views import Explanation, apply_threshold, decode_masks, decode_prompts, with_choices
from surgery.output.files import explanation_files, overlay_pngs
from surgery.output.png import PngMemo
from surgery.sam.segmenter import ImageEmbedding, SamSegmenter

T = TypeVar("T")

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
    model_name: str  # what outputs call the CLIP model
    sam_name: str | None  # what outputs call the SAM model; None: SAM off
    sam_key: tuple[str, str] | None  # (SAM choice, precision) to ask the model store for; None: SAM off
    embedding: ImageEmbedding | None  # None while Run's SAM step is still encoding
    notes: tuple[str, ...]
    point_options: PointOptions = PointOptions()
    mask_cache: MaskCache = field(default_factory=MaskCache, repr=False, compare=False)
    mask_choices: dict[str, int] = field(default_factory=dict)
    suggested_threshold: float | None = None
    image_name: str = "image.png"
    source_size: tuple[int, int] | None = None  # (height, width) of the decoded upload; image_rgb may be scaled
    threshold: float | None = None  # the last one rendered (a Run's masks follow a move made meanwhile)
    png_memo: PngMemo = field(default_factory=lambda: PngMemo(16 << 20), repr=False, compare=False)
    shown: Explanation | None = field(default=None, repr=False, compare=False)  # the last render (mask choices)
    mask_label: str | None = None  # the label the mask chooser shows
    truth: TruthMask | None = None  # a ground-truth mask to score against, at image_rgb's size
    # Re-render events of one session run one at a time, so the last one triggered renders last
    # with every option it changed (they share a concurrency group across sessions).
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)


def masks_for(state: SessionState, explanation: Explanation, segmenter: SamSegmenter | None) -> Explanation:
    """Decode masks for found labels with `segmenter` (the model `state.sam_key` names), reusing
    earlier decodes of identical points. A segmenter loaded again after an eviction encodes the
    image again, once."""
    if segmenter is None or state.embedding is None:
        return explanation
    if not state.embedding.key.startswith(segmenter.model_id + ":"):
        state.embedding = segmenter.embed(state.image_rgb)
        state.mask_cache = MaskCache(state.mask_cache.max_bytes)

    # Every prompt not decoded before, in one call (one GPU task on ZeroGPU, not one per label).
    missing = list({p.tobytes(): p for p in decode_prompts(explanation) if state.mask_cache.get(p.tobytes()) is None}
                   .values())
    for points, mask in zip(missing, segmenter.predict_many(state.embedding, missing)):
        state.mask_cache.put(points.tobytes(), mask)

    def predict(points: np.ndarray) -> MaskPrediction:
        key = points.tobytes()
        mask = state.mask_cache.get(key)
        if mask is None:
            mask = segmenter.predict(state.embedding, points)
            state.mask_cache.put(key, mask)
        return mask

    return with_choices(decode_masks(explanation, predict), state.mask_choices)


def masks_pending(state: SessionState) -> bool:
    """SAM is on but this state's image embedding is still being computed (by its Run)."""
    return state.sam_key is not None and state.embedding is None


def rerender(state: SessionState, threshold: float | None, segmenter: SamSegmenter | None) -> Explanation:
    """A threshold move (or option change): no image encoder, decoder only for new points."""
    state.threshold = threshold
    return masks_for(state, apply_threshold(state.maps, threshold, state.point_options), segmenter)


def suggest_threshold(state: SessionState) -> float | None:
    """Otsu's threshold over all labels' raw values of the map the points come from."""
    values = np.concatenate([lm.point_parts.reshape(-1) for lm in state.maps.labels])
    state.suggested_threshold = otsu_threshold(values)
    return state.suggested_threshold


def result_and_files(state: SessionState, explanation: Explanation,
                     with_files: bool = True) -> tuple[dict, dict[str, bytes]]:
    """result.json's content and every download file of this render (none without `with_files`)."""
    return explanation_files(state.image_rgb, explanation, model=state.model_name, sam_model=state.sam_name,
                             notes=state.notes, source_size=state.source_size,
                             coco_file_name=state.image_name if state.sam_name else None, memo=state.png_memo,
                             truth=state.truth, with_files=with_files)


def page_files(state: SessionState, explanation: Explanation, sam_pending: bool = False) -> dict[str, bytes]:
    """The files one render of the page needs: the overlay PNGs the galleries show and, once SAM is
    done or off, every download file. Each image is drawn and encoded once, for the page and the zip."""
    if sam_pending:
        files = overlay_pngs(state.image_rgb, explanation, with_masks=False, memo=state.png_memo)
    else:
        files = result_and_files(state, explanation)[1]
    state.png_memo.next_render()
    return files


def with_points_from(maps: MapsResult, method: str) -> MapsResult:
    """The same raw maps with the points (and found / not found) taken from another computed method."""
    return replace(maps, options=replace(maps.options, points_from=method),
                   labels=tuple(replace(lm, points_from=method) for lm in maps.labels))


POINT_EDITS = ("positive", "negative", "remove", "reset")


def edited_points(state: SessionState, label: str, x: object, y: object, edit: object) -> PointOptions:
    """The session's point options after one click of a person on `label`'s points at (x, y), working-image
    pixels: `edit` "positive" or "negative" adds a point there, "remove" takes away the label's point
    nearest to it (derived or added), "reset" returns to the derived points. An `InputError` for a label
    not shown, a point off the image or an unknown edit."""
    if edit not in POINT_EDITS:
        raise InputError(f"A click on the points adds a positive or a negative point, removes one, or resets; "
                         f"got {str(edit)[:20]!r}.")
    view = next((v for v in (state.shown.labels if state.shown else ()) if v.text == label), None)
    if view is None:
        raise InputError("That label is not among the results shown; press Run again.")
    options = state.point_options
    if edit == "reset":
        return options.resetting(label)
    height, width = state.image_rgb.shape[:2]
    if isinstance(x, bool) or isinstance(y, bool) or not all(isinstance(v, (int, float)) for v in (x, y)) or not (
            0 <= x < width and 0 <= y < height):
        raise InputError(f"The click lies outside the {width}×{height} image.")
    if edit == "remove":
        if len(view.points) == 0:
            return options
        nearest = view.points[int(np.argmin(np.hypot(view.points[:, 0] - x, view.points[:, 1] - y)))]
        return options.dropping(label, tuple(int(v) for v in nearest))
    return options.adding(label, (int(x), int(y), 1 if edit == "positive" else 0))


def render_locked(state: SessionState, threshold: float | None, segmenter: SamSegmenter | None,
                  draw: Callable[[Explanation], T], *, point_options: PointOptions | None = None,
                  mask_choice: tuple[str, int | None] | None = None, points_from: str | None = None,
                  edit: tuple[str, object, object, object] | None = None,
                  truth: TruthMask | None | bool = False) -> T:
    """Apply a re-render's changes and draw it, one re-render of a session at a time, so the last one
    triggered renders last with every option it changed. `mask_choice` is (label, candidate index or
    None for SAM's best); `points_from` one of the computed methods; `edit` one click on a label's
    points, (label, x, y, edit) as `edited_points` takes them; `truth` a mask to score against (None:
    stop scoring; False: unchanged)."""
    with state.lock:
        if edit is not None:
            state.point_options = edited_points(state, *edit)
            state.mask_choices.pop(edit[0], None)  # the label's new masks are other candidates
        if truth is not False:
            state.truth = truth
        if points_from is not None:
            state.maps = with_points_from(state.maps, points_from)
            state.mask_choices.clear()
            state.suggested_threshold = None  # it was on the other map's scale
        if point_options is not None:
            state.point_options = point_options
        if mask_choice is not None:
            label, index = mask_choice
            if index is None:
                state.mask_choices.pop(label, None)
            else:
                state.mask_choices[label] = index
        return draw(rerender(state, threshold, segmenter))


def finish_run(state: SessionState, embedding: ImageEmbedding | None, first: Explanation,
               segmenter: SamSegmenter | None, draw: Callable[[Explanation], T]) -> T:
    """Install Run's SAM embedding and draw the masks. Re-renders the page made while SAM was encoding
    take turns with this one, and a threshold or option one of them set meanwhile is the one the
    masks are made for."""
    with state.lock:
        state.embedding = embedding
        if (state.threshold, state.point_options) != (first.threshold, first.point_options):
            first = apply_threshold(state.maps, state.threshold, state.point_options)
        return draw(masks_for(state, first, segmenter))
