"""The page: its components and which handler each event calls."""

from __future__ import annotations

import inspect
import typing
from typing import Callable

import gradio as gr

from surgery.method.options import DEFAULT_REDUNDANCY, DEFAULT_RESOLUTION, REDUNDANCY_MODES
from surgery.method.table import DEFAULT_METHODS, METHOD_TABLE, default_points_from

from . import cards, large_view
from . import examples as example_pages
from .components import ChoiceDropdown, MethodsGroup, SafeImage, ThresholdSlider
from .handlers import Handlers

RESOLUTIONS = [224, 336, 448, 512, 640, 768, 896, 1024]
MODEL_CONCURRENCY = 1  # 2 cores: one model job at a time uses both; more would only contend
RERENDER_CONCURRENCY = 4
SESSION_TTL_S = 1800  # per-session raw maps and SAM embedding (a few MB) live this long after the last use
CACHE_SWEEP_S = 900  # how often Gradio's cache of served files is swept of files older than SESSION_TTL_S
STATUS_POLL_S = 2.0  # the model status line refreshes this often until every default model is ready
QUEUE_SIZE = 32  # requests waiting for a model job; more are refused at once with "queue full"

INTRO = """# CLIP Surgery Explorer
**Where does CLIP see a word in a picture?** Upload an image or click an example, type what to look for, press
**Run**: each label gets a card with where plain CLIP and [CLIP Surgery](https://arxiv.org/abs/2304.05653) find it
(red: a strong match) and the mask [Segment Anything](https://segment-anything.com) draws from it.
"""
WELCOME = """### Results appear here
One card per label you type, each with:

1. **the maps**: how strongly each place in the image matches the label (red: strong, blue: weak);
2. **the points**: the strongest (+) and weakest (−) places, which Segment Anything (SAM) is given;
3. **the mask**: what SAM cuts out from those points. Click the points to add your own.

Not sure where to start? Click an example under Run.
"""
LABELS_HINT = "Separate labels with commas. Join parts with + to look for them together: cat+grass."
THRESHOLD_HINT = ("How strongly a place must match a label to count (on the map the points come from). "
                  "0 = off: every label is found.")
SCORE_HELP = ("Mark the true pixels of one label, by painting over them on the picture or by uploading a "
              "black-and-white mask (white where the label is, the image's size), and see how well each map and "
              "SAM's mask cover them. A map's region is where it reaches the threshold (the map the points come "
              "from, with the threshold on) or else the upper half of its own range; docs/method.md §10 says "
              "exactly how.")


PAGE_CSS = cards.CSS + large_view.CSS + example_pages.CSS + """
#labels textarea::placeholder, .gradio-container .info, .gradio-container [data-testid="block-info"] + span {
  color: var(--body-text-color-subdued); }
#threshold input[type=range]:focus-visible { outline: 3px solid #0072b2; outline-offset: 2px; }
#details table { display: block; overflow-x: auto; white-space: nowrap; }
.gradio-container { overflow-x: hidden; }
#results-notice:empty, #threshold-note:empty { display: none; }
#intro h1 { margin: 0 0 4px; font-size: 1.6rem; }
#intro p { margin: 0; }
#model-status, #model-status p { font-size: 0.85rem; margin: 0; }
#model-status p { display: inline; }
#model-status p + p::before { content: " · "; }
#threshold-note { border-left: 4px solid #0072b2; padding-left: 8px; }
.truth-scores table { border-collapse: collapse; font-size: 0.95rem; }
.truth-scores th, .truth-scores td { padding: 3px 8px; text-align: left; vertical-align: top; font-size: 0.95rem;
  border: 1px solid var(--border-color-primary); }
.truth-scores td.iou { font-weight: 700; font-variant-numeric: tabular-nums; }
"""
# Rules for narrow screens go into <head> as they are (Gradio scopes @media rules of `css` to its content);
# they are !important to win over the scoped rules.
PAGE_HEAD = "<style>" + cards.MEDIA_CSS + large_view.MEDIA_CSS + """
@media (max-width: 700px) {
  .gradio-container { padding: 0 4px !important; }
  .gradio-container .main.fillable { padding-left: 6px !important; padding-right: 6px !important; }
  .gradio-container .contain .column { gap: 10px !important; }
  #results, #result-area { padding: 0 !important; }
  #cards > .html-container, #cards .prose { padding: 0 !important; }
}
</style>"""
# The hint texts' colour: Gradio's subdued text measured 1.9:1 on white; this is 4.5:1 or more in both themes.
THEME = gr.themes.Default().set(body_text_color_subdued="#4b5563", body_text_color_subdued_dark="#c5cad3")
API_DESCRIPTION = (
    "CLIP Surgery Explorer: why CLIP matches an image to a word. /explain takes an image and labels and "
    "returns result.json's content (per label: found, points, presence, SAM mask score and area), a summary, "
    "and on request the zip of all outputs and the overlay images. extra_points adds your own SAM points per "
    "label (removed_points leaves derived ones out); truth_label and truth_mask score each map and the mask "
    "against a ground-truth mask (IoU)."
)


def inputs_for(handler: Callable, fields: dict[str, gr.components.Component]) -> list:
    """The components an event passes to `handler`, found by its parameter names, in its own order: the
    page never keeps a list of inputs in step with a signature by hand. Parameters without a component
    (Gradio's progress) must come last and have defaults."""
    inputs, skipped = [], None
    hints = typing.get_type_hints(handler)
    for name, parameter in inspect.signature(handler).parameters.items():
        if isinstance(hints.get(name), type) and issubclass(hints[name], gr.EventData):
            continue  # Gradio passes the event's data itself
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
    with gr.Blocks(title="CLIP Surgery Explorer", delete_cache=(CACHE_SWEEP_S, SESSION_TTL_S), fill_width=True) as demo:
        gr.Markdown(INTRO, elem_id="intro")
        status_box = gr.Markdown("Loading model weights…", elem_id="model-status")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=320, elem_id="inputs"):
                image = SafeImage(type="pil", image_mode=None, label="Image", height=240, elem_id="image")
                labels = gr.Textbox(label="Labels", placeholder="person, bench, cat+grass", info=LABELS_HINT,
                                    elem_id="labels", max_lines=1, submit_btn=False)
                threshold = ThresholdSlider(0.0, 1.0, value=0.0, step=0.001, label="Threshold", info=THRESHOLD_HINT,
                                            elem_id="threshold")
                with gr.Row():
                    run_button = gr.Button("Run", variant="primary", scale=1, elem_id="run")
                    suggest_button = gr.Button("Suggest threshold", scale=1, elem_id="suggest")
                threshold_note = gr.Markdown("", elem_id="threshold-note")
                examples = gr.HTML(example_pages.examples_html(), elem_id="examples",
                                   js_on_load=example_pages.SCRIPT)
                with gr.Accordion("Advanced: methods and options", open=False, elem_id="advanced"):
                    methods = MethodsGroup(
                        [(row.title, name) for name, row in METHOD_TABLE.items()], value=list(DEFAULT_METHODS),
                        label="Compare", info="The maps to compute; each label's card shows them side by side.",
                        elem_id="methods")
                    points_from = gr.Radio(
                        [(row.title, name) for name, row in METHOD_TABLE.items()],
                        value=default_points_from(DEFAULT_METHODS), label="Points from",
                        info="The map that decides found / not found and gives SAM's points; the threshold is on "
                             "its values.", elem_id="points-from")
                    backbone = ChoiceDropdown(store.clip_choices(), value=store.config.clip_model, label="Backbone",
                                              elem_id="backbone")
                    resolution = gr.Dropdown(RESOLUTIONS, value=DEFAULT_RESOLUTION, label="Input resolution",
                                             allow_custom_value=True,
                                             info="Snapped to a multiple of the backbone's patch size.")
                    redundancy = gr.Radio(list(REDUNDANCY_MODES), value=DEFAULT_REDUNDANCY, label="Redundancy",
                                          info="What CLIP Surgery takes away as shared by every label. vocab: "
                                               "estimated from 59 everyday background words (as the reference "
                                               "demo); labels: from your other labels; empty: from an empty text. "
                                               "See the glossary.")
                    sam_choice = ChoiceDropdown(store.sam_choices(), value=store.sam_choices()[0],
                                                label="SAM model", info="'off' skips masks.")
                    precision = gr.Radio(store.config.precisions(), value=store.config.default_precision(),
                                         label="Precision",
                                         info="Image encoders: fp32 is exact; bf16 (the GPU default) and fp16 are "
                                              "faster where the hardware runs them.")
                    instances = gr.Checkbox(False, label="Split instances (one mask per connected region)",
                                            elem_id="instances")
                    positive_only = gr.Checkbox(False, label="Send SAM positive points only")
            with gr.Column(scale=2, min_width=300, elem_id="results"):
                welcome = gr.Markdown(WELCOME, elem_id="welcome")
                with gr.Column(visible=False, elem_id="result-area") as result_area:
                    notice = gr.Markdown("", elem_id="results-notice")
                    headline = gr.Markdown("", elem_id="summary")
                    legend = gr.HTML(cards.legend_html(None), elem_id="legend", js_on_load=None)
                    cards_box = gr.HTML("", elem_id="cards", js_on_load=large_view.SCRIPT)
                    gr.Markdown(cards.HOW_TO_READ, elem_id="how-to-read")
                    with gr.Accordion("All masks together", open=True, elem_id="overview"):
                        masks = gr.AnnotatedImage(label="All masks", format="png", elem_id="masks", height=360)
                        with gr.Row():
                            mask_label = gr.Dropdown([], label="Another of SAM's masks for", elem_id="mask-label")
                            mask_candidate = gr.Radio([("best", "best")], value="best",
                                                      label="SAM's candidate (number · quality estimate · area)",
                                                      elem_id="mask-candidate")
                    with gr.Accordion("Score against a mask", open=False, elem_id="score"):
                        gr.Markdown(SCORE_HELP)
                        truth_choice = gr.Dropdown([], label="The label your mask marks", elem_id="truth-label")
                        with gr.Tabs():
                            with gr.Tab("Paint on the image", elem_id="truth-draw-tab"):
                                truth_drawing = gr.ImageEditor(
                                    type="numpy", sources=(), transforms=(), layers=False,
                                    brush=gr.Brush(colors=["#ff00c8"], color_mode="fixed"), eraser=gr.Eraser(),
                                    label="Paint over the label's pixels", elem_id="truth-editor", height=420)
                                score_drawn = gr.Button("Score this painting", elem_id="score-drawing")
                            with gr.Tab("Upload a mask", elem_id="truth-upload-tab"):
                                truth_upload = SafeImage(type="pil", image_mode=None, sources=["upload"],
                                                         label="Black-and-white mask (white: the label)",
                                                         elem_id="truth-upload", height=260)
                        scores = gr.HTML("", elem_id="truth-scores", js_on_load=None)
                        clear_scores = gr.Button("Stop scoring", size="sm", elem_id="clear-scores")
                    with gr.Accordion("Details: per-label table and time per stage", open=False):
                        details = gr.Markdown("", elem_id="details")
                    with gr.Row():
                        download = gr.File(label="Download (zip)", elem_id="download")
                        result_file = gr.File(label="result.json", elem_id="result-json")
        with gr.Accordion("Glossary: the technical words", open=False, elem_id="glossary"):
            gr.Markdown(cards.GLOSSARY)
        with gr.Accordion("About the methods", open=False):
            gr.Markdown(cards.methods_markdown(), elem_id="about-methods")
        state = gr.State(None, time_to_live=SESSION_TTL_S)
        timer = gr.Timer(STATUS_POLL_S)
        include_files = gr.Checkbox(False, visible=False)
        extra_points = gr.JSON(visible=False, label="extra_points")
        removed_points = gr.JSON(visible=False, label="removed_points")
        truth_label = gr.Textbox(visible=False, label="truth_label")
        truth_mask = SafeImage(type="pil", image_mode=None, visible=False, label="truth_mask")
        api_result = gr.JSON(visible=False, label="result")
        api_summary = gr.Markdown(visible=False, label="summary")
        api_zip = gr.File(visible=False, label="zip")
        api_images = gr.Gallery(visible=False, format="png", label="images")
        api_button = gr.Button(visible=False)

        result_widgets = {"overview": masks, "notice": notice, "headline": headline, "legend": legend,
                          "cards": cards_box, "details": details, "zip": download, "result_json": result_file,
                          "mask_labels": mask_label, "scores": scores, "result_area": result_area,
                          "welcome": welcome}
        page_outputs = [result_widgets[name] for name in Handlers.PAGE_OUTPUT_NAMES]
        fields = {"image": image, "labels_text": labels, "threshold": threshold, "backbone": backbone,
                  "resolution": resolution, "redundancy": redundancy, "sam_choice": sam_choice,
                  "precision": precision, "instances": instances, "positive_only": positive_only,
                  "methods": methods, "points_from": points_from, "include_files": include_files,
                  "extra_points": extra_points, "truth_label": truth_label, "truth_mask": truth_mask,
                  "removed_points": removed_points,
                  "state": state, "mask_label": mask_label, "mask_candidate": mask_candidate,
                  "truth_choice": truth_choice, "truth_drawing": truth_drawing, "truth_upload": truth_upload,
}
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
        example_loaded = examples.click(handlers.load_example, inputs=None, outputs=[image, labels], queue=False,
                                        api_visibility="private").then
        for trigger in (run_button.click, labels.submit, example_loaded):
            # Checked first, with no outputs and never waiting behind a model job: a refusal shows its
            # message and leaves the page as it was.
            trigger(handlers.validate, inputs=inputs_for(handlers.validate, fields), outputs=None,
                    concurrency_id="validate", concurrency_limit=None, show_progress="hidden",
                    api_visibility="private").success(
                handlers.run, inputs=inputs_for(handlers.run, fields), outputs=page_outputs + [state],
                concurrency_id="model",
                concurrency_limit=MODEL_CONCURRENCY, show_progress="minimal", api_visibility="private",
            ).success(handlers.slider_range, inputs=[state], outputs=[threshold, threshold_note], queue=False,
                      api_visibility="private").then(
                handlers.prepare_scoring, inputs=[state], outputs=[truth_drawing, truth_choice], queue=False,
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
        # Every click counts (each adds or removes a point), one after another.
        cards_box.click(handlers.edit_points, inputs=inputs_for(handlers.edit_points, fields), outputs=page_outputs,
                        trigger_mode="multiple", **light)
        methods.change(handlers.points_for_methods, inputs=inputs_for(handlers.points_for_methods, fields),
                       outputs=[points_from], queue=False, api_visibility="private")
        points_from.change(handlers.change_points_from, inputs=inputs_for(handlers.change_points_from, fields),
                           outputs=page_outputs,
                           trigger_mode="always_last", **light).then(
            handlers.slider_range, inputs=[state], outputs=[threshold, threshold_note], queue=False,
            api_visibility="private")
        for option in (backbone, resolution, redundancy, sam_choice, precision, methods):
            option.change(handlers.mark_stale, inputs=[state], outputs=[notice], queue=False,
                          api_visibility="private")
        mask_candidate.change(handlers.choose_mask, inputs=inputs_for(handlers.choose_mask, fields),
                              outputs=page_outputs, trigger_mode="always_last", **light)
        mask_label.change(handlers.shown_candidate, inputs=inputs_for(handlers.shown_candidate, fields),
                          outputs=[mask_candidate],
                          queue=False, api_visibility="private")
        suggest_button.click(handlers.suggest, inputs=inputs_for(handlers.suggest, fields),
                             outputs=[threshold, threshold_note] + page_outputs, **light)
        score_drawn.click(handlers.score_drawing, inputs=inputs_for(handlers.score_drawing, fields),
                          outputs=page_outputs, **light)
        truth_upload.upload(handlers.score_upload, inputs=inputs_for(handlers.score_upload, fields),
                            outputs=page_outputs, **light)
        clear_scores.click(handlers.clear_score, inputs=inputs_for(handlers.clear_score, fields),
                           outputs=page_outputs, **light)
    demo.queue(max_size=queue_size, default_concurrency_limit=MODEL_CONCURRENCY)
    return demo
