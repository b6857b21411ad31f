"""The page's clicks on a label's points and "Score against a mask", driven through the handlers directly
(the browser tests drive the same through the page)."""

from __future__ import annotations

import gradio as gr
import numpy as np
import PIL.Image
import pytest
from test_handlers import ROCKET, make_store, named, result_of

from explorer.handlers import Handlers


@pytest.fixture(scope="module")
def handlers(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("refine")
    store = make_store(tmp_path)
    yield Handlers(store, tmp_path / "served")
    store.close()


def run(handlers: Handlers, labels="rocket, smoke") -> dict:
    image = PIL.Image.open(ROCKET)
    *_, final = handlers.run(image, labels, 0, "ViT-B/16", 224, "vocab", "vit_b", "fp32")
    return named(final)


def click(handlers, state, label, x, y, edit):
    return handlers.edit_points(state, 0, gr.EventData(None, {"label": label, "x": x, "y": y, "edit": edit}))


def test_a_click_adds_one_point_and_decodes_that_label_only(handlers, calls):
    state = run(handlers)["state"]
    before = {entry["label"]: entry for entry in result_of(handlers.rethreshold(state, 0))["labels"]}
    calls.clear()
    after = click(handlers, state, "rocket", 100, 50, "positive")
    assert calls.count("SAM mask decoder") == 1 and calls.count("encoder") == 0, calls.lines
    result = result_of(after)
    rocket = result["labels"][0]
    assert result["extra_points"] == {"rocket": [[100, 50, 1]]}
    assert rocket["points"] == before["rocket"]["points"] + [[100, 50, 1]]
    assert result["labels"][1]["points"] == before["smoke"]["points"]  # the other label: unchanged, not decoded
    assert 'data-label="rocket"' in named(after)["cards"] and "(1 of them yours)" in named(after)["cards"]

    calls.clear()
    removed = result_of(click(handlers, state, "rocket", 101, 51, "remove"))  # nearest: the one just added
    assert removed["labels"][0]["points"] == before["rocket"]["points"] and removed["extra_points"] == {}
    assert calls.count("SAM mask decoder") == 0  # those points were decoded before
    derived = before["rocket"]["points"][0]
    gone = result_of(click(handlers, state, "rocket", derived[0], derived[1], "remove"))
    assert derived not in gone["labels"][0]["points"] and gone["removed_points"] == {"rocket": [derived]}
    reset = result_of(click(handlers, state, "rocket", 0, 0, "reset"))
    assert reset["labels"][0]["points"] == before["rocket"]["points"] and "removed_points" not in reset


def test_bad_clicks_are_refused(handlers):
    state = run(handlers, "rocket")["state"]
    height, width = state.image_rgb.shape[:2]
    for label, x, y, edit, words in (("giraffe", 1, 1, "positive", "not among the results"),
                                     ("rocket", width, 0, "positive", "outside"),
                                     ("rocket", 1, 1, "explode", "adds a positive or a negative point")):
        with pytest.raises(gr.Error, match=words):
            click(handlers, state, label, x, y, edit)


def painted(height: int, width: int, box: tuple[slice, slice]) -> dict:
    layer = np.zeros((height, width, 4), np.uint8)
    layer[box] = (255, 0, 200, 255)
    return {"background": None, "layers": [layer], "composite": None}


def test_scoring_a_painting_and_an_upload(handlers, tmp_path):
    state = run(handlers)["state"]
    height, width = state.image_rgb.shape[:2]
    box = (slice(100, 300), slice(250, 400))
    outputs = named(handlers.score_drawing(state, 0, "smoke", painted(height, width, box)))
    truth = result_of(tuple(outputs.values()))["truth"]
    assert truth["label"] == "smoke" and truth["area"] == 200 * 150
    assert set(truth["maps"]) == {"clip", "surgery"} and truth["sam_mask"] is not None
    assert 'class="truth-scores"' in outputs["scores"] and f"{truth['maps']['surgery']['iou']:.3f}" in outputs["scores"]
    mask = np.zeros((height, width), np.uint8)
    mask[box] = 255
    path = tmp_path / "mask.png"
    PIL.Image.fromarray(mask).save(path)
    uploaded = result_of(handlers.score_upload(state, 0, "smoke", PIL.Image.open(path)))["truth"]
    assert uploaded == truth
    assert "truth" in result_of(handlers.rethreshold(state, 0.001))  # a threshold move scores again
    assert "truth" not in result_of(handlers.clear_score(state, 0))
    with pytest.raises(gr.Error, match="Paint over the label"):
        handlers.score_drawing(state, 0, "smoke", painted(height, width, (slice(0, 0), slice(0, 0))))
    with pytest.raises(gr.Error, match="not the image's shape"):
        handlers.score_upload(state, 0, "smoke", PIL.Image.new("L", (50, 50), 255))
