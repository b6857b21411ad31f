"""The app with SAM 2.1 as its segmenter (a tiny random checkpoint in Meta's release format, loaded through
the real loader): everything SAM does in the app works the same: the upload pre-encode and the
embedding cache, decode-only threshold moves and clicks, several instances and the candidate choice,
the model calls as ZeroGPU tasks (`predict_many`), and the exports."""

from __future__ import annotations

import zipfile

import gradio as gr
import numpy as np
import PIL.Image
import pytest
from checkpoints import write_random_sam2_checkpoint
from test_handlers import ROCKET, make_store, named, result_of

from explorer.handlers import Handlers

SAM2 = "sam2.1_hiera_tiny"


@pytest.fixture(scope="module")
def handlers(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("sam2-app")
    checkpoint = write_random_sam2_checkpoint(tmp_path / "sam2_tiny.pt", "test")
    store = make_store(tmp_path, sam_model=SAM2, sam_checkpoint=checkpoint)
    yield Handlers(store, tmp_path / "served")
    store.close()


def test_pre_encode_run_moves_clicks_and_candidates_encode_each_image_once(handlers, calls):
    image = PIL.Image.open(ROCKET)
    assert handlers.pre_encode(image, "ViT-B/16", 224, SAM2, "fp32") is None
    assert calls.count("SAM image encoder") == 1
    *_, final = handlers.run(image, "rocket, smoke", 0, "ViT-B/16", 224, "vocab", SAM2, "fp32")
    state = named(final)["state"]
    assert calls.count("SAM image encoder") == 1  # Run reused the upload's encoding
    result = result_of(final)
    assert result["sam_model"] == "sam2_tiny.pt"
    rocket = result["labels"][0]
    assert rocket["found"] and len(rocket["mask_candidates"]) == 3 and rocket["mask_choice"] in (0, 1, 2)

    calls.clear()
    handlers.change_points(state, 0, False, True)  # new points (positives only): decoder only
    assert calls.count("encoder") == 0 and calls.count("SAM mask decoder") >= 1, calls.lines
    calls.clear()
    handlers.rethreshold(state, 0.01)  # the same points as at 0: their masks are cached
    assert calls.lines == []
    handlers.change_points(state, 0, False, False)
    calls.clear()
    clicked = handlers.edit_points(state, 0, gr.EventData(None, {"label": "rocket", "x": 100, "y": 50,
                                                                  "edit": "positive"}))
    assert calls.count("encoder") == 0 and calls.count("SAM mask decoder") == 1, calls.lines
    assert result_of(clicked)["extra_points"] == {"rocket": [[100, 50, 1]]}
    other = 1 if rocket["mask_choice"] != 1 else 2
    calls.clear()
    chosen = result_of(handlers.choose_mask(state, 0, "rocket", str(other + 1)))
    assert chosen["labels"][0]["mask_choice"] == other and calls.lines == []  # no model call

    with zipfile.ZipFile(named(clicked)["zip"]) as archive:  # the exports follow
        names = set(archive.namelist())
        assert {"result.json", "maps.npz", "coco.json", "mask_rocket.png", "sam_rocket.png"} <= names
        with np.load(archive.open("maps.npz")) as maps:
            assert maps["masks"].shape[0] == 2


def test_instances_and_the_api(handlers, calls):
    image = PIL.Image.open(ROCKET)
    result, *_ = handlers.explain(image, "rocket, smoke", 0, "ViT-B/16", 224, "vocab", SAM2, "fp32", instances=True)
    assert result["sam_model"] == "sam2_tiny.pt"
    found = [entry for entry in result["labels"] if entry["found"]]
    assert found and all(entry["instances"] and all(inst["mask_area"] is not None for inst in entry["instances"])
                         for entry in found)


def test_proxyclip_is_refused_with_sam_2_1_in_one_line(handlers):
    image = PIL.Image.open(ROCKET)
    with pytest.raises(gr.Error, match="SAM 2.1's Hiera encoder is not an equivalent yet"):
        handlers.explain(image, "rocket", 0, "ViT-B/16", 224, "vocab", SAM2, "fp32", methods=["proxyclip"])
