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
    """docs/api.md's client example, with only the server's URL and the image's path made local."""
    import re

    readme = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
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


def test_extra_points_join_the_derived_points_and_change_the_mask(app):
    plain = explain(app, threshold=0)[0]
    cat = plain["labels"][0]
    mine = [[40, 260, 1], [430, 20, 0]]
    result = explain(app, threshold=0, extra_points={"Cat": mine})[0]  # a label's case does not matter
    assert result["extra_points"] == {"cat": mine}
    assert result["labels"][0]["points"] == cat["points"] + mine
    assert result["labels"][1]["points"] == plain["labels"][1]["points"]
    assert result["labels"][0]["mask_candidates"] != cat["mask_candidates"]  # SAM was given the new points
    assert plain["extra_points"] == {}


def test_removed_points_leave_derived_points_out_and_replay_an_edit(app):
    plain = explain(app, threshold=0)[0]
    cat = plain["labels"][0]
    dropped, mine = cat["points"][:2], [[40, 260, 1]]
    result = explain(app, threshold=0, removed_points={"CAT": dropped + [[1, 1, 1]]}, extra_points={"cat": mine})[0]
    assert result["removed_points"] == {"cat": dropped + [[1, 1, 1]]}  # a row that is no derived point: no effect
    assert result["labels"][0]["points"] == cat["points"][2:] + mine
    assert result["labels"][1]["points"] == plain["labels"][1]["points"]
    assert result["labels"][0]["mask_candidates"] != cat["mask_candidates"]
    replayed = explain(app, threshold=0, removed_points=result["removed_points"], extra_points=result["extra_points"])
    assert replayed[0]["labels"] == result["labels"]  # result.json's edits give the same result again
    with pytest.raises(Exception) as error:
        explain(app, threshold=0, sam_choice="off", removed_points={"dog": [[1, 1, 1]]})
    assert "removed_points names 'dog'" in str(error.value)


@pytest.mark.parametrize("extra_points, words", [
    ({"cat": [[451, 10, 1]]}, "outside the 451×300 image"),
    ({"cat": [[10, -1, 1]]}, "outside the 451×300 image"),
    ({"cat": [[10, 10]]}, "each point is [x, y, 1 or 0]"),
    ({"cat": [[10, 10, 5]]}, "1 (positive) or 0 (negative)"),
    ({"dog": [[10, 10, 1]]}, "names 'dog', which is not one of the labels"),
    ([[10, 10, 1]], "must be {label: [[x, y, 1 or 0], ...]}"),
])
def test_bad_extra_points_are_refused_with_one_line(app, extra_points, words):
    with pytest.raises(Exception) as error:
        explain(app, threshold=0, sam_choice="off", extra_points=extra_points)
    message = str(error.value)
    assert words in message and "Traceback" not in message


def test_truth_mask_scores_every_map_and_the_mask(app, tmp_path):
    """IoU numbers recomputed here from the raw maps (maps.npz) and the mask (the zip), by tests/iou_reference.py."""
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    from iou_reference import bilinear, close_counts, overlap, stretched

    truth = np.zeros((300, 451), np.uint8)
    truth[60:240, 120:330] = 255
    path = tmp_path / "truth.png"
    Image.fromarray(truth).save(path)
    result, _, zip_file, _ = explain(app, threshold=0, truth_label="cat",
                                     truth_mask=handle_file(str(path)), include_files=True,
                                     methods=["clip", "surgery", "naclip"])
    score = result["truth"]
    mask = truth >= 128
    assert score["label"] == "cat" and score["area"] == int(mask.sum())
    with zipfile.ZipFile(zip_file) as archive:
        maps = np.load(io.BytesIO(archive.read("maps.npz")))
        sam = np.array(Image.open(io.BytesIO(archive.read("mask_cat.png"))).convert("L")) >= 128
    for method in ("clip", "surgery", "naclip"):
        region = bilinear(stretched(maps[method][0]), 300, 451) >= 0.5  # threshold off: every map stretched
        assert close_counts(score["maps"][method], overlap(region, mask), 300 * 451), method
    expected = overlap(sam, mask)
    assert (score["sam_mask"]["intersection"], score["sam_mask"]["union"]) == expected
    assert score["sam_mask"]["iou"] == pytest.approx(expected[0] / expected[1], abs=1e-6)


def test_a_truth_mask_of_another_shape_or_label_is_refused(app, tmp_path):
    from PIL import Image

    square = tmp_path / "square.png"
    Image.new("L", (100, 100), 255).save(square)
    for kwargs, words in ((dict(truth_label="cat", truth_mask=handle_file(str(square))), "not the image's shape"),
                          (dict(truth_label="fish", truth_mask=handle_file(str(square))), "not one of the labels"),
                          (dict(truth_label="cat"), "or neither")):
        with pytest.raises(Exception) as error:
            explain(app, threshold=0, sam_choice="off", **kwargs)
        assert words in str(error.value) and "Traceback" not in str(error.value)


def test_the_api_description_names_every_method():
    """The API page and MCP show explain's docstring: a method missing from it is one nobody scripts."""
    from explorer.handlers import Handlers
    from surgery.method.table import METHOD_TABLE

    methods_line = Handlers.explain.__doc__.split("methods:")[1].split("points_from:")[0]
    named = {word.strip(",.() ") for word in methods_line.split()}
    assert set(METHOD_TABLE) <= named, set(METHOD_TABLE) - named
