"""`python -m surgery calibrate` end to end on the tiny checkpoints: summary.json against values the test
reads back itself from the per-image maps.npz files, resuming, the three runners, report.html in a browser.

One serial run with SAM over 6 images (one unreadable, two sharing a stem) is made once per module; the
other runs (rerun, changed option, --workers 2, --ray) are compared against it. The commands run
in-process through `surgery.cli.main`, so the engine's model-call log (`calls`) sees the serial ones.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from surgery.cli import main
from surgery.method.points import points_for_sam
from surgery.method.threshold import otsu_threshold
from surgery.output.files import label_slug

ROOT = Path(__file__).resolve().parents[2]
TINY_CLIP = ROOT / "tests" / "data" / "parity" / "weights.safetensors"
TINY_SAM = ROOT / "tests" / "data" / "sam_tiny.safetensors"
LABELS = ["rocket", "person", "sky"]
BROKEN = "<img src=x onerror=alert(1)>.png"  # unreadable, and a file name that is HTML
READABLE = {"astronaut.jpg": "astronaut", "camera.jpg": "camera", "camera.png": "camera-2",
            "chelsea.webp": "chelsea", "rocket.jpg": "rocket"}  # file -> output folder (stems de-duplicated)
OPTIONS = ["--labels", ", ".join(LABELS), "--clip-checkpoint", str(TINY_CLIP), "--sam-checkpoint", str(TINY_SAM),
           "--resolution", "224", "--max-side", "256"]
GRID = 224 // 16
ARTIFACTS = ROOT / "test-artifacts"


def _write_inputs(folder: Path) -> None:
    folder.mkdir()
    sources = {"astronaut.jpg": "astronaut", "camera.png": "camera", "camera.jpg": "coffee",
               "chelsea.webp": "chelsea", "rocket.jpg": "rocket"}
    for name, asset in sources.items():
        with Image.open(ROOT / "assets" / f"{asset}.jpg") as image:
            image.convert("RGB").resize((200, 150)).save(folder / name)
    (folder / BROKEN).write_bytes(b"\x89PNG\r\n\x1a\n but then nothing an image decoder can use")
    (folder / "notes.txt").write_text("not an image suffix: ignored")


def _calibrate(folder: Path, out: Path, *extra: str) -> int:
    return main(["calibrate", str(folder), *OPTIONS, "--out", str(out), *extra])


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))


def _without_timings(summary: dict) -> dict:
    return {key: value for key, value in summary.items() if key != "timings"}


def _mtimes(out: Path) -> dict[str, int]:
    return {str(path.relative_to(out)): path.stat().st_mtime_ns for path in out.glob("*/*")}


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> tuple[Path, Path, int]:
    """(input folder, output folder, exit code) of the serial run with SAM."""
    tmp = tmp_path_factory.mktemp("calibrate")
    folder = tmp / "images"
    _write_inputs(folder)
    out = tmp / "serial"
    code = _calibrate(folder, out)
    return folder, out, code


def test_summary_pools_the_raw_values_of_the_per_image_maps(serial):
    folder, out, code = serial
    assert code == 1  # one image failed; the others were explained (2 is for usage errors)
    summary = _summary(out)
    assert summary["images"] == 6 and summary["explained"] == 5
    assert [entry["file"] for entry in summary["failed"]] == [BROKEN]
    assert "not an image" in summary["failed"][0]["reason"] and "\n" not in summary["failed"][0]["reason"]
    assert sorted(path.name for path in out.iterdir() if path.is_dir()) == sorted(READABLE.values())

    # Read back independently: each folder's maps.npz holds the raw CLIP Surgery maps (K, g, g).
    per_image = {}
    for file, stem in READABLE.items():
        assert json.loads((out / stem / "result.json").read_text())["width"] == 200
        with np.load(out / stem / "maps.npz") as maps:
            assert maps["surgery"].shape == (len(LABELS), GRID, GRID)
            per_image[file] = maps["surgery"].astype(np.float32)
    assert [record["label"] for record in summary["labels"]] == LABELS
    for k, record in enumerate(summary["labels"]):
        counts, edges = record["histogram"]["counts"], record["histogram"]["edges"]
        assert len(edges) == len(counts) + 1 and all(a < b for a, b in zip(edges, edges[1:]))
        assert sum(counts) == sum(values[k].size for values in per_image.values()) == 5 * GRID * GRID
        assert record["image_max"] == pytest.approx({file: float(values[k].max())
                                                     for file, values in per_image.items()}, abs=0)
    pooled = np.concatenate([values.reshape(-1) for values in per_image.values()])
    assert summary["suggested_threshold"] == otsu_threshold(pooled)
    assert pooled.min() < summary["suggested_threshold"] < pooled.max()
    t = summary["suggested_threshold"]
    for k, record in enumerate(summary["labels"]):
        # A plain label is found where its map reaches t and SAM still gets points (the down-sampled map
        # reaches it too): the engine's rule, stated here through its two parts.
        reached = [bool(values[k].max() >= t) and len(points_for_sam(values[k], 200, 150, t)) > 0
                   for values in per_image.values()]
        assert record["found"] == sum(reached) and record["found_rate"] == pytest.approx(sum(reached) / 5)
        assert [entry["found"][k] for entry in summary["results"]] == reached
    assert {entry["file"] for entry in summary["results"]} == set(READABLE)
    assert summary["options"]["label_texts"] == LABELS and summary["options"]["sam_model"]
    assert set(summary["timings"]) >= {"runner", "seconds", "images_per_minute"}
    assert summary["timings"]["runner"] == "serial"


def test_each_image_folder_is_what_explain_writes(serial, tmp_path):
    folder, out, _ = serial
    explained = tmp_path / "explain"
    assert main(["explain", str(folder / "rocket.jpg"), *OPTIONS, "--out", str(explained)]) == 0
    calibrated = {p.name for p in (out / "rocket").iterdir()} - {"calibration.json", "calibration.npz"}
    assert calibrated == {p.name for p in (explained / "rocket").iterdir()}
    assert f"mask_{label_slug('rocket')}.png" in calibrated or f"mask_{label_slug('sky')}.png" in calibrated
    for name in ("result.json", "maps.npz", "surgery_rocket.png", "hist_sky.png"):
        assert (out / "rocket" / name).read_bytes() == (explained / "rocket" / name).read_bytes(), name


def test_a_rerun_skips_every_image_and_a_changed_option_recomputes(serial, tmp_path, calls):
    folder, out, _ = serial
    before = _summary(out)
    mtimes = _mtimes(out)
    calls.clear()
    assert _calibrate(folder, out) == 1  # the unreadable image is tried again and fails again
    assert calls.count("CLIP image encoder") == 0 and calls.count("SAM image encoder") == 0, calls.lines
    assert _mtimes(out) == mtimes
    after = _summary(out)
    assert _without_timings(after) == _without_timings(before)
    assert after["timings"]["skipped"] == 5 and after["timings"]["explained_now"] == 0

    touched = folder / "rocket.jpg"  # a newer file under the same name is explained again, alone
    status = touched.stat()
    os.utime(touched, ns=(status.st_atime_ns, status.st_mtime_ns + 10 ** 9))
    calls.clear()
    assert _calibrate(folder, out) == 1
    assert calls.count("CLIP image encoder") == 1, calls.lines
    assert _summary(out)["timings"]["explained_now"] == 1
    assert _without_timings(_summary(out)) == _without_timings(before)

    changed = tmp_path / "changed"
    shutil.copytree(out, changed)
    calls.clear()
    assert _calibrate(folder, changed, "--redundancy", "empty", "--no-sam") == 1
    assert calls.count("CLIP image encoder") == 5 and calls.count("SAM image encoder") == 0, calls.lines
    summary = _summary(changed)
    assert summary["options"]["options_hash"] != before["options"]["options_hash"]
    assert summary["timings"]["explained_now"] == 5 and summary["suggested_threshold"] != before["suggested_threshold"]
    assert not list(changed.glob("*/mask_*.png"))  # the earlier run's masks were removed, not left stale
    for stem in READABLE.values():
        assert json.loads((changed / stem / "result.json").read_text())["redundancy"] == "empty"


def test_two_worker_processes_give_the_serial_summary(serial, tmp_path):
    folder, out, _ = serial
    assert _calibrate(folder, tmp_path / "workers", "--workers", "2") == 1
    summary = _summary(tmp_path / "workers")
    assert summary["timings"]["runner"] == "processes" and summary["timings"]["workers"] == 2
    assert _without_timings(summary) == _without_timings(_summary(out))


def test_ray_data_gives_the_serial_summary(serial, tmp_path):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    folder, out, _ = serial
    import surgery

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"py_modules": [str(Path(surgery.__file__).parent)]})
    try:
        assert _calibrate(folder, tmp_path / "ray", "--ray") == 1
    finally:
        ray.shutdown()
    summary = _summary(tmp_path / "ray")
    assert summary["timings"]["runner"] == "ray" and summary["timings"]["workers"] == 2
    assert _without_timings(summary) == _without_timings(_summary(out))


def test_report_shows_one_row_per_image_offline(serial, browser):
    folder, out, _ = serial
    summary = _summary(out)
    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    try:
        page.goto((out / "report.html").as_uri())
        rows = page.locator("tr.image-row")
        assert rows.count() == 6  # every image, the failed one included (marked)
        failed = page.locator('tr.image-row[data-status="failed"]')
        assert failed.count() == 1
        assert BROKEN in failed.inner_text()  # shown as text, never as markup
        assert page.locator('img[src="x"]').count() == 0
        cells = page.locator("tr.image-row td.label-cell")
        assert cells.count() == 5 * len(LABELS)
        missing = sum(not found for entry in summary["results"] for found in entry["found"])
        assert page.locator("td.not-found").count() == missing
        assert page.locator("td.not-found .badge").count() == missing
        assert page.locator("td.label-cell img[alt='CLIP Surgery']").count() == 5 * len(LABELS)
        assert page.locator("td.label-cell img[alt='Mask']").count() >= 1
        sources = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.src)")
        assert sources and all(src.startswith("data:image/") for src in sources)
        assert page.locator(".hist svg line.suggested").count() == len(LABELS)
        assert page.locator("#suggested").inner_text() == f"{summary['suggested_threshold']:.6g}"
        assert all(url.startswith(("file:", "data:")) for url in requests), requests
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    finally:
        page.close()
    phone = browser.new_page(viewport={"width": 390, "height": 844})
    try:
        phone.goto((out / "report.html").as_uri())
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390  # the sheet scrolls, not the page
        svg = phone.locator(".hist svg").first.bounding_box()
        assert svg["x"] + svg["width"] <= 390  # histograms shrink to fit
        phone.screenshot(path=str(ARTIFACTS / "report-phone.png"), full_page=True)
    finally:
        phone.close()


@pytest.mark.parametrize("case", ["missing", "empty", "bad_workers", "no_ray"])
def test_bad_input_is_one_line_and_exit_code_2(case, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    args = ["calibrate", str(folder), *OPTIONS, "--out", str(tmp_path / "out")]
    if case == "missing":
        args[1] = str(tmp_path / "nowhere")
    elif case == "bad_workers":
        args += ["--workers", "0"]
    elif case == "no_ray":
        (folder / "a.png").write_bytes(b"")
        monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
        args += ["--ray"]
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "Traceback" not in err, err
    expected = {"missing": "is not a folder", "empty": "No images", "bad_workers": "--workers",
                "no_ray": "pip install .[ray]"}[case]
    assert expected in err


def test_actor_pools_follow_the_cluster():
    from surgery.dataset.runners import plan_actors

    gib = 1024 ** 3
    assert plan_actors({"CPU": 8, "memory": 64 * gib}, "auto", 100).actors == 8
    assert plan_actors({"CPU": 8, "memory": 5 * gib}, "auto", 100).actors == 2  # 2 GiB a model copy
    assert plan_actors({"CPU": 8, "memory": 64 * gib}, "auto", 3).actors == 3  # never more than the images
    gpus = plan_actors({"CPU": 16, "GPU": 4, "memory": 64 * gib}, "auto", 100)
    assert (gpus.actors, gpus.gpus, gpus.device) == (4, 1.0, "cuda")
    assert plan_actors({"CPU": 16, "GPU": 4, "memory": 64 * gib}, "cpu", 100).device == "cpu"
    assert plan_actors({"CPU": 8, "memory": 64 * gib}, "auto", 100, actors=3).cpus == 2.0
