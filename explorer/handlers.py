"""The app's event handlers as one class, constructed with the model store.

Each handler is a plain method: it takes what the page (or the API) sends and
returns what the page shows, so tests and benchmarks call them directly, without
a server. `UserError`s become messages in the page; anything else is logged
with its traceback and shown as a generic message.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import gradio as gr

from surgery.errors import InputError, UserError
from surgery.method.options import resolution_value, snap_resolution
from surgery.method.scoring import check_truth, truth_scores
from surgery.method.table import METHOD_TABLE, check_segmenter, default_points_from, method_title
from surgery.method.threshold import check_threshold, threshold_note
from surgery.method.views import Explanation, apply_threshold
from surgery.output.files import label_slug
from surgery.precision import resolve_precision
from surgery.request import ExplainRequest, build_request

from . import cards, page, served_files
from . import session as S
from .components import upload_problem
from .examples import ASSETS, EXAMPLES
from .gpu import ModelWork
from .inputs import image_array, image_file_name
from .model_store import ModelStore

log = logging.getLogger("app")

GENERIC_ERROR = "Something went wrong on the server while handling this request; please try again."
SLIDER_STEP = 0.001  # the threshold slider's step, and so its smallest value above 0 (off)
SLIDER_HEADROOM = 1.2  # after a Run the slider reaches this much past the image's strongest raw value
SLIDER_LEAST_MAXIMUM = 0.05


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
    if inspect.isgeneratorfunction(handler):  # errors may come after the first yield
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


def _check_flag(name: str, value: object) -> None:
    """An on/off option of the API alone must be true or false (None: off); Gradio's Checkbox passes anything on."""
    if value is not None and not isinstance(value, bool):
        raise InputError(f"{name} must be true or false.")


def _progress_messages(progress) -> Callable[[str], None]:
    return lambda message: progress(None, desc=message)


class Handlers:
    """What each page event does. `output_dir` receives the files the page is handed (swept)."""

    # What each re-render returns, by name and in this order (Run adds the session state after them);
    # the page lays its output components out from the same names (`explorer.layout`).
    PAGE_OUTPUT_NAMES = ("overview", "notice", "headline", "legend", "cards", "details", "zip", "result_json",
                         "mask_labels", "scores", "result_area", "welcome")
    PAGE_OUTPUTS = len(PAGE_OUTPUT_NAMES)

    def __init__(self, store: ModelStore, output_dir: Path) -> None:
        self.store = store
        self.work = ModelWork(store)  # every model call, as a GPU task where the app runs on ZeroGPU
        self.output_dir = Path(output_dir)

    # --- helpers --------------------------------------------------------------------
    def _segmenter(self, state: S.SessionState):
        return self.work.segmenter(state.sam_key)

    def _placement(self):
        """Where the models run; a device setting the app cannot meet is refused here, with its reason."""
        problem = self.store.config.device_problem()
        if problem:
            raise UserError(problem)
        return self.store.config.placement()

    def _write(self, state: S.SessionState, explanation: Explanation, sam_pending: bool):
        """Write this render's shown files (and downloads once SAM is done or off)."""
        with_masks = state.sam_key is not None and not sam_pending
        return served_files.write_render(
            self.output_dir, S.page_files(state, explanation, sam_pending),
            page.shown_files(explanation, with_masks), downloads=not sam_pending)

    def _rendered(self, state: S.SessionState, explanation: Explanation, sam_pending: bool = False) -> tuple:
        """The page's result outputs for one render, in `PAGE_OUTPUT_NAMES` order."""
        state.shown = explanation
        images, zip_path, json_path = self._write(state, explanation, sam_pending)
        sam_state = "off" if state.sam_key is None else "pending" if sam_pending else "on"
        found = page.found_labels(explanation)
        values = {
            "overview": page.annotated_masks(state, explanation) if sam_state == "on" else None,
            "notice": "",
            "headline": page.headline_markdown(state, explanation, sam_pending),
            "legend": cards.legend_html(explanation.threshold, explanation.maps.options.points_from),
            "cards": cards.cards_html(explanation, images, suggested=state.suggested_threshold, sam_state=sam_state),
            "details": page.details_markdown(state, explanation, sam_pending),
            "zip": zip_path,
            "result_json": json_path,
            # the chooser shows a label's candidates (the first found one's until another is picked)
            "mask_labels": gr.update(choices=found, value=state.mask_label if state.mask_label in found
                                     else found[0] if found else None),
            "scores": page.scores_html(None if state.truth is None else
                                       truth_scores(explanation, state.truth, with_masks=sam_state == "on")),
            "result_area": gr.update(visible=True),  # hidden until the first result
            "welcome": gr.update(visible=False),
        }
        return tuple(values[name] for name in self.PAGE_OUTPUT_NAMES)

    def _unchanged(self) -> tuple:
        return (gr.update(),) * self.PAGE_OUTPUTS

    def _rerender(self, state: S.SessionState | None, threshold, **changes) -> tuple:
        if state is None:
            return self._unchanged()
        value = check_threshold(threshold)
        segmenter = self._segmenter(state)
        return S.render_locked(state, value, segmenter,
                               lambda explanation: self._rendered(state, explanation, S.masks_pending(state)),
                               **changes)

    def _checked_request(self, image, labels_text, threshold, resolution, redundancy, sam_choice, precision,
                         instances, positive_only, methods, points_from, extra_points=None, truth_label=None,
                         truth_mask=None, removed_points=None) -> tuple[ExplainRequest, tuple | None]:
        """Everything about a request that can be refused without a model, checked once: the explanation
        request (`surgery.request.build_request`, the precision resolved for where the models run) and
        the SAM model's key (None: SAM off)."""
        if image is None:
            raise UserError("Upload an image first (or pick an example below).")
        request = build_request(labels_text, threshold=threshold, resolution=resolution, redundancy=redundancy,
                                methods=methods, points_from=points_from, precision=precision,
                                device=self._placement(), instances=instances, positive_only=positive_only,
                                extra_points=extra_points, truth_label=truth_label, truth_mask=truth_mask,
                                removed_points=removed_points)
        sam_key = self.store.sam_key(sam_choice, request.maps.precision)
        if sam_key is None:
            check_segmenter(request.maps.methods, None)  # with SAM on: once the model is known (_segmenter_for)
        return request, sam_key

    def _segmenter_for(self, request: ExplainRequest, sam_key, progress=None):
        """The session's segmenter (None: SAM off), checked against the request's methods."""
        segmenter = self.work.segmenter(sam_key, progress=progress)
        if segmenter is not None:
            check_segmenter(request.maps.methods, segmenter.family)
        return segmenter

    def _maps(self, image, request: ExplainRequest, backbone, sam_key=None, progress=None):
        """The working image, the request fitted to it (`ExplainRequest.for_image`: a person's points
        inside it, the truth mask at its size), the explainer, the raw maps and the notes for the page. The
        resolution is snapped to the backbone's patch size (with a note) rather than refused."""
        working = image_array(image)
        height, width = working.rgb.shape[:2]
        request = request.for_image(width, height)
        explainer = self.store.clip(backbone, progress=progress)  # loaded here; computed in a GPU task
        size, note = snap_resolution(request.maps.resolution, explainer.patch_size)
        request = request.at_resolution(size)
        explainer.check_fits(request.maps)
        maps = self.work.maps(backbone, working.rgb, request.labels, request.maps, sam_key)
        notes = request.notes + tuple(n for n in (working.note, note) if n)
        return working, request, explainer, maps, notes

    # --- events -----------------------------------------------------------------------
    @user_errors
    def validate(self, image, labels_text, threshold, backbone, resolution, redundancy, sam_choice, precision,
                 instances=False, positive_only=False, methods=None, points_from=None) -> None:
        """Run's first step, before the queue: a refusal shows its message and leaves the page as it was."""
        self._checked_request(image, labels_text, threshold, resolution, redundancy, sam_choice, precision,
                              instances, positive_only, methods, points_from)

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
        precision = resolve_precision(precision, self._placement())
        explainer = self.store.clip(backbone)
        size, _ = snap_resolution(resolution_value(resolution), explainer.patch_size)
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
        request, sam_key = self._checked_request(image, labels_text, threshold, resolution, redundancy, sam_choice,
                                                 precision, instances, positive_only, methods, points_from)
        progress(0.05, desc="Maps…")
        segmenter = self._segmenter_for(request, sam_key, _progress_messages(progress))
        working, request, explainer, maps, notes = self._maps(image, request, backbone, sam_key,
                                                              _progress_messages(progress))
        state = S.SessionState(
            working.rgb, maps, explainer.name, None if segmenter is None else segmenter.name, sam_key, None, notes,
            point_options=request.points, image_name=image_file_name(image), source_size=working.source_size,
            threshold=request.threshold)
        first = apply_threshold(maps, request.threshold, state.point_options)
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
                points_from=None, include_files=False, extra_points=None, truth_label=None, truth_mask=None,
                removed_points=None):
        """Explain an image: where CLIP sees each label, by CLIP Surgery (and other methods), with SAM masks.

        Args:
            image: the image (JPEG, PNG, WebP, GIF, BMP or TIFF).
            labels_text: labels separated by commas; "a+b" joins parts into one target, e.g. "cat, dog, cat+grass".
            threshold: the raw value (of the map the points come from) a label must reach to be found; 0 means
                off (every label found).
            backbone: the CLIP model (default: the app's).
            resolution: CLIP input size in pixels, 224 to 1024.
            redundancy: what feature surgery subtracts: "vocab", "labels" or "empty".
            sam_choice: the SAM model, or "off" for no masks.
            precision: "fp32", "bf16" or "fp16" (GPU only) for the image encoders; default: bf16 on a GPU, fp32 on a CPU.
            instances: one mask per connected region of a label.
            positive_only: send SAM positive points only.
            methods: the maps to compute, from clip, surgery, maskclip, sclip, clearclip, naclip, scclip, resclip
                and proxyclip (which needs a SAM vit_* model) (default clip and surgery; a list or a comma-separated
                text).
            points_from: the method whose map decides found / not found and gives SAM's points (default: CLIP
                Surgery when it is computed, else the first of the methods).
            include_files: also return the zip of every output file and the overlay images.
            extra_points: your own points per label, added to the derived ones: {label: [[x, y, 1 or 0], ...]}
                with x, y in the working image's pixels (result.json's width and height: the image scaled to at
                most 1024 px on its long side), 1 positive, 0 negative; at most 64 per label. A label with
                points of yours is one SAM prompt and is found when it has a positive point.
            truth_label: the label truth_mask marks (one of the labels).
            truth_mask: a black-and-white picture of the image, white where truth_label is (or the label's pixels
                painted on a transparent layer), the image's size or its shape scaled; result.json's "truth"
                then holds the IoU of each map's region and of the SAM mask with it (docs/method.md §10).
            removed_points: derived points to leave out, per label, as result.json lists them: {label: [[x, y,
                1 or 0], ...]} (the page's "removes the nearest point"; a row that is not one of the label's
                derived points changes nothing). With extra_points, this replays any page's edits.

        Returns:
            result: result.json's content (per label: found, points, presence, mask score and area, candidates).
            summary: a Markdown summary and per-label table.
            zip: the zip of all output files, or None unless include_files.
            images: (image file, caption) pairs of the overlays, empty unless include_files.
        """
        _check_flag("include_files", include_files)
        request, sam_key = self._checked_request(image, labels_text, threshold, resolution, redundancy, sam_choice,
                                                 precision, instances, positive_only, methods, points_from,
                                                 extra_points, truth_label, truth_mask, removed_points)
        segmenter = self._segmenter_for(request, sam_key)
        working, request, explainer, maps, notes = self._maps(image, request, backbone, sam_key)
        state = S.SessionState(
            working.rgb, maps, explainer.name, None if segmenter is None else segmenter.name, sam_key,
            None if segmenter is None else segmenter.embed(working.rgb), notes, point_options=request.points,
            image_name=image_file_name(image), source_size=working.source_size, truth=request.truth)
        explanation = S.rerender(state, request.threshold, segmenter)
        self.store.idle_trim.job_done()
        result, files = S.result_and_files(state, explanation, with_files=bool(include_files))
        summary = page.summary_markdown(state, explanation)
        if not include_files:
            return result, summary, None, []
        shown = page.shown_files(explanation, with_masks=segmenter is not None)
        images, zip_path, _ = served_files.write_render(self.output_dir, files, shown, downloads=True)
        captions = {"points": "Points", "sam": "SAM"}
        gallery = []
        for view in explanation.labels:
            for name in shown:
                kind, _, rest = name.partition("_")
                if rest == f"{label_slug(view.text)}.png":
                    gallery.append((images[name], f"{captions.get(kind) or method_title(kind)} · {view.text}"))
        return result, summary, zip_path, gallery

    @user_errors
    def rethreshold(self, state, threshold) -> tuple:
        return self._rerender(state, threshold)

    @user_errors
    def change_points(self, state, threshold, instances, positive_only) -> tuple:
        if state is None:
            return self._unchanged()
        return self._rerender(state, threshold, point_options=replace(
            state.point_options, instances=bool(instances), positive_only=bool(positive_only)))

    @user_errors
    def edit_points(self, state, threshold, event: gr.EventData) -> tuple:
        """A click in the large view of a label's points: the event's data is {label, x, y, edit} (x, y in the
        working image's pixels; edit "positive", "negative", "remove" or "reset", `session.edited_points`).
        SAM decodes that label's new points only; no encoder runs."""
        if state is None:
            return self._unchanged()
        data = getattr(event, "_data", None)
        if not isinstance(data, dict):
            raise InputError("A click on the points carries a label, x, y and an edit.")
        return self._rerender(state, threshold, edit=(data.get("label"), data.get("x"), data.get("y"),
                                                      data.get("edit")))

    def _score(self, state, threshold, truth_choice, mask) -> tuple:
        if state is None:
            raise UserError("Run first: the mask is scored against the current results.")
        labels = tuple(lm.label for lm in state.maps.labels)
        height, width = state.image_rgb.shape[:2]
        truth = check_truth(truth_choice or None, mask, labels)
        return self._rerender(state, threshold, truth=None if truth is None else truth.fitted(width, height))

    @user_errors
    def score_drawing(self, state, threshold, truth_choice, truth_drawing) -> tuple:
        """Score against the pixels painted in the image editor (every layer's painted pixels)."""
        return self._score(state, threshold, truth_choice, page.painted_mask(truth_drawing))

    @user_errors
    def score_upload(self, state, threshold, truth_choice, truth_upload) -> tuple:
        """Score against an uploaded black-and-white mask (white: the label's pixels)."""
        if truth_upload is None:
            return self._unchanged()
        return self._score(state, threshold, truth_choice, truth_upload)

    @user_errors
    def clear_score(self, state, threshold) -> tuple:
        if state is None:
            return self._unchanged()
        return self._rerender(state, threshold, truth=None)

    def prepare_scoring(self, state):
        """After a Run: the editor shows the working image to draw on, and the label choice lists the labels."""
        if state is None:
            return gr.update(), gr.update()
        labels = [lm.label.text for lm in state.maps.labels]
        return (gr.update(value={"background": state.image_rgb, "layers": [], "composite": None}),
                gr.update(choices=labels, value=labels[0]))

    @user_errors
    def choose_mask(self, state, threshold, mask_label, mask_candidate) -> tuple:
        """Show another of SAM's three candidates for one label: no model call."""
        if state is None or not mask_label:
            return self._unchanged()
        if mask_candidate not in (None, "best", "1", "2", "3"):
            raise InputError("The SAM candidate must be best, 1, 2 or 3.")
        index = None if mask_candidate in (None, "best") else int(mask_candidate) - 1
        return self._rerender(state, threshold, mask_choice=(mask_label, index))

    @user_errors
    def change_points_from(self, state, threshold, points_from) -> tuple:
        """Take the points (and found / not found) from another computed map: no model call."""
        if state is None or not points_from or points_from == state.maps.options.points_from:
            return self._unchanged()
        if points_from not in state.maps.options.methods:
            gr.Warning("That map was not computed for these results: tick it under Compare and press Run.")
            return self._unchanged()
        return self._rerender(state, threshold, points_from=points_from)

    def shown_candidate(self, state, mask_label):
        """The chosen label's candidates, each with its score and area."""
        if state is None:
            return gr.update(choices=[("best", "best")], value="best")
        state.mask_label = mask_label
        choice = state.mask_choices.get(mask_label)
        return gr.update(choices=page.candidate_choices(state.shown, mask_label),
                         value="best" if choice is None else str(choice + 1))

    def slider_range(self, state):
        """After a Run (or another map for the points): the slider's range fits this image's raw values, and
        an earlier suggestion's note goes (never an output of a call that can fail)."""
        if state is None:
            return gr.update(), gr.update()
        top = max(float(lm.point_parts.max()) for lm in state.maps.labels)
        return gr.update(maximum=max(SLIDER_LEAST_MAXIMUM, round(top * SLIDER_HEADROOM + 0.005, 2))), ""

    def load_example(self, event: gr.EventData):
        """An example's thumbnail was clicked (the event's data: {example: index}): its image and labels go
        into the inputs (then it runs)."""
        example = (getattr(event, "_data", None) or {}).get("example")
        if isinstance(example, bool) or not isinstance(example, int) or not 0 <= example < len(EXAMPLES):
            return gr.update(), gr.update()
        name, labels = EXAMPLES[example]
        return str(ASSETS / name), labels

    def points_for_methods(self, methods, points_from):
        """When Compare changes: keep "Points from" where it is if that map is still computed, else move it
        to CLIP Surgery, or to the first ticked method without it (never an error output)."""
        chosen = [name for name in METHOD_TABLE if isinstance(methods, list) and name in methods]
        if not chosen or points_from in chosen:
            return gr.update()
        return gr.update(value=default_points_from(tuple(chosen)))

    def mark_stale(self, state):
        """An Advanced option changed after a Run: say the shown results are for the old options."""
        if state is None:
            return ""
        return "**These results are for the previous options.** Press Run to update them."

    def suggest(self, state, threshold):
        """Otsu's threshold of the current maps: the slider moves to it, or, when a threshold cannot be that
        value (`threshold_note`), stays and the note under it says why; the cards mark the suggestion
        either way (the slider and the note are never error outputs)."""
        if state is None:
            gr.Warning("Run first: the suggestion is computed from the current image's maps.")
            return (gr.update(), "", *self._unchanged())
        value = S.suggest_threshold(state)
        note = threshold_note(value)
        rendered = self.rethreshold(state, threshold)
        if note is not None:
            return (gr.update(), f"{note} The threshold was left as it was.", *rendered)
        return (gr.update(value=round(max(value, SLIDER_STEP), 3)), "", *rendered)

    def status(self):
        text, ready = self.store.status()
        return text, gr.Timer(active=not ready)
