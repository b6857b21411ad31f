"""The app's handlers driven directly, without a server: upload pre-encode, Run, a threshold move,
a mask-candidate choice, and the model store's lifetime rules (sessions hold names, not models)."""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from explorer import session as S
from explorer.handlers import GENERIC_ERROR, Handlers
from explorer.model_store import ModelConfig, ModelStore
from surgery.loading import load_clip, load_segmenter

DATA = Path(__file__).resolve().parents[1] / "data"
TINY_CLIP = DATA / "parity" / "weights.safetensors"
TINY_CLIP_RN = DATA / "parity-rn" / "weights.safetensors"
TINY_SAM = DATA / "sam_tiny.safetensors"
ROCKET = Path(__file__).resolve().parents[2] / "assets" / "rocket.jpg"


def make_store(tmp_path: Path, **overrides) -> ModelStore:
    config = dict(clip_model="ViT-B/16", clip_checkpoint=TINY_CLIP, sam_model="vit_b", sam_checkpoint=TINY_SAM,
                  text_cache_dir=tmp_path / "text", device="cpu")
    config.update(overrides)
    store = ModelStore(ModelConfig(**config))
    store.start()
    return store


@pytest.fixture()
def handlers(tmp_path):
    store = make_store(tmp_path)
    yield Handlers(store, tmp_path / "served")
    store.close()


def named(outputs: tuple) -> dict:
    """A render's outputs by name (Run's also carry the session state)."""
    return dict(zip(Handlers.PAGE_OUTPUT_NAMES + ("state",), outputs))


def result_of(outputs: tuple) -> dict:
    return json.loads(Path(named(outputs)["result_json"]).read_text())


def rocket_upload() -> PIL.Image.Image:
    image = PIL.Image.open(ROCKET)
    image.load()
    return image


def run_all(handlers: Handlers, image, labels="rocket, smoke, giraffe", threshold=0.0, sam="vit_b", **options):
    return list(handlers.run(image, labels, threshold, "ViT-B/16", 224, "vocab", sam, "fp32", **options))


def test_upload_pre_encode_makes_run_encode_nothing(handlers, calls):
    image = rocket_upload()
    assert handlers.pre_encode(image, "ViT-B/16", 224, "vit_b", "fp32") is None
    assert calls.count("CLIP image encoder") == 1 and calls.count("SAM image encoder") == 1
    yields = run_all(handlers, image)
    assert calls.count("CLIP image encoder") == 1 and calls.count("SAM image encoder") == 1  # Run reused both
    assert len(yields) == 2  # heatmaps first, then the masks
    result = result_of(yields[-1])
    assert [entry["label"] for entry in result["labels"]] == ["rocket", "smoke", "giraffe"]
    assert all(entry["mask_area"] is not None for entry in result["labels"] if entry["found"])


def test_run_threshold_move_and_candidate_choice(handlers, calls):
    image = rocket_upload()
    first, final = run_all(handlers, image)
    first, final = named(first), named(final)
    state = final["state"]
    assert first["zip"] is None and first["result_json"] is None  # no downloads until SAM is done
    assert "computing masks" in first["cards"] and "Computing masks" in first["headline"]
    assert "computing" not in final["cards"] + final["headline"] + final["details"]
    assert final["cards"].count('class="label-card ') == 3 and final["cards"].count('<div class="card-histogram"><svg') == 3
    assert final["cards"].count("sam_") == 3  # each found label's mask picture (a button, no link)
    assert isinstance(state, S.SessionState) and state.sam_key == ("vit_b", "fp32")
    assert final["mask_labels"]["choices"] == ["rocket", "smoke", "giraffe"]
    assert Path(final["zip"]).is_file() and final["overview"] is not None

    encoders = calls.count("image encoder")
    top = max(float(lm.parts["surgery"].max()) for lm in state.maps.labels)
    moved = handlers.rethreshold(state, top + 0.01)  # above every value: nothing found
    assert calls.count("image encoder") == encoders
    moved_result = result_of(moved)
    assert moved_result["threshold"] == pytest.approx(top + 0.01)
    assert not any(entry["found"] for entry in moved_result["labels"]) and "**Found:** none" in named(moved)["headline"]

    back = handlers.rethreshold(state, 0)
    decodes = calls.count("SAM mask decoder")
    chosen = handlers.choose_mask(state, 0, "rocket", "3")
    assert calls.count("SAM mask decoder") == decodes  # a candidate choice decodes nothing
    rocket = result_of(chosen)["labels"][0]
    assert rocket["mask_choice"] == 2 and "(candidate 3)" in named(chosen)["details"]
    assert "SAM mask (candidate 3)" in named(chosen)["cards"]
    assert rocket["mask_area"] == rocket["mask_candidates"][2]["area"]
    shown = handlers.shown_candidate(state, "rocket")
    assert shown["value"] == "3" and [value for _, value in shown["choices"]] == ["best", "1", "2", "3"]
    for (text, _), candidate in zip(shown["choices"][1:], rocket["mask_candidates"]):
        area = candidate["area"] / (result_of(chosen)["width"] * result_of(chosen)["height"])
        assert text.split(" · ")[1:] == [f"{candidate['score']:.2f}", f"{area:.0%}"]
    best = result_of(handlers.choose_mask(state, 0, "rocket", "best"))["labels"][0]
    assert best["mask_choice"] == int(np.argmax([c["score"] for c in best["mask_candidates"]]))
    assert result_of(back)["threshold"] is None


def test_threshold_meaning_is_the_same_as_the_cli(handlers):
    """0: off; a positive number: applied; negative: refused (as `python -m surgery explain --threshold`)."""
    import gradio as gr

    image = rocket_upload()
    off = result_of(run_all(handlers, image, threshold=0, sam="off")[-1])
    assert off["threshold"] is None and all(entry["found"] for entry in off["labels"])
    applied = result_of(run_all(handlers, image, threshold=9.5, sam="off")[-1])
    assert applied["threshold"] == 9.5 and not any(entry["found"] for entry in applied["labels"])
    with pytest.raises(gr.Error, match=r"from 0 \(off\) to 10; got -0.5"):
        run_all(handlers, image, threshold=-0.5, sam="off")


def test_suggest_needs_a_run_and_says_why_it_cannot_be_used(handlers):
    """A warning, never an error: the slider is Suggest's output and must stay as it was. A suggestion a
    threshold cannot be (here: the maps are flat; below 0 likewise) leaves the slider and says why under it;
    either way the cards are drawn again with the suggestion marked."""
    with pytest.warns(UserWarning, match="Run first"):
        slider, note, *rest = handlers.suggest(None, 0)
        assert slider == {"__type__": "update"} and note == ""
    state = named(run_all(handlers, rocket_upload(), sam="off")[-1])["state"]

    def shifted(by: float) -> S.SessionState:
        """The run's session with every CLIP Surgery value moved by `by` (Otsu's cut moves with them)."""
        moved = S.SessionState(state.image_rgb, state.maps, "tiny", None, None, None, ())
        moved.maps = type(state.maps)(state.maps.width, state.maps.height, state.maps.options, tuple(
            type(lm)(lm.label, {**lm.parts, "surgery": lm.parts["surgery"] + by}, lm.maps, lm.presence,
                     lm.points_from) for lm in state.maps.labels))
        return moved

    above = shifted(1.0)
    slider, note, *page_outputs = handlers.suggest(above, 0)
    values = np.concatenate([lm.parts["surgery"].ravel() for lm in above.maps.labels])
    assert values.min() < slider["value"] < values.max() and note == ""
    assert 'class="suggested"' in named(page_outputs)["cards"]
    slider, note, *page_outputs = handlers.suggest(shifted(-10.0), 0)
    assert slider == {"__type__": "update"} and "outside what a threshold can be" in note
    assert "left as it was" in note and 'class="suggested"' in named(page_outputs)["cards"]
    flat = S.SessionState(state.image_rgb, state.maps, "tiny", None, None, None, ())
    flat.maps = type(state.maps)(state.maps.width, state.maps.height, state.maps.options,
                                 tuple(type(lm)(lm.label, {**lm.parts, "surgery": np.zeros_like(lm.parts["surgery"])},
                                                lm.maps, lm.presence, lm.points_from)
                                       for lm in state.maps.labels))
    slider, note, *_ = handlers.suggest(flat, 0)
    assert slider == {"__type__": "update"} and "no threshold to suggest" in note and "left as it was" in note



def test_an_unexpected_error_is_a_generic_message_and_a_logged_traceback(handlers, caplog):
    """A failure after the first yield (SAM failing once the heatmaps are shown) reaches the page as
    the generic message, and the log keeps the full traceback."""
    import gradio as gr

    segmenter = handlers.store.sam("vit_b", "fp32")
    original = segmenter.embed

    def broken(image_rgb):
        raise RuntimeError("simulated failure inside SAM")

    segmenter.embed = broken
    try:
        steps = handlers.run(rocket_upload(), "rocket", 0, "ViT-B/16", 224, "vocab", "vit_b", "fp32")
        heatmaps_first = next(steps)
        assert "computing masks" in named(heatmaps_first)["cards"]
        with caplog.at_level(logging.ERROR, logger="app"), pytest.raises(gr.Error) as raised:
            next(steps)
    finally:
        segmenter.embed = original
    assert str(raised.value.message) == GENERIC_ERROR
    assert "simulated failure inside SAM" in caplog.text and "Traceback" in caplog.text


def test_masks_that_arrive_follow_a_threshold_moved_while_sam_works(handlers):
    """A move made during Run's SAM step is the one the masks are made for (held with an event)."""
    segmenter = handlers.store.sam("vit_b", "fp32")
    original = segmenter.embed
    release, encoding = threading.Event(), threading.Event()

    def held(image_rgb):
        encoding.set()
        assert release.wait(60)
        return original(image_rgb)

    segmenter.embed = held
    try:
        steps = handlers.run(rocket_upload(), "rocket, smoke", 0, "ViT-B/16", 224, "vocab", "vit_b", "fp32")
        first = next(steps)
        state = named(first)["state"]
        finished = []
        runner = threading.Thread(target=lambda: finished.append(next(steps)))
        runner.start()
        assert encoding.wait(60)
        top = max(float(lm.parts["surgery"].max()) for lm in state.maps.labels)
        moved = handlers.rethreshold(state, top + 0.01)  # while SAM encodes: shown as computing…
        assert named(moved)["zip"] is None and not any(view.found for view in S.rerender(state, top + 0.01, None).labels)
        release.set()
        runner.join(60)
    finally:
        segmenter.embed = original
    result = result_of(finished[0])
    assert result["threshold"] == pytest.approx(top + 0.01)
    assert not any(entry["found"] for entry in result["labels"])


def test_an_evicted_model_is_freed_and_sessions_ask_the_store_again(tmp_path, calls):
    """Sessions hold names: a model evicted from the store is really freed, the status line does not
    say "loading" forever, and an old session's threshold move loads SAM again and still works."""
    store = make_store(tmp_path, max_loaded=1, backbone_checkpoints={"RN50": TINY_CLIP_RN})
    handlers = Handlers(store, tmp_path / "served")
    try:
        state = named(run_all(handlers, rocket_upload(), labels="rocket, smoke")[-1])["state"]
        default_clip = weakref.ref(store.clip("ViT-B/16"))
        default_sam = weakref.ref(store.sam("vit_b", "fp32"))
        store.clip("RN50")  # the one CLIP slot goes to RN50
        try:  # the one SAM slot goes to vit_b in bf16 (loaded, or refused where the CPU lacks bf16)
            store.sam("vit_b", "bf16")
        except Exception:  # noqa: BLE001 - either way the fp32 model was evicted
            pass
        gc.collect()
        assert default_clip() is None and default_sam() is None
        text, ready = store.status()
        assert ready and "loading" not in text and text.count("unloaded to free memory") == 2
        encodings = calls.count("SAM image encoder")
        moved = result_of(handlers.rethreshold(state, 0))
        assert calls.count("SAM image encoder") == encodings + 1  # the reloaded SAM embeds the image again
        assert all(entry["mask_area"] is not None for entry in moved["labels"] if entry["found"])
        assert f"**SAM {TINY_SAM.name}**: ready on cpu" in store.status()[0]
    finally:
        store.close()


def test_a_slow_load_reports_progress_while_it_waits(tmp_path):
    """The loading wait catches concurrent.futures' timeout (a different class before Python 3.11)."""
    def slow_clip(*args, **kwargs):
        time.sleep(1.6)
        return load_clip(*args, **kwargs)

    store = ModelStore(ModelConfig(clip_checkpoint=TINY_CLIP, load_sam=False), loaders=(slow_clip, load_segmenter))
    messages: list[str] = []
    try:
        explainer = store.clip(progress=messages.append)
    finally:
        store.close()
    assert explainer.name == TINY_CLIP.name
    assert len(messages) >= 2 and all(m.startswith(f"Loading CLIP {TINY_CLIP.name} weights…") for m in messages)


def test_validate_refuses_before_the_queue_and_run_is_never_reached(handlers, calls):
    import gradio as gr

    image = rocket_upload()
    base = [image, "rocket", 0, "ViT-B/16", 224, "vocab", "vit_b", "fp32", False, False]
    assert handlers.validate(*base) is None
    cases = {
        "no image": ([None] + base[1:], "Upload an image"),
        "no labels": (base[:1] + [" , "] + base[2:], "No labels found"),
        "too many": (base[:1] + [", ".join(f"l{i}" for i in range(20))] + base[2:], "limit is 16"),
        "negative threshold": (base[:2] + [-1] + base[3:], "from 0"),
        "bad redundancy": (base[:5] + ["nope"] + base[6:], "Redundancy must be"),
        "bad SAM": (base[:6] + ["vit_z"] + base[7:], "Unknown SAM model"),
        "bad precision": (base[:7] + ["fp8"] + base[8:], "Precision must be"),
        "bad resolution": (base[:4] + ["big"] + base[5:], "whole number of pixels"),
    }
    for name, (args, message) in cases.items():
        with pytest.raises(gr.Error, match=message):
            handlers.validate(*args)
    assert calls.lines == []  # no model was touched


def test_options_changed_after_a_run_mark_the_results_stale(handlers):
    assert handlers.mark_stale(None) == ""
    state = named(run_all(handlers, rocket_upload(), sam="off")[-1])["state"]
    assert "previous options" in handlers.mark_stale(state)
    assert named(handlers.rethreshold(state, 0))["notice"] == ""  # a new render clears it


def test_slider_range_follows_the_image(handlers):
    state = named(run_all(handlers, rocket_upload(), sam="off")[-1])["state"]
    top = max(float(lm.parts["surgery"].max()) for lm in state.maps.labels)
    slider, note = handlers.slider_range(state)
    maximum = slider["maximum"]
    assert note == ""  # an earlier suggestion's note goes
    assert top < maximum <= max(0.05, top * 1.2 + 0.01)


def test_the_api_returns_plain_values_and_files_only_on_request(handlers):
    image = rocket_upload()
    result, summary, zip_path, images = handlers.explain(image, "rocket, smoke", 0, "ViT-B/16", 224, "vocab",
                                                         "vit_b", "fp32")
    assert isinstance(result, dict) and [entry["label"] for entry in result["labels"]] == ["rocket", "smoke"]
    assert result["sam_model"] == TINY_SAM.name and "**Found:**" in summary and "| label |" in summary
    assert zip_path is None and images == []
    again = handlers.explain(image, "rocket, smoke", 0, "ViT-B/16", 224, "vocab", "vit_b", "fp32",
                             include_files=True)
    assert again[0] == result
    import zipfile

    with zipfile.ZipFile(again[2]) as archive:
        assert json.loads(archive.read("result.json")) == result
        assert {"hist_rocket.png", "sam_rocket.png", "maps.npz", "coco.json"} <= set(archive.namelist())
    captions = [caption for _, caption in again[3]]
    assert captions[:4] == ["CLIP · rocket", "CLIP Surgery · rocket", "Points · rocket", "SAM · rocket"]
    assert all(Path(path).is_file() for path, _ in again[3])


def test_one_method_alone_takes_the_points_from_it_in_the_api_and_on_the_page(handlers):
    """`methods=["sclip"]` without points_from was refused (the points defaulted to CLIP Surgery)."""
    result, *_ = handlers.explain(rocket_upload(), "rocket, smoke", 0, "ViT-B/16", 224, "vocab", "off", "fp32",
                                  methods=["sclip"])
    assert result["methods"] == ["sclip"] and result["points_from"] == "sclip"
    # On the page, "Points from" follows Compare when the map it names is no longer ticked
    assert handlers.points_for_methods(["sclip", "naclip"], "surgery")["value"] == "sclip"
    assert handlers.points_for_methods(["clip", "surgery", "naclip"], "clip") == {"__type__": "update"}
    assert handlers.points_for_methods(["naclip", "surgery"], "clip")["value"] == "surgery"
