"""The page: its components and which handler each event calls."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable

import gradio as gr

from surgery.method.options import DEFAULT_REDUNDANCY, DEFAULT_RESOLUTION, REDUNDANCY_MODES
from surgery.method.table import DEFAULT_METHODS, METHOD_TABLE, default_points_from

from . import cards
from .components import ChoiceDropdown, MethodsGroup, SafeImage, ThresholdSlider
from .handlers import Handlers

ASSETS = Path(__file__).resolve().parents[1] / "assets"
RESOLUTIONS = [224, 336, 448, 512, 640, 768, 896, 1024]
MODEL_CONCURRENCY = 1  # 2 cores: one model job at a time uses both; more would only contend
RERENDER_CONCURRENCY = 4
SESSION_TTL_S = 1800  # per-session raw maps and SAM embedding (a few MB) live this long after the last use
CACHE_SWEEP_S = 900  # how often Gradio's cache of served files is swept of files older than SESSION_TTL_S
STATUS_POLL_S = 2.0  # the model status line refreshes this often until every default model is ready
QUEUE_SIZE = 32  # requests waiting for a model job; more are refused at once with "queue full"

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
THRESHOLD_HINT = ("0 = off (reference behaviour: every map is stretched to full range); above 0, the raw value "
                  "the map the points come from must reach (CLIP Surgery by default).")
EXAMPLES = [
    ["rocket.jpg", "rocket, smoke, sky, giraffe"],
    ["astronaut.jpg", "person, flag, rocket+spacesuit"],
    ["chelsea.jpg", "cat, grass, cat+whiskers, dog"],
    ["coffee.jpg", "cup, coffee, spoon+saucer, pizza"],
    ["camera.jpg", "man, camera, tripod+coat, sky"],
]


PAGE_CSS = cards.CSS + """
#labels textarea::placeholder, .gradio-container .info, .gradio-container [data-testid="block-info"] + span {
  color: var(--body-text-color-subdued); }
#threshold input[type=range]:focus-visible { outline: 3px solid #0072b2; outline-offset: 2px; }
#details table { display: block; overflow-x: auto; white-space: nowrap; }
.gradio-container { overflow-x: hidden; }
#results-notice:empty { display: none; }
@media (max-width: 700px) { .gradio-container { padding: 4px !important; } }
"""
# The hint texts' colour: Gradio's subdued text measured 1.9:1 on white; this is 4.5:1 or more in both themes.
THEME = gr.themes.Default().set(body_text_color_subdued="#4b5563", body_text_color_subdued_dark="#c5cad3")
API_DESCRIPTION = (
    "CLIP Surgery Explorer: why CLIP matches an image to a word. /explain takes an image and labels and "
    "returns result.json's content (per label: found, points, presence, SAM mask score and area), a summary, "
    "and on request the zip of all outputs and the overlay images."
)


def inputs_for(handler: Callable, fields: dict[str, gr.components.Component]) -> list:
    """The components an event passes to `handler`, found by its parameter names, in its own order: the
    page never keeps a list of inputs in step with a signature by hand. Parameters without a component
    (Gradio's progress) must come last and have defaults."""
    inputs, skipped = [], None
    for name, parameter in inspect.signature(handler).parameters.items():
        if name in fields:
            if skipped is not None:
                raise TypeError(f"{handler.__name__}: parameter {name!r} comes after {skipped!r}, which has no component")
            inputs.append(fields[name])
        elif parameter.default is inspect.Parameter.empty:
            raise TypeError(f"{handler.__name__}: no page component for parameter {name!r}")
        else:
            skipped = name
    return inputs


def build_demo(handlers: Handlers, queue_size: int = QUEUE_SIZE) -> gr.Blocks:
    store = handlers.store
    with gr.Blocks(title="CLIP Surgery Explorer", delete_cache=(CACHE_SWEEP_S, SESSION_TTL_S)) as demo:
        gr.Markdown(INTRO)
        status_box = gr.Markdown("Loading model weights…", elem_id="model-status")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                image = SafeImage(type="pil", image_mode=None, label="Image", height=300, elem_id="image")
                labels = gr.Textbox(label="Labels", placeholder="person, bench, cat+grass", info=LABELS_HINT,
                                    elem_id="labels", max_lines=1, submit_btn=False)
                with gr.Accordion("Advanced", open=False, elem_id="advanced"):
                    backbone = ChoiceDropdown(store.clip_choices(), value=store.config.clip_model, label="Backbone",
                                           elem_id="backbone")
                    resolution = gr.Dropdown(RESOLUTIONS, value=DEFAULT_RESOLUTION, label="Input resolution",
                                             allow_custom_value=True,
                                             info="Snapped to a multiple of the backbone's patch size.")
                    redundancy = gr.Radio(list(REDUNDANCY_MODES), value=DEFAULT_REDUNDANCY, label="Redundancy",
                                          info="vocab: against 59 background classes (reference demo); "
                                               "labels: against your other labels; empty: against an empty prompt.")
                    sam_choice = ChoiceDropdown(store.sam_choices(), value=store.sam_choices()[0],
                                             label="SAM model", info="'off' skips masks.")
                    precision = gr.Radio(store.config.precisions(), value=store.config.default_precision(),
                                         label="Precision",
                                         info="Image encoders: fp32 is exact; bf16 (the GPU default) and fp16 are "
                                              "faster where the hardware runs them.")
                    instances = gr.Checkbox(False, label="Split instances (one mask per connected region)",
                                            elem_id="instances")
                    positive_only = gr.Checkbox(False, label="Send SAM positive points only")
                with gr.Row():
                    methods = MethodsGroup(
                        [(row.title, name) for name, row in METHOD_TABLE.items()], value=list(DEFAULT_METHODS),
                        label="Compare", info="The maps to compute; each label's card shows them side by side.",
                        elem_id="methods")
                    points_from = gr.Radio(
                        [(row.title, name) for name, row in METHOD_TABLE.items()],
                        value=default_points_from(DEFAULT_METHODS), label="Points from",
                        info="The map that decides found / not found and gives SAM's points; the threshold is on "
                             "its raw values.", elem_id="points-from")
                threshold = ThresholdSlider(0.0, 1.0, value=0.0, step=0.001, label="Threshold", info=THRESHOLD_HINT,
                                            elem_id="threshold")
                with gr.Row():
                    run_button = gr.Button("Run", variant="primary", scale=2, elem_id="run")
                    suggest_button = gr.Button("Suggest threshold", scale=1, elem_id="suggest")
            with gr.Column(scale=2, min_width=300, elem_id="results"):
                notice = gr.Markdown("", elem_id="results-notice")
                headline = gr.Markdown("Results appear here: one card per label.", elem_id="summary")
                masks = gr.AnnotatedImage(label="All masks (overview)", format="png", elem_id="masks", height=360)
                with gr.Row():
                    mask_label = gr.Dropdown([], label="Mask for label (found labels)", elem_id="mask-label")
                    mask_candidate = gr.Radio([("best", "best")], value="best",
                                              label="SAM candidate (number · score · area)", elem_id="mask-candidate")
                legend = gr.HTML(cards.legend_html(None), elem_id="legend")
                cards_box = gr.HTML("", elem_id="cards")
                gr.Markdown(cards.FOOTNOTE, elem_id="footnote")
                with gr.Accordion("About the methods", open=False):
                    gr.Markdown(cards.methods_markdown(), elem_id="about-methods")
                with gr.Accordion("Details: per-label table and time per stage", open=False):
                    details = gr.Markdown("", elem_id="details")
                with gr.Row():
                    download = gr.File(label="Download (zip)", elem_id="download")
                    result_file = gr.File(label="result.json", elem_id="result-json")
        examples = gr.Examples([[str(ASSETS / name), text] for name, text in EXAMPLES], inputs=[image, labels],
                               label="Examples (one absent label and one a+b target each): click to run")
        state = gr.State(None, time_to_live=SESSION_TTL_S)
        timer = gr.Timer(STATUS_POLL_S)
        include_files = gr.Checkbox(False, visible=False)
        api_result = gr.JSON(visible=False, label="result")
        api_summary = gr.Markdown(visible=False, label="summary")
        api_zip = gr.File(visible=False, label="zip")
        api_images = gr.Gallery(visible=False, format="png", label="images")
        api_button = gr.Button(visible=False)

        result_widgets = {"overview": masks, "notice": notice, "headline": headline, "legend": legend,
                          "cards": cards_box, "details": details, "zip": download, "result_json": result_file,
                          "mask_labels": mask_label}
        page_outputs = [result_widgets[name] for name in Handlers.PAGE_OUTPUT_NAMES]
        fields = {"image": image, "labels_text": labels, "threshold": threshold, "backbone": backbone,
                  "resolution": resolution, "redundancy": redundancy, "sam_choice": sam_choice,
                  "precision": precision, "instances": instances, "positive_only": positive_only,
                  "methods": methods, "points_from": points_from, "include_files": include_files,
                  "state": state, "mask_label": mask_label, "mask_candidate": mask_candidate}
        light = dict(concurrency_id="rerender", concurrency_limit=RERENDER_CONCURRENCY, show_progress="hidden",
                     api_visibility="private")
        demo.load(handlers.status, outputs=[status_box, timer], queue=False, api_visibility="private")
        timer.tick(handlers.status, outputs=[status_box, timer], queue=False, api_visibility="private")
        image.upload(handlers.screen_upload, inputs=[image], outputs=[image], preprocess=False, postprocess=False,
                     concurrency_id="validate", concurrency_limit=None, show_progress="hidden",
                     api_visibility="private").success(
            handlers.pre_encode, inputs=inputs_for(handlers.pre_encode, fields), outputs=None,
            concurrency_id="model", concurrency_limit=MODEL_CONCURRENCY, show_progress="hidden",
            api_visibility="private")
        for trigger in (run_button.click, labels.submit, examples.load_input_event.then):
            # Checked first, with no outputs and never waiting behind a model job: a refusal shows its
            # message and leaves the page as it was.
            trigger(handlers.validate, inputs=inputs_for(handlers.validate, fields), outputs=None,
                    concurrency_id="validate", concurrency_limit=None, show_progress="hidden",
                    api_visibility="private").success(
                handlers.run, inputs=inputs_for(handlers.run, fields), outputs=page_outputs + [state],
                concurrency_id="model",
                concurrency_limit=MODEL_CONCURRENCY, show_progress="minimal", api_visibility="private",
            ).success(handlers.slider_range, inputs=[state], outputs=[threshold], queue=False,
                      api_visibility="private")
        api_button.click(handlers.explain, inputs=inputs_for(handlers.explain, fields),
                         outputs=[api_result, api_summary, api_zip, api_images], api_name="explain",
                         api_description=API_DESCRIPTION, concurrency_id="model",
                         concurrency_limit=MODEL_CONCURRENCY)
        threshold.change(handlers.rethreshold, inputs=inputs_for(handlers.rethreshold, fields), outputs=page_outputs,
                         trigger_mode="always_last", **light)
        for option in (instances, positive_only):
            option.change(handlers.change_points, inputs=inputs_for(handlers.change_points, fields),
                          outputs=page_outputs, trigger_mode="always_last", **light)
        methods.change(handlers.points_for_methods, inputs=inputs_for(handlers.points_for_methods, fields),
                       outputs=[points_from], queue=False, api_visibility="private")
        points_from.change(handlers.change_points_from, inputs=inputs_for(handlers.change_points_from, fields),
                           outputs=page_outputs,
                           trigger_mode="always_last", **light).then(
            handlers.slider_range, inputs=[state], outputs=[threshold], queue=False, api_visibility="private")
        for option in (backbone, resolution, redundancy, sam_choice, precision, methods):
            option.change(handlers.mark_stale, inputs=[state], outputs=[notice], queue=False,
                          api_visibility="private")
        mask_candidate.change(handlers.choose_mask, inputs=inputs_for(handlers.choose_mask, fields),
                              outputs=page_outputs, trigger_mode="always_last", **light)
        mask_label.change(handlers.shown_candidate, inputs=inputs_for(handlers.shown_candidate, fields),
                          outputs=[mask_candidate],
                          queue=False, api_visibility="private")
        suggest_button.click(handlers.suggest, inputs=[state], outputs=[threshold], api_visibility="private",
                             concurrency_id="validate", concurrency_limit=None, show_progress="hidden")
    demo.queue(max_size=queue_size, default_concurrency_limit=MODEL_CONCURRENCY)
    return demo
