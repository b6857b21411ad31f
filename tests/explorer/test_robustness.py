"""Hostile and unusual input through the real /explain endpoint (gradio_client, one running app).

Every case ends in either a correct result (checked: size, decoded pixels, labels, notes) or
an error message that says what to do and shows nothing of the server's internals. Each case
uses a fresh Client (a fresh session) so that cases stay independent; what one session's
earlier requests do to its later ones is checked on purpose in `test_same_session_*`.
The last tests send one of each refusal themselves and check that the server still answers a valid
request and logged no unexpected exception.
"""

from __future__ import annotations

import json
import re

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file

import robust_media as media

ABOVE_EVERY_VALUE = 1.0  # the tiny random CLIP's raw surgery values stay far below this
GENERIC = "upstream Gradio app has raised an exception"  # what Gradio says when it has no message


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tmp_path_factory.mktemp("robust-media")


def explain(app, image, labels="cat, dog", threshold=0.0, *, client=None, **options):
    """One /explain call with fast defaults (224 px, SAM off) unless a case says otherwise."""
    options.setdefault("resolution", 224)
    options.setdefault("sam_choice", "off")
    client = client or Client(app.url, verbose=False)
    return client.predict(handle_file(str(image)), labels, threshold, api_name="/explain", **options)


def error_of(call) -> str:
    with pytest.raises(Exception) as error:
        call()
    return str(error.value)


def assert_clear(message: str, *says: str) -> None:
    """A message a person can act on: not empty, not Gradio's generic one, no internals,
    and containing each regular expression in `says` (case-insensitive)."""
    assert message and message.strip() and message.strip().lower() not in {"none", "null", "error"}, message
    assert GENERIC not in message, f"no real message, only Gradio's generic one: {message!r}"
    assert not media.LEAKS.search(message), f"message shows server internals: {message!r}"
    for pattern in says:
        assert re.search(pattern, message, re.IGNORECASE), f"{pattern!r} not in {message!r}"


def labels_of(result: dict) -> list[str]:
    return [entry["label"] for entry in result["labels"]]


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# --- the REST API without gradio_client (for values the client cannot even encode) -----

def call_rest(app, image, threshold_json: str, labels: str = "cat, dog") -> tuple[bool, object]:
    """POST /gradio_api/call/explain with a hand-written JSON body (every other parameter at its
    documented default, SAM off, 224 px); returns (succeeded, output data or error message)."""
    base = app.url.rstrip("/")
    with httpx.Client(timeout=120) as http:
        parameters = http.get(f"{base}/gradio_api/info").json()["named_endpoints"]["/explain"]["parameters"]
        with open(image, "rb") as handle:
            uploaded = http.post(f"{base}/gradio_api/upload", files=[("files", (image.name, handle))])
        uploaded.raise_for_status()
        given = {
            "image": json.dumps({"path": uploaded.json()[0], "meta": {"_type": "gradio.FileData"},
                                 "orig_name": image.name}),
            "labels_text": json.dumps(labels), "threshold": threshold_json,
            "resolution": "224", "sam_choice": json.dumps("off"),
        }
        values = [given.get(p["parameter_name"], json.dumps(p["parameter_default"])) for p in parameters]
        body = '{"data": [' + ", ".join(values) + "]}"
        succeeded, data, _ = media.call_explain_raw(http, base, body)
    return succeeded, data


# ===================================================================== images that must work

def check_format_case(app, path, expected_pixels=None, tolerance=0.0, sam=True):
    """Threshold above every value: nothing is found, no points are drawn, so the points
    gallery shows exactly the RGB image the server decoded."""
    outputs = explain(app, path, threshold=ABOVE_EVERY_VALUE, sam_choice="vit_b" if sam else "off",
                      include_files=True)
    result = media.result_json(outputs)
    width, height = media.image_size(path)
    assert (result["width"], result["height"]) == (width, height)
    assert labels_of(result) == ["cat", "dog"]
    assert all(not entry["found"] and entry["points"] == [] for entry in result["labels"])
    decoded = media.points_images(outputs)
    assert all(image.shape == (height, width, 3) for image in decoded)
    if expected_pixels is not None:
        assert mean_abs_diff(decoded[0], expected_pixels) <= tolerance
    return result, decoded[0]


@pytest.mark.parametrize("maker, tolerance", [
    (media.png, 0.0), (media.bmp, 0.0), (media.tiff, 0.0), (media.jpeg, 6.0), (media.webp, 6.0),
], ids=["png", "bmp", "tiff", "jpeg", "webp"])
def test_ordinary_formats(app, files, maker, tolerance):
    check_format_case(app, maker(files), np.asarray(media.base_rgb()), tolerance, sam=maker is media.jpeg)


def test_animated_gif_uses_first_frame(app, files):
    _, decoded = check_format_case(app, media.animated_gif(files))
    assert (decoded.reshape(-1, 3) == media.FIRST_FRAME_RGB).all(), "not frame 0 (red)"


def test_16bit_png_is_scaled_not_saturated(app, files):
    path16, path8 = media.png_16bit(files)
    ramp = media.gradient_8bit()
    _, decoded = check_format_case(app, path16, np.repeat(ramp[:, :, None], 3, axis=2), tolerance=0.0)
    assert decoded.min() == 0 and decoded.max() == 255 and len(np.unique(decoded)) > 100
    # with points, maps and masks: the 16-bit upload explains exactly like its 8-bit twin
    sixteen = media.result_json(explain(app, path16, threshold=0.0, sam_choice="vit_b"))
    eight = media.result_json(explain(app, path8, threshold=0.0, sam_choice="vit_b"))
    assert sixteen == eight
    assert any(entry["points"] for entry in sixteen["labels"])


def test_grayscale(app, files):
    gray = np.asarray(media.base_rgb().convert("L"))
    check_format_case(app, media.grayscale(files), np.repeat(gray[:, :, None], 3, axis=2))


def test_rgba_transparency_is_composited_on_white(app, files):
    _, decoded = check_format_case(app, media.rgba_transparent(files))
    half = decoded.shape[1] // 2
    assert (decoded[:, :half] == (255, 0, 0)).all()
    assert (decoded[:, half:] == 255).all(), "transparent pixels must become white, not black"


def test_cmyk_jpeg(app, files):
    check_format_case(app, media.cmyk_jpeg(files), np.asarray(media.base_rgb()), tolerance=8.0)


def test_palette_png(app, files):
    _, decoded = check_format_case(app, media.palette_png(files))
    width = decoded.shape[1]
    for band, colour in enumerate(media.PALETTE_COLOURS):
        column = band * width // 4 + width // 8
        assert (decoded[:, column] == colour).all(), f"band {band}"


def test_exif_rotation_is_applied(app, files):
    path = media.exif_rotated_jpeg(files)
    result, decoded = check_format_case(app, path)
    assert (result["width"], result["height"]) == (48, 96), "EXIF orientation 6 must give the rotated size"
    height, width = decoded.shape[:2]
    top_right = decoded[: height // 4, width * 3 // 4:].reshape(-1, 3).mean(axis=0)
    top_left = decoded[: height // 4, : width // 4].reshape(-1, 3).mean(axis=0)
    assert top_right[0] > 200 and top_right[1] < 60, "stored top-left red block must be shown top-right"
    assert top_left[0] < 80


# ===================================================================== images that must be refused

def test_truncated_jpeg(app, files):
    message = error_of(lambda: explain(app, media.truncated_jpeg(files)))
    assert_clear(message, r"truncated|corrupt", r"re-?export|re-?download|try again")


@pytest.mark.parametrize("maker", [media.zero_bytes, media.text_as_png], ids=["zero-bytes", "text-named-png"])
def test_not_an_image(app, files, maker):
    message = error_of(lambda: explain(app, maker(files)))
    assert_clear(message, r"not an image", r"JPEG|PNG")


def header_only(path) -> bytes:
    """A PNG cut just after its IDAT chunk's header: the size is all a reader can learn from it,
    and decoding any pixel fails (truncated)."""
    data = path.read_bytes()
    idat = data.index(b"IDAT")
    return data[: idat + 4 + 8]


@pytest.mark.parametrize("size", [(8000, 6000), (20000, 20000)], ids=["48MP", "400MP-bomb"])
def test_over_the_pixel_limit_is_refused_from_the_header_naming_the_limit(app, files, size):
    complete = media.huge_png(files, size)
    message = error_of(lambda: explain(app, complete))
    assert_clear(message, r"\b40\s*(MP|megapixels)", r"limit", r"downscale|smaller|resize")
    # The same header with no pixels behind it: only a refusal made from the header, before anything
    # is decoded, still names the limit (a decoder running first would find the file truncated).
    cut = files / f"header-only-{size[0]}x{size[1]}.png"
    cut.write_bytes(header_only(complete))
    message = error_of(lambda: explain(app, cut))
    assert_clear(message, r"\b40\s*(MP|megapixels)", r"limit", r"downscale|smaller|resize")
    assert not re.search(r"truncated|corrupt|not an image", message, re.IGNORECASE), message


def test_loader_names_the_limit_for_a_decompression_bomb(files):
    """The CLI's path, in process: surgery.preprocess.load_image under PIL's own bomb limit
    (PIL refuses at open() above 2 x MAX_IMAGE_PIXELS) must still name the 40 MP limit."""
    from surgery.errors import InputError
    from surgery.images import load_image

    with pytest.raises(InputError) as error:
        load_image(media.huge_png(files, (20000, 20000)))
    assert_clear(str(error.value), r"\b40\s*(MP|megapixels)", r"limit", r"downscale|smaller|resize")


def test_tiny_image(app, files):
    message = error_of(lambda: explain(app, media.tiny_image(files)))
    assert_clear(message, r"4\s*×\s*4|4x4", r"at least 8")


def test_file_over_upload_limit(app, files):
    """20 MB: gradio_client refuses before sending, the server with HTTP 413 and a message."""
    path = files / "noise.png"
    rng = np.random.default_rng(0)
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (2700, 2700, 3), dtype=np.uint8)).save(path, compress_level=1)
    assert path.stat().st_size > 20 * 1024 * 1024
    assert "maximum file size" in error_of(lambda: explain(app, path))
    with httpx.Client(timeout=60) as http, open(path, "rb") as handle:
        response = http.post(f"{app.url.rstrip('/')}/gradio_api/upload", files=[("files", ("noise.png", handle))])
    assert response.status_code == 413
    assert_clear(response.text, r"size")


# ===================================================================== labels

@pytest.mark.parametrize("labels", ["", ",,; ,", "+", None], ids=["empty", "separators", "plus", "none"])
def test_no_usable_label(app, files, labels):
    message = error_of(lambda: explain(app, media.jpeg(files), labels))
    assert_clear(message, r"label", r"e\.g\.|type")


def test_duplicates_are_shown_once_with_a_note(app, files):
    result = media.result_json(explain(app, media.jpeg(files), "cat, dog, Cat, cat, dog"))
    assert labels_of(result) == ["cat", "dog"]
    assert any("more than once" in note for note in result["notes"])
    assert all(entry["found"] for entry in result["labels"])


def test_too_many_labels(app, files):
    labels = ", ".join(f"thing {chr(97 + i)}" for i in range(17))
    message = error_of(lambda: explain(app, media.jpeg(files), labels))
    assert_clear(message, r"\b17\b", r"limit is 16", r"remove")


def test_very_long_label_is_shortened_with_a_note(app, files):
    words = "a large red car parked near an old stone house with green windows".split()
    label = " ".join(words[i % len(words)] for i in range(300))
    result = media.result_json(explain(app, media.jpeg(files), label))
    (kept,) = labels_of(result)
    assert 0 < len(kept.split()) < 77 and label.startswith(kept), kept
    assert any("shortened" in note and "77" in note for note in result["notes"])


@pytest.mark.parametrize("typed, expected, note", [
    ("a+", ["a"], "empty '+' part"),
    ("cat++dog", ["cat+dog"], "empty '+' part"),
    ("café, 猫", ["café", "猫"], None),
    ("🐱, 🚀+smoke", ["🐱", "🚀+smoke"], None),
], ids=["trailing-plus", "double-plus", "unicode", "emoji"])
def test_label_spellings(app, files, typed, expected, note):
    outputs = explain(app, media.jpeg(files), typed, include_files=True)
    result = media.result_json(outputs)
    assert labels_of(result) == expected
    captions = media.gallery_captions(outputs, ("CLIP", "CLIP Surgery"))
    assert captions == [f"{kind} · {text}" for text in expected for kind in ("CLIP", "CLIP Surgery")]
    if note:
        assert any(note in n for n in result["notes"]), result["notes"]
    else:
        assert result["notes"] == []


# ===================================================================== options

def test_threshold_above_every_value_finds_nothing(app, files):
    outputs = explain(app, media.jpeg(files), threshold=ABOVE_EVERY_VALUE, sam_choice="vit_b")
    result = media.result_json(outputs)
    assert result["threshold"] == ABOVE_EVERY_VALUE
    assert all(not e["found"] and e["points"] == [] and e["mask_area"] is None for e in result["labels"])
    assert "**Found:** none" in media.summary(outputs)


THRESHOLD_RULE = r"from 0 \(off\) to 10"


def test_negative_threshold_is_refused(app, files):
    """0 is off; a negative number is refused, in the API exactly as in the CLI (README, The threshold)."""
    message = error_of(lambda: explain(app, media.jpeg(files), threshold=-0.5))
    assert_clear(message, THRESHOLD_RULE, r"-0\.5")


def test_zero_threshold_is_off(app, files):
    result = media.result_json(explain(app, media.jpeg(files), threshold=0))
    assert result["threshold"] is None and all(entry["found"] for entry in result["labels"])


def test_huge_threshold_is_refused_clearly(app, files):
    message = error_of(lambda: explain(app, media.jpeg(files), threshold=1e9))
    assert_clear(message, THRESHOLD_RULE)


def test_threshold_that_is_not_a_number(app, files):
    message = error_of(lambda: explain(app, media.jpeg(files), threshold="abc"))
    assert_clear(message, r"number", THRESHOLD_RULE)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_threshold_over_rest_is_refused(app, files, value):
    """gradio_client cannot even encode these (strict JSON); a hand-written request reaches the app's
    own check, which refuses each of them with the rule."""
    ok, data = call_rest(app, media.jpeg(files), value)
    assert not ok, data
    assert_clear(data, THRESHOLD_RULE)


def test_resolution_as_the_documented_string(app, files):
    """view_api() documents resolution as Literal['224', '336', ...]: the string must work."""
    result = media.result_json(explain(app, media.jpeg(files), resolution="224"))
    assert result["resolution"] == 224


def test_resolution_not_in_the_list(app, files):
    try:
        result = media.result_json(explain(app, media.jpeg(files), resolution=999))
    except Exception as error:  # noqa: BLE001 - a refusal listing the choices is fine
        assert_clear(str(error), r"224", r"1024")
    else:  # or snapped to a usable size, with a note saying so
        assert 224 <= result["resolution"] <= 1024 and result["resolution"] % 16 == 0
        assert any("999" in note for note in result["notes"]), result["notes"]


@pytest.mark.parametrize("option, valid", [
    ("redundancy", "vocab"), ("sam_choice", "off"), ("precision", "fp32"), ("backbone", "ViT-B/16"),
])
def test_unknown_choice(app, files, option, valid):
    message = error_of(lambda: explain(app, media.jpeg(files), **{option: "bogus"}))
    assert_clear(message, re.escape(valid), r"choices|one of")


# ===================================================================== sessions

def test_same_session_threshold_range_does_not_shrink(app, files):
    """A script reuses one Client (one session). Running image A narrows the page's slider to
    A's values; that must not make a later API request with a valid threshold fail."""
    client = Client(app.url, verbose=False)
    explain(app, media.jpeg(files), threshold=0.0, client=client)
    result = media.result_json(explain(app, media.png(files), threshold=0.5, client=client))
    assert result["threshold"] == 0.5


def test_same_session_after_an_error_still_works(app, files):
    client = Client(app.url, verbose=False)
    error_of(lambda: explain(app, media.text_as_png(files), client=client))
    error_of(lambda: explain(app, media.jpeg(files), "", client=client))
    result = media.result_json(explain(app, media.jpeg(files), "dog", client=client))
    assert labels_of(result) == ["dog"]


# ===================================================================== afterwards

def hostile_requests(app, files) -> None:
    """One of each kind of refusal above, on fresh sessions, so that a test needing the server to
    have been through them does not depend on which tests ran before it."""
    for make in (media.truncated_jpeg, media.zero_bytes, media.text_as_png, media.tiny_image):
        error_of(lambda: explain(app, make(files)))
    error_of(lambda: explain(app, media.huge_png(files, (8000, 6000))))
    error_of(lambda: explain(app, media.jpeg(files), ",,; ,"))
    error_of(lambda: explain(app, media.jpeg(files), threshold="abc"))
    error_of(lambda: explain(app, media.jpeg(files), redundancy="bogus"))
    assert call_rest(app, media.jpeg(files), "NaN")[0] is False


def test_server_still_healthy_after_hostile_requests(app, files):
    hostile_requests(app, files)
    assert app.process.poll() is None, "server died"
    result = media.result_json(explain(app, media.BASE, "cat, grass, cat+whiskers", sam_choice="vit_b",
                                       resolution=512))
    assert labels_of(result) == ["cat", "grass", "cat+whiskers"]
    assert (result["width"], result["height"]) == (451, 300)
    assert any(entry["mask_area"] for entry in result["labels"] if entry["found"])


def test_no_unexpected_server_exception_logged(app, files):
    """Every refusal (its own hostile requests, and whatever else this server was sent before) was a
    UserError or a Gradio validation (both end as gradio's `Error`, which Gradio logs with a traceback
    too), never a crash inside a handler or in Gradio, nor a download cut short."""
    hostile_requests(app, files)
    log = app.log()
    assert "request failed" not in log, "app.user_errors caught an unexpected exception"
    unexpected = [line for line in unexpected_exceptions(log) if not line.startswith("gradio.exceptions.Error")]
    assert not unexpected, unexpected


def unexpected_exceptions(log: str) -> list[str]:
    """The final 'SomeError: message' line of each traceback in a server log."""
    finals = []
    for block in log.split("Traceback (most recent call last):")[1:]:
        lines = [line for line in block.splitlines() if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b", line)]
        finals.append(lines[0] if lines else block.strip().splitlines()[-1])
    return finals
