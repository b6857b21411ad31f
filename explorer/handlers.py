"""The app's event handlers as one class, constructed with the model store.

Each handler is a plain method: it takes what the page (or the API) sends and
returns what the page shows, so tests and benchmarks call them directly, without
a server. `UserError`s become messages in the page; anything else is logged
with its traceback and shown as a generic message.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Callable

import gradio as gr

from surgery.errors import InputError, UserError
from surgery.method.feature_surgery import REDUNDANCY_MODES
from surgery.method.labels import parse_labels
from surgery.method.results import MapOptions
from surgery.method.threshold import check_threshold
from surgery.method.views import Explanation, PointOptions, apply_threshold

from . import page, served_files
from . import session as S
from .inputs import check_resolution_choice, image_array, image_file_name
from .model_store import ModelStore

log = logging.getLogger("app")

GENERIC_ERROR = "Something went wrong on the server while handling this request; please try again."


def _as_page_error(exc: Exception) -> gr.Error:
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, UserError):
        return gr.Error(str(exc))
    log.exception("request failed")
    return gr.Error(GENERIC_ERROR)


def user_errors(handler):
    """Show `UserError` messages in the page; log anything else and show a safe message."""
    if handler.__code__.co_flags & 0x20:  # a generator: errors may come after the first yield
        @functools.wraps(handler)
        def generator(*args, **kwargs):
            try:
                yield from handler(*args, **kwargs)
            except Exception as exc:
                raise _as_page_error(exc) from None
        return generator

    @functools.wraps(handler)
    def plain(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except Exception as exc:
            raise _as_page_error(exc) from None
    return plain


def _progress_messages(progress) -> Callable[[str], None]:
    return lambda message: progress(None, desc=message)


class Handlers:
    """What each page event does. `output_dir` receives the files the page is handed (swept)."""

    RESULT_COUNT = 7  # heatmaps, points, masks, histograms, summary, zip, result.json

    def __init__(self, store: ModelStore, output_dir: Path) -> None:
        self.store = store
        self.output_dir = Path(output_dir)

    # --- helpers --------------------------------------------------------------------
    def _segmenter(self, state: S.SessionState):
        return None if state.sam_key is None else self.store.sam(*state.sam_key)

    def _rendered(self, state: S.SessionState, explanation: Explanation, sam_pending: bool = False) -> tuple:
        """The seven result outputs (heatmaps, points, masks, histograms, summary, zip, result.json)."""
        masks = page.annotated_masks(state, explanation) if state.sam_key is not None and not sam_pending else None
        images, zip_path, json_path = served_files.write_render(
            self.output_dir, S.page_files(state, explanation, sam_pending), page.shown_files(explanation),
            downloads=not sam_pending)
        return (page.heatmap_gallery(explanation, images), page.points_gallery(explanation, images), masks,
                page.histogram_gallery(state, explanation), page.summary_markdown(state, explanation, sam_pending),
                zip_path, json_path)

    def _rerender(self, state: S.SessionState | None, threshold, **changes) -> tuple:
        if state is None:
            return (gr.update(),) * self.RESULT_COUNT
        value = check_threshold(threshold)
        segmenter = self._segmenter(state)
        return S.render_locked(state, value, segmenter,
                               lambda explanation: self._rendered(state, explanation, S.masks_pending(state)),
                               **changes)

    @staticmethod
    def slider_update(state: S.SessionState):
        top = max(float(lm.surgery_parts.max()) for lm in state.maps.labels)
        return gr.update(maximum=max(0.05, round(top * 1.2 + 0.005, 2)))

    # --- events -----------------------------------------------------------------------
    @user_errors
    def pre_encode(self, image, backbone, resolution, sam_choice, precision) -> None:
        """On upload: run both image encoders now, so Run pays only for text and decoding."""
        if image is None:
            return
        rgb = image_array(image).rgb
        explainer = self.store.clip(backbone)
        size, _ = check_resolution_choice(resolution, explainer.patch_size)
        explainer.image_tokens(rgb, size, precision=precision)
        segmenter = self.store.sam(sam_choice, precision)
        if segmenter is not None:
            segmenter.embed(rgb)
        self.store.idle_trim.job_done()

    @user_errors
    def run(self, image, labels_text, threshold, backbone, resolution, redundancy, sam_choice, precision,
            instances=False, positive_only=False, progress=gr.Progress()):
        """Run: heatmaps first (yielded while SAM works), then the masks."""
        working = image_array(image)
        rgb = working.rgb
        parsed = parse_labels(labels_text)
        threshold_value = check_threshold(threshold)
        if redundancy not in REDUNDANCY_MODES:
            raise InputError(f"Redundancy must be one of {', '.join(REDUNDANCY_MODES)}.")
        sam_key = self.store.sam_key(sam_choice, precision)
        progress(0.05, desc="Loading CLIP…")
        explainer = self.store.clip(backbone, progress=_progress_messages(progress))
        size, note = check_resolution_choice(resolution, explainer.patch_size)
        progress(0.2, desc="CLIP and CLIP Surgery maps…")
        maps = explainer.compute_maps(rgb, parsed.labels,
                                      MapOptions(resolution=size, redundancy=redundancy, precision=precision))
        segmenter = None if sam_key is None else self.store.sam(*sam_key, progress=_progress_messages(progress))
        state = S.SessionState(
            rgb, maps, explainer.name, None if segmenter is None else segmenter.name, sam_key, None,
            tuple(parsed.notes) + tuple(n for n in (working.note, note) if n),
            point_options=PointOptions(bool(instances), bool(positive_only)), image_name=image_file_name(image),
            source_size=working.source_size, threshold=threshold_value)
        first = apply_threshold(maps, threshold_value, state.point_options)
        pick = gr.update(choices=[label.text for label in parsed.labels], value=None)
        embedding = None
        if segmenter is not None:  # heatmaps now, masks when SAM is done
            yield (*self._rendered(state, first, sam_pending=True), state, self.slider_update(state), pick)
            progress(0.6, desc="SAM image embedding…")
            started = time.perf_counter()
            embedding = segmenter.embed(rgb)
            first.timings["sam_image"] = time.perf_counter() - started
            progress(0.9, desc="SAM masks…")
        final = S.finish_run(state, embedding, first, segmenter, lambda explanation: self._rendered(state, explanation))
        yield (*final, state, self.slider_update(state), pick)
        self.store.idle_trim.job_done()

    @user_errors
    def rethreshold(self, state, threshold) -> tuple:
        return self._rerender(state, threshold)

    @user_errors
    def change_points(self, state, threshold, instances, positive_only) -> tuple:
        return self._rerender(state, threshold, point_options=PointOptions(bool(instances), bool(positive_only)))

    @user_errors
    def choose_mask(self, state, threshold, label, candidate) -> tuple:
        """Show another of SAM's three candidates for one label: no model call."""
        if state is None or not label:
            return (gr.update(),) * self.RESULT_COUNT
        index = None if candidate in (None, "best") else int(candidate) - 1
        return self._rerender(state, threshold, mask_choice=(label, index))

    def shown_candidate(self, state, label):
        choice = None if state is None else state.mask_choices.get(label)
        return gr.update(value="best" if choice is None else str(choice + 1))

    @user_errors
    def suggest(self, state):
        if state is None:
            raise UserError("Run first: the suggestion is computed from the current image's maps.")
        value = S.suggest_threshold(state)
        if value is None:
            raise UserError("The maps are flat; there is no threshold to suggest.")
        return gr.update(value=round(max(value, 0.001), 3))

    def status(self):
        text, ready = self.store.status()
        return text, gr.Timer(active=not ready)
