"""The scripting interfaces: the app's /explain endpoint through gradio_client, and the
page's behaviour when no weights can be obtained."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest
from gradio_client import Client, handle_file

from app_server import ROOT, TINY_CLIP, TINY_SAM, running_app

IMAGE = ROOT / "assets" / "chelsea.jpg"
LABELS = "cat, grass, cat+whiskers, Cat"


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
    assert result["precision"] == "fp32"  # the device's default (the test app runs on the CPU)
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


def test_readme_api_example_runs_as_printed(app, tmp_path):
    """The README's client example, with only the server's URL and the image's path made local."""
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    code = re.search(r"### API\n\n```python\n(.*?)```", readme, re.S).group(1)
    assert 'Client("http://127.0.0.1:7860/")' in code and 'handle_file("assets/rocket.jpg")' in code
    code = code.replace("http://127.0.0.1:7860/", app.url).replace('"assets/rocket.jpg"',
                                                                 repr(str(ROOT / "assets" / "rocket.jpg")))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()[-3:]  # gradio_client first says where it connected
    assert [line.split()[0] for line in lines] == ["rocket", "smoke", "sky"]


def test_plain_values_and_files_only_on_request(app):
    result, summary, zip_file, images = explain(app, threshold=0)
    assert isinstance(result, dict) and isinstance(summary, str) and "**Found:**" in summary
    assert zip_file is None and images == []
    result2, _, zip_file2, images2 = explain(app, threshold=0, include_files=True)
    assert result2 == result and zip_file2.endswith(".zip")
    assert [item["caption"] for item in images2][:3] == ["CLIP · cat", "CLIP Surgery · cat", "Points · cat"]


def test_api_info_describes_explain_and_hides_page_events(app):
    with urllib.request.urlopen(app.url + "gradio_api/info", timeout=30) as response:
        info = json.load(response)
    assert list(info["named_endpoints"]) == ["/explain"]
    names = [p["parameter_name"] for p in info["named_endpoints"]["/explain"]["parameters"]]
    assert names[:3] == ["image", "labels_text", "threshold"] and "include_files" in names


def test_mcp_schema_lists_the_explain_tool(app):
    with urllib.request.urlopen(app.url + "gradio_api/mcp/schema", timeout=30) as response:
        tools = json.load(response)
    tool = next(t for t in tools if t["name"].endswith("explain"))
    assert "CLIP Surgery" in tool["description"]
    assert {"image", "labels_text", "threshold"} <= set(tool["inputSchema"]["properties"])


def test_offline_start_shows_the_tiny_checkpoint_command_at_once(tmp_path, browser):
    """No weights and no network: the page is up and says how to run on the bundled checkpoints."""
    import time

    started = time.monotonic()
    with running_app(tmp_path, "--model", "ViT-B/16", wait_ready=False) as server:
        deadline = time.monotonic() + 60
        while "To try the app without downloading weights" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        assert "--clip-checkpoint tests/data/parity/weights.safetensors" in server.log()
        client = Client(server.url, verbose=False)
        status = client.view_api(return_format="dict")  # the app answers
        assert "/explain" in status["named_endpoints"]
        page = browser.new_page()
        page.goto(server.url)
        page.locator("#model-status").filter(has_text="tests/data/sam_tiny.safetensors").wait_for(timeout=30_000)
        page.close()
    print(f"offline start to hint: {time.monotonic() - started:.1f} s")


def test_methods_and_points_from_over_the_api(app):
    result, summary, _, images = explain(app, threshold=0, methods=["clip", "surgery", "sclip", "naclip"],
                                         points_from="sclip", include_files=True, sam_choice="off")
    assert result["methods"] == ["clip", "surgery", "sclip", "naclip"] and result["points_from"] == "sclip"
    kinds = [item["caption"].split(" · ")[0] for item in images if item["caption"].endswith(" · cat")]
    assert kinds == ["CLIP", "CLIP Surgery", "SCLIP", "NACLIP", "Points"]
    client = Client(app.url, verbose=False)
    import re

    for methods, points_from, says in ((["clip", "dino"], "surgery", r"'dino'.*not in the list of choices"),
                                       (["clip"], "surgery", r"not among the chosen methods")):
        with pytest.raises(Exception) as error:
            client.predict(handle_file(str(IMAGE)), "cat", methods=methods, points_from=points_from,
                           api_name="/explain")
        assert re.search(says, str(error.value)) and "Traceback" not in str(error.value)
