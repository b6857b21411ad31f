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
from surgery.clip.methods import check_methods
from surgery.method.results import METHOD_TITLES, MapOptions
from surgery.method.threshold import check_threshold
from surgery.method.views import Explanation, PointOptions, apply_threshold
from surgery.output.files import label_slug
from surgery.precision import PRECISIONS, check_precision

from . import cards, page, served_files
from . import session as S
from .components import upload_problem
from .gpu import ModelWork
from .inputs import check_resolution_choice, image_array, image_file_name
from .model_store import ModelStore

log = logging.getLogger("app")

GENERIC_ERROR = "Something went wrong on the server while handling this request; please try again."


def _as_page_error(exc: Exception) -> gr.Error:
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, UserError):  # expected: one line in the log, the message in the page
        log.info("refused: %s", exc)
        return gr.Error(str(exc), print_exception=False)
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


def _check_flags(**flags) -> None:
    """The on/off options must be true or false (None: off); Gradio's Checkbox passes anything on."""
    for name, value in flags.items():
        if value is not None and not isinstance(value, bool):
            raise InputError(f"{name} must be true or false.")


def _progress_messages(progress) -> Callable[[str], None]:
    return lambda message: progress(None, desc=message)


class Handlers:
    """What each page event does. `output_dir` receives the files the page is handed (swept)."""

    # What each re-render returns, in this order (Run adds the session state after them).
    PAGE_OUTPUT_NAMES = ("overview", "notice", "headline", "legend", "cards", "details", "zip", "result_json",
                         "mask_labels")
    PAGE_OUTPUTS = len(PAGE_OUTPUT_NAMES)

    def __init__(self, store: ModelStore, output_dir: Path) -> None:
        self.store = store
        self.work = ModelWork(store)  # every model call, as a GPU task where the app runs on ZeroGPU
        self.output_dir = Path(output_dir)

    # --- helpers --------------------------------------------------------------------
    def _segmenter(self, state: S.SessionState):
        return self.work.segmenter(state.sam_key)

    def _precision(self, precision) -> str:
        """The request's precision, or the device's default when it names none; one this device runs."""
        if precision in (None, ""):
            return self.store.config.default_precision()
        if precision not in PRECISIONS:
            raise InputError(f"Precision must be one of {', '.join(PRECISIONS)}.")
        placement = self.store.config.placement()
        return precision if placement is None else check_precision(precision, placement)

    def _write(self, state: S.SessionState, explanation: Explanation, sam_pending: bool):
        """Write this render's shown files (and downloads once SAM is done or off)."""
        with_masks = state.sam_key is not None and not sam_pending
        return served_files.write_render(
            self.output_dir, S.page_files(state, explanation, sam_pending),
            page.shown_files(explanation, with_masks), downloads=not sam_pending)

    def _rendered(self, state: S.SessionState, explanation: Explanation, sam_pending: bool = False) -> tuple:
        """The page's result outputs for one render (`PAGE_OUTPUTS` values)."""
        state.shown = explanation
        images, zip_path, json_path = self._write(state, explanation, sam_pending)
        sam_state = "off" if state.sam_key is None else "pending" if sam_pending else "on"
        masks = page.annotated_masks(state, explanation) if sam_state == "on" else None
        found = page.found_labels(explanation)
        label_value = state.mask_label if state.mask_label in found else None
        return (masks, "",
                page.headline_markdown(state, explanation, sam_pending),
                cards.legend_html(explanation.threshold, explanation.maps.options.points_from),
                cards.cards_html(explanation, images, suggested=state.suggested_threshold, sam_state=sam_state),
                page.details_markdown(state, explanation, sam_pending),
                zip_path, json_path, gr.update(choices=found, value=label_value))

    def _rerender(self, state: S.SessionState | None, threshold, **changes) -> tuple:
        if state is None:
            return (gr.update(),) * self.PAGE_OUTPUTS
        value = check_threshold(threshold)
        segmenter = self._segmenter(state)
        return S.render_locked(state, value, segmenter,
                               lambda explanation: self._rendered(state, explanation, S.masks_pending(state)),
                               **changes)

    def _checked_request(self, image, labels_text, threshold, redundancy, sam_choice, precision,
                         methods=None, points_from=None):
        """Everything about a request that can be refused without a model; the precision comes back resolved
        (the device's default where the request names none)."""
        if image is None:
            raise UserError("Upload an image first (or pick an example below).")
        parsed = parse_labels(labels_text)
        threshold_value = check_threshold(threshold)
        if redundancy not in REDUNDANCY_MODES:
            raise InputError(f"Redundancy must be one of {', '.join(REDUNDANCY_MODES)}.")
        precision = self._precision(precision)
        sam_key = self.store.sam_key(sam_choice, precision)
        return parsed, threshold_value, sam_key, check_methods(methods, points_from), precision

    def _maps(self, image, parsed, backbone, resolution, redundancy, precision, methods, progress=None):
        working = image_array(image)
        explainer = self.store.clip(backbone, progress=progress)  # loaded here; computed in a GPU task
        size, note = check_resolution_choice(resolution, explainer.patch_size)
        chosen, points_from = methods
        maps = self.work.maps(backbone, working.rgb, parsed.labels,
                              MapOptions(resolution=size, redundancy=redundancy, precision=precision,
                                         methods=chosen, points_from=points_from))
        notes = tuple(parsed.notes) + tuple(n for n in (working.note, note) if n)
        return working, explainer, maps, notes

    # --- events -----------------------------------------------------------------------
    @user_errors
    def validate(self, image, labels_text, threshold, backbone, resolution, redundancy, sam_choice, precision,
                 instances=False, positive_only=False, methods=None, points_from=None) -> None:
        """Run's first step, before the queue: a refusal shows its message and leaves the page as it was."""
        _check_flags(instances=instances, positive_only=positive_only)
        self._checked_request(image, labels_text, threshold, redundancy, sam_choice, precision, methods,
                              points_from)
        try:
            float(resolution)
        except (TypeError, ValueError):
            raise UserError("Resolution must be a whole number of pixels, e.g. 512.") from None

    def screen_upload(self, payload):
        """On upload, before anything is decoded: a file that cannot be used is cleared from the image box,
        with a message saying why (`payload` is the unprocessed upload)."""
        path = payload.get("path") if isinstance(payload, dict) else getattr(payload, "path", None)
        problem = upload_problem(path)
        if problem is None:
            return gr.update()
        log.info("refused upload: %s", problem)
        gr.Warning(problem)
        return None

    @user_errors
    def pre_encode(self, image, backbone, resolution, sam_choice, precision) -> None:
        """On upload: run both image encoders now, so Run pays only for text and decoding."""
        if image is None:
            return
        rgb = image_array(image).rgb
        precision = self._precision(precision)
        explainer = self.store.clip(backbone)
        size, _ = check_resolution_choice(resolution, explainer.patch_size)
        sam_key = self.store.sam_key(sam_choice, precision)
        if sam_key is not None:
            self.store.sam(*sam_key)  # loaded here, so the task below only computes
        self.work.pre_encode(backbone, size, precision, sam_key, rgb)
        self.store.idle_trim.job_done()

    @user_errors
    def run(self, image, labels_text, threshold, backbone, resolution, redundancy, sam_choice, precision,
            instances=False, positive_only=False, methods=None, points_from=None, progress=gr.Progress()):
        """Run: the page's outputs and the session state, heatmaps first (yielded while SAM works), then
        the masks."""
        parsed, threshold_value, sam_key, chosen, precision = self._checked_request(
            image, labels_text, threshold, redundancy, sam_choice, precision, methods, points_from)
        progress(0.05, desc="Maps…")
        working, explainer, maps, notes = self._maps(image, parsed, backbone, resolution, redundancy, precision,
                                                     chosen, _progress_messages(progress))
        segmenter = self.work.segmenter(sam_key, progress=_progress_messages(progress))
        state = S.SessionState(
            working.rgb, maps, explainer.name, None if segmenter is None else segmenter.name, sam_key, None, notes,
            point_options=PointOptions(bool(instances), bool(positive_only)), image_name=image_file_name(image),
            source_size=working.source_size, threshold=threshold_value)
        first = apply_threshold(maps, threshold_value, state.point_options)
        embedding = None
        if segmenter is not None:  # heatmaps now, masks when SAM is done
            yield (*self._rendered(state, first, sam_pending=True), state)
            started = time.perf_counter()
            embedding = segmenter.embed(working.rgb)
            first.timings["sam_image"] = time.perf_counter() - started
        final = S.finish_run(state, embedding, first, segmenter, lambda explanation: self._rendered(state, explanation))
        yield (*final, state)
        self.store.idle_trim.job_done()

    @user_errors
    def explain(self, image, labels_text, threshold=0.0, backbone=None, resolution=512, redundancy="vocab",
                sam_choice=None, precision=None, instances=False, positive_only=False, methods=None,
                points_from=None, include_files=False):
        """Explain an image: where CLIP sees each label, by CLIP Surgery (and other methods), with SAM masks.

        Args:
            image: the image (JPEG, PNG, WebP, GIF, BMP or TIFF).
            labels_text: labels separated by commas; "a+b" joins parts into one target, e.g. "cat, dog, cat+grass".
            threshold: raw CLIP Surgery similarity a label must reach to be found; 0 means off (every label found).
            backbone: the CLIP model (default: the app's).
            resolution: CLIP input size in pixels, 224 to 1024.
            redundancy: what feature surgery subtracts: "vocab", "labels" or "empty".
            sam_choice: the SAM model, or "off" for no masks.
            precision: "fp32", "bf16" or "fp16" (GPU only) for the image encoders; default: bf16 on a GPU, fp32 on a CPU.
            instances: one mask per connected region of a label.
            positive_only: send SAM positive points only.
            methods: the maps to compute, from clip, surgery, maskclip, sclip, clearclip, naclip
                (default clip and surgery; a list or a comma-separated text).
            points_from: the method whose map decides found / not found and gives SAM's points (default surgery).
            include_files: also return the zip of every output file and the overlay images.

        Returns:
            result: result.json's content (per label: found, points, presence, mask score and area, candidates).
            summary: a Markdown summary and per-label table.
            zip: the zip of all output files, or None unless include_files.
            images: (image file, caption) pairs of the overlays, empty unless include_files.
        """
        _check_flags(instances=instances, positive_only=positive_only, include_files=include_files)
        parsed, threshold_value, sam_key, chosen, precision = self._checked_request(
            image, labels_text, threshold, redundancy, sam_choice, precision, methods, points_from)
        working, explainer, maps, notes = self._maps(image, parsed, backbone, resolution, redundancy, precision,
                                                     chosen)
        segmenter = self.work.segmenter(sam_key)
        state = S.SessionState(
            working.rgb, maps, explainer.name, None if segmenter is None else segmenter.name, sam_key,
            None if segmenter is None else segmenter.embed(working.rgb), notes,
            point_options=PointOptions(bool(instances), bool(positive_only)), image_name=image_file_name(image),
            source_size=working.source_size)
        explanation = S.rerender(state, threshold_value, segmenter)
        self.store.idle_trim.job_done()
        result, files = S.result_and_files(state, explanation)
        summary = page.summary_markdown(state, explanation)
        if not include_files:
            return result, summary, None, []
        shown = page.shown_files(explanation, with_masks=segmenter is not None)
        images, zip_path, _ = served_files.write_render(self.output_dir, files, shown, downloads=True)
        captions = {**METHOD_TITLES, "points": "Points", "sam": "SAM"}
        gallery = []
        for view in explanation.labels:
            for name in shown:
                kind, _, rest = name.partition("_")
                if rest == f"{label_slug(view.text)}.png":
                    gallery.append((images[name], f"{captions[kind]} · {view.text}"))
        return result, summary, zip_path, gallery

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
            return (gr.update(),) * self.PAGE_OUTPUTS
        if candidate not in (None, "best", "1", "2", "3"):
            raise InputError("The SAM candidate must be best, 1, 2 or 3.")
        index = None if candidate in (None, "best") else int(candidate) - 1
        return self._rerender(state, threshold, mask_choice=(label, index))

    @user_errors
    def change_points_from(self, state, threshold, points_from) -> tuple:
        """Take the points (and found / not found) from another computed map: no model call."""
        if state is None or not points_from or points_from == state.maps.options.points_from:
            return (gr.update(),) * self.PAGE_OUTPUTS
        if points_from not in state.maps.options.methods:
            gr.Warning("That map was not computed for these results: tick it under Compare and press Run.")
            return (gr.update(),) * self.PAGE_OUTPUTS
        return self._rerender(state, threshold, points_from=points_from)

    def shown_candidate(self, state, label):
        """The chosen label's candidates, each with its score and area."""
        if state is None:
            return gr.update(choices=[("best", "best")], value="best")
        state.mask_label = label
        choice = state.mask_choices.get(label)
        return gr.update(choices=page.candidate_choices(state.shown, label),
                         value="best" if choice is None else str(choice + 1))

    def slider_range(self, state):
        """After a Run: the slider's range fits this image's raw values (never an output of a call that can fail)."""
        if state is None:
            return gr.update()
        top = max(float(lm.point_parts.max()) for lm in state.maps.labels)
        return gr.update(maximum=max(0.05, round(top * 1.2 + 0.005, 2)))

    def mark_stale(self, state):
        """An Advanced option changed after a Run: say the shown results are for the old options."""
        if state is None:
            return ""
        return "**These results are for the previous options.** Press Run to update them."

    def suggest(self, state):
        """Otsu's threshold of the current maps, or a warning (the slider is never an error output)."""
        if state is None:
            gr.Warning("Run first: the suggestion is computed from the current image's maps.")
            return gr.update()
        value = S.suggest_threshold(state)
        if value is None:
            gr.Warning("The maps are flat; there is no threshold to suggest.")
            return gr.update()
        return gr.update(value=round(max(value, 0.001), 3))

    def status(self):
        text, ready = self.store.status()
        return text, gr.Timer(active=not ready)
