"""CLIP Surgery Explorer: the Gradio Blocks UI (all computation lives in `surgery/`)."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import gradio as gr
import numpy as np
import PIL.Image

from surgery import render, served_files
from surgery import session as S
from surgery.engine import DEFAULT_REDUNDANCY, DEFAULT_RESOLUTION, MapOptions
from surgery.errors import UserError
from surgery.explain import PointOptions, apply_threshold
from surgery.feature_surgery import REDUNDANCY_MODES
from surgery.labels import parse_labels
from surgery.models import PRECISIONS, ModelConfig, ModelStore
from surgery.preprocess import MAX_PIXELS, WorkingImage, check_pixel_count, fit_long_side, load_image
from surgery.registry import CLIP_CHECKPOINTS, DEFAULT_CLIP, SAM_CHECKPOINTS
from surgery.text_store import default_text_cache_dir

log = logging.getLogger("app")
ROOT = Path(__file__).parent
ASSETS = ROOT / "assets"
MAX_FILE_SIZE = "20mb"
RESOLUTIONS = [224, 336, 448, 512, 640, 768, 896, 1024]
MODEL_CONCURRENCY = 1  # 2 cores: one model job at a time uses both; more would only contend
RERENDER_CONCURRENCY = 4
QUEUE_SIZE = int(os.environ.get("QUEUE_SIZE") or 32)  # env override: tests, small Spaces
OUTPUT_DIR = Path(tempfile.gettempdir()) / "clip-surgery-explorer"
SESSION_TTL_S = 1800  # per-session raw maps and SAM embedding (a few MB) live this long after the last use
SESSION_CAPACITY = 24  # sessions whose state is kept at once: 10-20 MB each typical, ~55 MB at most (see README Limits)

INTRO = """# CLIP Surgery Explorer
Why does CLIP match this image to that word? **CLIP Surgery**
([Li et al., 2023](https://arxiv.org/abs/2304.05653)) changes CLIP's last image blocks to
value-value attention and subtracts what all labels share, with no training. Left: the plain
CLIP heatmap (noisy, often highlighting the background). Right: the CLIP Surgery heatmap (red =
evidence for the label). The strongest and weakest regions become positive and negative points
for Segment Anything, which turns them into masks. Use the threshold to say how strong evidence
must be: a label whose map never reaches it is reported *not found*.
"""
LABELS_HINT = "Separate labels with commas. Join parts with + to make one target: cat+grass."
THRESHOLD_HINT = "0 = off (reference behaviour: every map is stretched to full range)."
EXAMPLES = [
    ["rocket.jpg", "rocket, smoke, sky, giraffe"],
    ["astronaut.jpg", "person, flag, rocket+spacesuit"],
    ["chelsea.jpg", "cat, grass, cat+whiskers, dog"],
    ["coffee.jpg", "cup, coffee, spoon+saucer, pizza"],
    ["camera.jpg", "man, camera, tripod+coat, sky"],
]


def user_errors(handler):
    """Show `UserError` messages in the page; log anything else and show a safe message."""

    def translate(exc: Exception) -> gr.Error:
        if isinstance(exc, gr.Error):
            return exc
        if isinstance(exc, UserError):
            return gr.Error(str(exc))
        log.exception("request failed")
        return gr.Error("Something went wrong on the server while handling this request; please try again.")

    if getattr(handler, "__code__", None) and handler.__code__.co_flags & 0x20:  # generator
        @functools.wraps(handler)
        def generator(*args, **kwargs):
            try:
                yield from handler(*args, **kwargs)
            except Exception as exc:
                raise translate(exc) from None
        return generator

    @functools.wraps(handler)
    def plain(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except Exception as exc:
            raise translate(exc) from None
    return plain


def _save_pil_to_cache_atomic(img, cache_dir, name="image", format="webp"):
    """gradio.processing_utils.save_pil_to_cache without its race: the cache is content-hashed, so a
    file already there is left alone, and a new one appears atomically. Gradio's own version truncates
    and rewrites it in place, cutting short any download of the same file in progress (identical
    outputs of two requests, or a gallery yielded before and after SAM). PNGs are encoded with
    `render.encode_png`, ~8x faster than PIL's default: Gradio encodes every gallery image of every
    yield, which was most of a Run's time after the models."""
    if format == "png" and img.mode in ("RGB", "RGBA", "L"):
        data = render.encode_png(np.asarray(img))
    else:
        data = gr.processing_utils.encode_pil_to_bytes(img, format)
    folder = Path(cache_dir) / gr.processing_utils.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    target = (folder / f"{name}.{format}").resolve()
    if not target.exists():
        fd, staging = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(staging, target)
    return str(target)


gr.processing_utils.save_pil_to_cache = _save_pil_to_cache_atomic

# PIL refuses images over twice this many pixels when it reads the header: a second guard
# behind SafeImage's own check, for anything else that might open an uploaded image.
PIL.Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2
warnings.filterwarnings("ignore", category=PIL.Image.DecompressionBombWarning)


class SafeImage(gr.Image):
    """gr.Image whose upload handling answers bad files with a message instead of an error page.

    The pixel count is read from the header before anything is decoded (decompression bombs).
    With `image_mode=None` Gradio hands over the lazily opened image in its own mode (16-bit,
    CMYK, palette, alpha...) and `surgery.preprocess.load_image` converts it correctly.
    """

    is_template = True  # rendered by the frontend's own Image component

    def preprocess(self, payload):
        if payload is not None and getattr(payload, "path", None):
            try:
                with PIL.Image.open(payload.path) as header:
                    check_pixel_count(*header.size)
            except UserError as exc:
                raise gr.Error(str(exc)) from None
            except PIL.Image.DecompressionBombError:  # PIL's own header check, above 2 * MAX_IMAGE_PIXELS
                raise gr.Error(
                    f"The image has more than {MAX_PIXELS / 1e6:.0f} megapixels, the limit. Downscale it and try again."
                ) from None
            except Exception:
                raise gr.Error(
                    "This file is not an image this app can read. Use a JPEG, PNG, WebP, GIF, BMP or TIFF file."
                ) from None
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Exception:
            log.warning("image preprocessing failed", exc_info=True)
            raise gr.Error("This image is truncated or corrupt. Re-export or re-download it and try again.") from None


class ThresholdSlider(gr.Slider):
    """gr.Slider whose value is checked by `S.check_threshold` (0 and below: off; a number up to
    THRESHOLD_LIMIT), not by Gradio's bounds: `slider_update` narrows the slider per session, and
    Gradio would then refuse a later API request above that narrowed maximum, and answer a
    value that is not a number with no message at all."""

    is_template = True  # rendered by the frontend's own Slider component

    def preprocess(self, payload):
        return payload


def image_array(image) -> WorkingImage:
    """The uploaded image decoded, and scaled down when larger than WORK_MAX_SIDE."""
    if image is None:
        raise UserError("Upload an image first (or pick an example below).")
    return fit_long_side(load_image(image))


def slider_update(state: S.SessionState):
    top = max(float(lm.surgery_parts.max()) for lm in state.maps.labels)
    maximum = max(0.05, round(top * 1.2 + 0.005, 2))
    return gr.update(maximum=maximum)


def image_file_name(image) -> str:
    name = Path(getattr(image, "filename", "") or "image.png").name
    return name or "image.png"


def rendered(state: S.SessionState, explanation, sam_pending: bool = False) -> tuple:
    """The seven result outputs (heatmaps, points, masks, histograms, summary, zip, result.json)."""
    masks = S.annotated_masks(state, explanation) if state.segmenter is not None and not sam_pending else None
    images, zip_path, json_path = served_files.write_render(
        OUTPUT_DIR, S.page_files(state, explanation, sam_pending), S.shown_files(explanation),
        downloads=not sam_pending)
    return (S.heatmap_gallery(explanation, images), S.points_gallery(explanation, images), masks,
            S.histogram_gallery(state, explanation), S.summary_markdown(state, explanation, sam_pending),
            zip_path, json_path)


def build_demo(store: ModelStore) -> gr.Blocks:
    def progress_callback(progress: gr.Progress):
        return lambda message: progress(None, desc=message)

    @user_errors
    def pre_encode(image, backbone, resolution, sam_choice, precision):
        """On upload: run both image encoders now, so Run pays only for text and decoding."""
        if image is None:
            return
        rgb = image_array(image).rgb
        explainer = store.clip(backbone)
        size, _ = S.check_resolution_choice(resolution, explainer.patch_size)
        explainer.image_tokens(rgb, size, precision=precision)
        segmenter = store.sam(sam_choice, precision)
        if segmenter is not None:
            segmenter.embed(rgb)
        store.idle_trim.job_done()

    @user_errors
    def run(image, labels_text, threshold, backbone, resolution, redundancy, sam_choice, precision,
            instances=False, positive_only=False, progress=gr.Progress()):
        working = image_array(image)
        rgb = working.rgb
        parsed = parse_labels(labels_text)
        threshold_value = S.check_threshold(threshold)
        if redundancy not in REDUNDANCY_MODES:
            raise UserError(f"Redundancy must be one of {', '.join(REDUNDANCY_MODES)}.")
        progress(0.05, desc="Loading CLIP…")
        explainer = store.clip(backbone, progress=progress_callback(progress))
        size, note = S.check_resolution_choice(resolution, explainer.patch_size)
        progress(0.2, desc="CLIP and CLIP Surgery maps…")
        maps = explainer.compute_maps(rgb, parsed.labels,
                                      MapOptions(resolution=size, redundancy=redundancy, precision=precision))
        segmenter = store.sam(sam_choice, precision, progress=progress_callback(progress))
        state = S.SessionState(
            rgb, maps, explainer.name, store.sam_display_name(sam_choice) if segmenter else None, segmenter,
            None, tuple(parsed.notes) + tuple(n for n in (working.note, note) if n),
            point_options=PointOptions(bool(instances), bool(positive_only)), image_name=image_file_name(image),
            source_size=working.source_size, threshold=threshold_value)
        first = apply_threshold(maps, threshold_value, state.point_options)
        pick = gr.update(choices=[label.text for label in parsed.labels], value=None)
        embedding = None
        if segmenter is not None:  # heatmaps now, masks when SAM is done
            yield (*rendered(state, first, sam_pending=True), state, slider_update(state), pick)
            progress(0.6, desc="SAM image embedding…")
            started = time.perf_counter()
            embedding = segmenter.embed(rgb)
            first.timings["sam_image"] = time.perf_counter() - started
            progress(0.9, desc="SAM masks…")
        # The page holds the state since the first yield, so its re-renders (which show "computing…"
        # until the embedding is in) take turns with this render, and a threshold or option one of
        # them set meanwhile is the one the masks are made for.
        with state.lock:
            state.embedding = embedding
            if (state.threshold, state.point_options) != (first.threshold, first.point_options):
                first = apply_threshold(maps, state.threshold, state.point_options)
            final = (*rendered(state, S.masks_for(state, first)), state, slider_update(state), pick)
        yield final
        store.idle_trim.job_done()

    @user_errors
    def rethreshold(state, threshold):
        if state is None:
            return (gr.update(),) * 7
        with state.lock:
            return rendered(state, S.rerender(state, S.check_threshold(threshold)), S.masks_pending(state))

    @user_errors
    def change_points(state, threshold, instances, positive_only):
        if state is None:
            return (gr.update(),) * 7
        with state.lock:
            state.point_options = PointOptions(bool(instances), bool(positive_only))
            return rendered(state, S.rerender(state, S.check_threshold(threshold)), S.masks_pending(state))

    @user_errors
    def choose_mask(state, threshold, label, candidate):
        """Show another of SAM's three candidates for one label: no model call."""
        if state is None or not label:
            return (gr.update(),) * 7
        with state.lock:
            if candidate in (None, "best"):
                state.mask_choices.pop(label, None)
            else:
                state.mask_choices[label] = int(candidate) - 1
            return rendered(state, S.rerender(state, S.check_threshold(threshold)), S.masks_pending(state))

    def shown_candidate(state, label):
        choice = None if state is None else state.mask_choices.get(label)
        return gr.update(value="best" if choice is None else str(choice + 1))

    @user_errors
    def suggest(state):
        if state is None:
            raise UserError("Run first: the suggestion is computed from the current image's maps.")
        value = S.suggest_threshold(state)
        if value is None:
            raise UserError("The maps are flat; there is no threshold to suggest.")
        return gr.update(value=round(max(value, 0.001), 3))

    def status():
        text, ready = store.status()
        return text, gr.Timer(active=not ready)

    with gr.Blocks(title="CLIP Surgery Explorer", delete_cache=(900, SESSION_TTL_S)) as demo:
        gr.Markdown(INTRO)
        status_box = gr.Markdown("Loading model weights…", elem_id="model-status")
        with gr.Row():
            with gr.Column(scale=1):
                image = SafeImage(type="pil", image_mode=None, label="Image", height=360, elem_id="image")
                labels = gr.Textbox(label="Labels", placeholder="person, bench, cat+grass", info=LABELS_HINT)
                threshold = ThresholdSlider(0.0, 1.0, value=0.0, step=0.001, label="Threshold", info=THRESHOLD_HINT,
                                      elem_id="threshold")
                with gr.Row():
                    run_button = gr.Button("Run", variant="primary", scale=2)
                    suggest_button = gr.Button("Suggest threshold", scale=1, elem_id="suggest")
                with gr.Accordion("Advanced", open=False):
                    backbone = gr.Dropdown(store.clip_choices(), value=store.config.clip_model, label="Backbone",
                                           elem_id="backbone")
                    resolution = gr.Dropdown(RESOLUTIONS, value=DEFAULT_RESOLUTION, label="Input resolution", allow_custom_value=True,
                                             info="Snapped to a multiple of the backbone's patch size.")
                    redundancy = gr.Radio(list(REDUNDANCY_MODES), value=DEFAULT_REDUNDANCY, label="Redundancy",
                                          info="vocab: against 59 background classes (reference demo); "
                                               "labels: against your other labels; empty: against an empty prompt.")
                    sam_choice = gr.Dropdown(store.sam_choices(), value=store.sam_choices()[0],
                                             label="SAM model", info="'off' skips masks.")
                    precision = gr.Radio(list(PRECISIONS), value="fp32", label="Precision")
                    instances = gr.Checkbox(False, label="Split instances (one mask per connected region)",
                                            elem_id="instances")
                    positive_only = gr.Checkbox(False, label="Send SAM positive points only")
                gr.Examples([[str(ASSETS / name), text] for name, text in EXAMPLES], inputs=[image, labels],
                            label="Examples (one absent label and one a+b target each)")
            with gr.Column(scale=2):
                heatmaps = gr.Gallery(label="CLIP vs CLIP Surgery", columns=2, format="png", height="auto",
                                      elem_id="heatmaps")
                points = gr.Gallery(label="Points for SAM (green positive, magenta negative)", columns=3,
                                    format="png", height="auto", elem_id="points")
                masks = gr.AnnotatedImage(label="SAM masks", format="png", elem_id="masks")
                with gr.Row():
                    mask_label = gr.Dropdown([], label="Mask for label", elem_id="mask-label")
                    mask_candidate = gr.Radio(["best", "1", "2", "3"], value="best", label="SAM candidate",
                                              elem_id="mask-candidate")
                histograms = gr.Gallery(label="Raw CLIP Surgery values (threshold drawn)", columns=2,
                                        format="png", height="auto", elem_id="histograms")
                summary = gr.Markdown(elem_id="summary")
                with gr.Row():
                    download = gr.File(label="Download (zip)", elem_id="download")
                    result_file = gr.File(label="result.json", elem_id="result-json")
        state = gr.State(None, time_to_live=SESSION_TTL_S)
        timer = gr.Timer(2.0)

        outputs = [heatmaps, points, masks, histograms, summary, download, result_file]
        light = dict(concurrency_id="rerender", concurrency_limit=RERENDER_CONCURRENCY, show_progress="minimal",
                     api_visibility="private")
        demo.load(status, outputs=[status_box, timer], queue=False, api_visibility="private")
        timer.tick(status, outputs=[status_box, timer], queue=False, api_visibility="private")
        image.upload(pre_encode, inputs=[image, backbone, resolution, sam_choice, precision], outputs=None,
                     concurrency_id="model", concurrency_limit=MODEL_CONCURRENCY, show_progress="hidden",
                     api_visibility="private")
        run_button.click(
            run, inputs=[image, labels, threshold, backbone, resolution, redundancy, sam_choice, precision,
                         instances, positive_only],
            outputs=outputs + [state, threshold, mask_label], api_name="explain",
            concurrency_id="model", concurrency_limit=MODEL_CONCURRENCY,
        )
        threshold.change(rethreshold, inputs=[state, threshold], outputs=outputs, trigger_mode="always_last", **light)
        for option in (instances, positive_only):
            option.change(change_points, inputs=[state, threshold, instances, positive_only], outputs=outputs,
                          trigger_mode="always_last", **light)
        mask_candidate.change(choose_mask, inputs=[state, threshold, mask_label, mask_candidate], outputs=outputs,
                              trigger_mode="always_last", **light)
        mask_label.change(shown_candidate, inputs=[state, mask_label], outputs=[mask_candidate], queue=False,
                          api_visibility="private")
        suggest_button.click(suggest, inputs=[state], outputs=[threshold], api_visibility="private", queue=False)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=MODEL_CONCURRENCY)
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Start the CLIP Surgery Explorer web app.")
    parser.add_argument("--model", default=env("CLIP_MODEL", DEFAULT_CLIP),
                        help=f"default CLIP backbone: {', '.join(CLIP_CHECKPOINTS)} or an open_clip MODEL:TAG "
                             "(env CLIP_MODEL)")
    parser.add_argument("--clip-checkpoint", type=Path, default=env("CLIP_CHECKPOINT") or None,
                        help="local CLIP weights for the default backbone (env CLIP_CHECKPOINT)")
    parser.add_argument("--sam-model", default=env("SAM_MODEL") or None, choices=list(SAM_CHECKPOINTS),
                        help="default SAM (env SAM_MODEL; vit_b on CPU, vit_h with CUDA)")
    parser.add_argument("--sam-checkpoint", type=Path, default=env("SAM_CHECKPOINT") or None,
                        help="local SAM weights for the default SAM (env SAM_CHECKPOINT)")
    parser.add_argument("--backbone-checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="local weights for another backbone choice, e.g. RN50=rn50.safetensors; repeatable "
                             "(env BACKBONE_CHECKPOINTS='NAME=PATH;NAME=PATH')")
    parser.add_argument("--no-sam", action="store_true", default=env("NO_SAM", "") in {"1", "true"},
                        help="run without SAM (env NO_SAM=1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    pairs = args.backbone_checkpoint + [p for p in os.environ.get("BACKBONE_CHECKPOINTS", "").split(";") if p]
    if any("=" not in pair for pair in pairs):
        raise SystemExit("--backbone-checkpoint takes NAME=PATH, e.g. RN50=weights/rn50.safetensors")
    backbones = {name.strip(): Path(path.strip()) for name, path in (pair.split("=", 1) for pair in pairs)}
    store = ModelStore(ModelConfig(
        clip_model=args.model, clip_checkpoint=args.clip_checkpoint, sam_model=args.sam_model,
        sam_checkpoint=args.sam_checkpoint, load_sam=not args.no_sam, backbone_checkpoints=backbones,
        text_cache_dir=default_text_cache_dir(),
    ))
    store.start()
    demo = build_demo(store)
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT") or os.environ.get("PORT") or 7860),
        ssr_mode=False,
        max_file_size=MAX_FILE_SIZE,
        allowed_paths=[str(ASSETS)],
        state_session_capacity=SESSION_CAPACITY,
        show_error=False,
    )


if __name__ == "__main__":
    main()
