"""The page: its components and which handler each event calls."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from surgery.method.feature_surgery import REDUNDANCY_MODES
from surgery.method.results import DEFAULT_REDUNDANCY, DEFAULT_RESOLUTION
from surgery.precision import PRECISIONS

from .components import SafeImage, ThresholdSlider
from .handlers import Handlers

ASSETS = Path(__file__).resolve().parents[1] / "assets"
RESOLUTIONS = [224, 336, 448, 512, 640, 768, 896, 1024]
MODEL_CONCURRENCY = 1  # 2 cores: one model job at a time uses both; more would only contend
RERENDER_CONCURRENCY = 4
SESSION_TTL_S = 1800  # per-session raw maps and SAM embedding (a few MB) live this long after the last use

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
THRESHOLD_HINT = "0 = off (reference behaviour: every map is stretched to full range); above 0, raw CLIP Surgery similarity."
EXAMPLES = [
    ["rocket.jpg", "rocket, smoke, sky, giraffe"],
    ["astronaut.jpg", "person, flag, rocket+spacesuit"],
    ["chelsea.jpg", "cat, grass, cat+whiskers, dog"],
    ["coffee.jpg", "cup, coffee, spoon+saucer, pizza"],
    ["camera.jpg", "man, camera, tripod+coat, sky"],
]


def build_demo(handlers: Handlers, queue_size: int = 32) -> gr.Blocks:
    store = handlers.store
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
                    resolution = gr.Dropdown(RESOLUTIONS, value=DEFAULT_RESOLUTION, label="Input resolution",
                                             allow_custom_value=True,
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
        demo.load(handlers.status, outputs=[status_box, timer], queue=False, api_visibility="private")
        timer.tick(handlers.status, outputs=[status_box, timer], queue=False, api_visibility="private")
        image.upload(handlers.pre_encode, inputs=[image, backbone, resolution, sam_choice, precision], outputs=None,
                     concurrency_id="model", concurrency_limit=MODEL_CONCURRENCY, show_progress="hidden",
                     api_visibility="private")
        run_button.click(
            handlers.run, inputs=[image, labels, threshold, backbone, resolution, redundancy, sam_choice, precision,
                                  instances, positive_only],
            outputs=outputs + [state, threshold, mask_label], api_name="explain",
            concurrency_id="model", concurrency_limit=MODEL_CONCURRENCY,
        )
        threshold.change(handlers.rethreshold, inputs=[state, threshold], outputs=outputs,
                         trigger_mode="always_last", **light)
        for option in (instances, positive_only):
            option.change(handlers.change_points, inputs=[state, threshold, instances, positive_only],
                          outputs=outputs, trigger_mode="always_last", **light)
        mask_candidate.change(handlers.choose_mask, inputs=[state, threshold, mask_label, mask_candidate],
                              outputs=outputs, trigger_mode="always_last", **light)
        mask_label.change(handlers.shown_candidate, inputs=[state, mask_label], outputs=[mask_candidate], queue=False,
                          api_visibility="private")
        suggest_button.click(handlers.suggest, inputs=[state], outputs=[threshold], api_visibility="private",
                             queue=False)
    demo.queue(max_size=queue_size, default_concurrency_limit=MODEL_CONCURRENCY)
    return demo
