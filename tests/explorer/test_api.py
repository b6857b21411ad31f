"""The scripting interfaces: the app's /explain endpoint through gradio_client, and the
page's behaviour when no weights can be obtained."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest
from gradio_client import Client, handle_file

from app_server import ROOT, TINY_CLIP, TINY_SAM, running_app, tiny_args

IMAGE = ROOT / "assets" / "chelsea.jpg"
LABELS = "cat, grass, cat+whiskers, Cat"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("app"), *tiny_args()) as server:
        yield server


def explain(app, **kwargs):
    client = Client(app.url, verbose=False)
    return client.predict(handle_file(str(IMAGE)), LABELS, api_name="/explain", **kwargs)


def test_api_result_equals_cli_result(app, tmp_path):
    outputs = explain(app, threshold=0)
    api_result = outputs[0]
    out = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "surgery", "explain", str(IMAGE), "--labels", LABELS,
                    "--clip-checkpoint", str(TINY_CLIP), "--sam-checkpoint", str(TINY_SAM), "--out", str(out)],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    cli_result = json.loads((out / "chelsea" / "result.json").read_text(encoding="utf-8"))
    assert api_result == cli_result
    assert [entry["label"] for entry in api_result["labels"]] == ["cat", "grass", "cat+whiskers"]
    assert all(entry["mask_area"] is not None for entry in api_result["labels"] if entry["found"])
    assert (api_result["width"], api_result["height"]) == (451, 300)


def test_large_upload_is_worked_on_at_1024_px_as_the_cli_does(app, tmp_path):
    from PIL import Image

    big = tmp_path / "big.png"
    Image.open(IMAGE).convert("RGB").resize((1804, 1200), Image.BICUBIC).save(big)
    client = Client(app.url, verbose=False)
    outputs = client.predict(handle_file(str(big)), "cat", api_name="/explain")
    api_result = outputs[0]
    assert (api_result["width"], api_result["height"]) == (1024, 681)
    assert (api_result["source_width"], api_result["source_height"]) == (1804, 1200)
    assert any("1804×1200" in note for note in api_result["notes"]), api_result["notes"]
    out = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "surgery", "explain", str(big), "--labels", "cat",
                    "--clip-checkpoint", str(TINY_CLIP), "--sam-checkpoint", str(TINY_SAM), "--out", str(out)],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    assert api_result == json.loads((out / "big" / "result.json").read_text(encoding="utf-8"))


def test_api_threshold_and_advanced_options(app):
    outputs = explain(app, threshold=1.0, resolution=224, redundancy="empty", sam_choice="off")
    result = outputs[0]
    assert result["resolution"] == 224 and result["redundancy"] == "empty" and result["sam_model"] is None
    assert all(not entry["found"] and entry["points"] == [] for entry in result["labels"])


def test_api_user_errors_are_clear_messages(app):
    client = Client(app.url, verbose=False)
    with pytest.raises(Exception) as error:
        client.predict(handle_file(str(IMAGE)), " , ; ", api_name="/explain")
    assert "No labels found" in str(error.value)
    assert "Traceback" not in str(error.value)


def test_page_answers_without_weights(tmp_path):
    """Offline and nothing cached: the page still loads and says what is missing and what to do."""
    with running_app(tmp_path, "--model", "ViT-B/16", wait_ready=False) as server:
        with urllib.request.urlopen(server.url, timeout=10) as response:
            assert response.status == 200
        client = Client(server.url, verbose=False)
        with pytest.raises(Exception) as error:
            client.predict(handle_file(str(IMAGE)), "cat", api_name="/explain")
        message = str(error.value)
        assert "not available" in message and "--clip-checkpoint" in message
        assert "Traceback" not in message
