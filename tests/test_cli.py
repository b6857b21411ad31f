"""`python -m surgery explain ...` end to end, in subprocesses, with the tiny parity CLIP.

Every run pays the torch/open_clip import and the model load, so all runs are
started together once per module and each test reads the run it needs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from surgery.output.files import label_slug

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
TINY_CLIP = Path("tests/data/parity/weights.safetensors")
ASSET_STEMS = ["astronaut", "camera", "chelsea", "coffee", "rocket"]
LABELS = ["person", "Big Cat", "cat+grass"]
GRID = 224 // 16
COMMON = ["--clip-checkpoint", str(TINY_CLIP), "--no-sam", "--resolution", "224"]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    out: Path

    @property
    def error_lines(self) -> list[str]:
        """stderr lines starting with 'error:' (tqdm redraws its bar with carriage returns)."""
        pieces = re.split(r"[\r\n]+", self.stderr)
        return [p.strip() for p in pieces if p.strip().startswith("error:")]

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def _rotated_jpeg(path: Path) -> None:
    """48x32 pixels stored, EXIF orientation 6 (rotate 90°): 32 wide, 48 high once oriented."""
    yy, xx = np.mgrid[0:32, 0:48]
    pixels = np.stack([xx * 5, yy * 7, (xx + yy) * 3], axis=-1).astype(np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(path, exif=exif.tobytes())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    tmp = tmp_path_factory.mktemp("cli")
    inputs = tmp / "inputs"
    inputs.mkdir()
    _rotated_jpeg(inputs / "rotated.jpg")
    (inputs / "bad.jpg").write_text("this is not an image, just text\n")
    (inputs / "empty.jpg").write_bytes(b"")
    big = inputs / "big.png"  # 1500x1000: over the 1024 px working size
    Image.open(ASSETS / "rocket.jpg").convert("RGB").resize((1500, 1000), Image.BICUBIC).save(big)
    labels = ", ".join(LABELS)
    rocket, chelsea = str(ASSETS / "rocket.jpg"), str(ASSETS / "chelsea.jpg")
    commands = {
        # a folder, an individual file, and three unusable files among them (text, zero bytes, missing)
        "batch": [str(ASSETS), str(inputs / "rotated.jpg"), str(inputs / "bad.jpg"),
                  str(inputs / "empty.jpg"), str(inputs / "missing.png"), "--labels", labels, *COMMON],
        "zero": [rocket, "--labels", labels, "--threshold", "0", *COMMON],
        "negative": [rocket, "--labels", labels, "--threshold=-0.5", *COMMON],
        "high": [rocket, str(inputs / "rotated.jpg"), "--labels", labels, "--threshold", "10", *COMMON],
        "resolution": [rocket, chelsea, "--labels", labels, *COMMON, "--resolution", "230"],
        "no_labels": [rocket, *COMMON],
        "nan": [rocket, "--labels", labels, "--threshold", "nan", *COMMON],
        "methods": [rocket, "--labels", labels, *COMMON, "--methods", "naclip,clip,maskclip,surgery,sclip,clearclip",
                    "--points-from", "naclip"],
        "bad_method": [rocket, "--labels", labels, *COMMON, "--methods", "clip,dino"],
        "sclip_alone": [rocket, "--labels", labels, *COMMON, "--methods", "sclip"],
        "resnet_method": [rocket, "--labels", labels, "--model", "RN50", "--clip-checkpoint",
                          str(ROOT / "tests" / "data" / "parity-rn" / "weights.safetensors"), "--no-sam",
                          "--resolution", "224", "--methods", "clip,surgery,maskclip"],
        "big": [str(big), "--labels", labels, *COMMON, "--format", "coco"],
        "big_full": [str(big), "--labels", labels, *COMMON, "--max-side", "0"],
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    started = {}
    for name, args in commands.items():
        out = tmp / f"out_{name}"
        stdout, stderr = open(tmp / f"{name}.out", "w+"), open(tmp / f"{name}.err", "w+")
        process = subprocess.Popen([sys.executable, "-m", "surgery", "explain", *args, "--out", str(out)],
                                   cwd=ROOT, env=env, stdout=stdout, stderr=stderr, text=True)
        started[name] = (process, stdout, stderr, out)
    results = {}
    try:
        for name, (process, stdout, stderr, out) in started.items():
            code = process.wait(timeout=240)
            stdout.seek(0), stderr.seek(0)
            results[name] = Run(code, stdout.read(), stderr.read(), out)
    finally:
        for process, stdout, stderr, _ in started.values():
            if process.poll() is None:
                process.kill()
            stdout.close(), stderr.close()
    results["inputs"] = inputs  # type: ignore[assignment]
    return results


def oriented_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).size


def expected_sizes(runs) -> dict[str, tuple[int, int]]:
    sizes = {stem: oriented_size(ASSETS / f"{stem}.jpg") for stem in ASSET_STEMS}
    sizes["rotated"] = (32, 48)
    return sizes


def check_image_outputs(directory: Path, size: tuple[int, int]) -> dict:
    width, height = size
    result = json.loads((directory / "result.json").read_text(encoding="utf-8"))
    assert (result["width"], result["height"]) == (width, height)
    assert [entry["label"] for entry in result["labels"]] == LABELS
    for entry in result["labels"]:
        assert isinstance(entry["found"], bool)
        for x, y, lab in entry["points"]:
            assert 0 <= x < width and 0 <= y < height and lab in (0, 1)
    with np.load(directory / "maps.npz") as maps:
        for key in ("clip", "surgery"):
            assert maps[key].dtype == np.float32
            assert maps[key].shape == (len(LABELS), GRID, GRID)
            assert np.all(np.isfinite(maps[key]))
    for label in LABELS:
        for kind in ("clip", "surgery", "points"):
            with Image.open(directory / f"{kind}_{label_slug(label)}.png") as png:
                assert png.format == "PNG"
                assert png.size == (width, height)
        with Image.open(directory / f"hist_{label_slug(label)}.png") as png:
            assert png.format == "PNG"
    assert not list(directory.glob("sam_*.png")) and not (directory / "masks.png").exists()  # --no-sam
    return result


# --- a folder, individual files, unreadable files ---------------------------------

def test_large_image_is_worked_on_at_1024_px_unless_asked_otherwise(runs):
    scaled = check_image_outputs(runs["big"].out / "big", (1024, 683))
    assert any("1500×1000" in note and "1024×683" in note for note in scaled["notes"]), scaled["notes"]
    assert (scaled["source_width"], scaled["source_height"]) == (1500, 1000)
    assert "note: big.png:" in runs["big"].stderr
    coco = json.loads((runs["big"].out / "big" / "coco.json").read_text(encoding="utf-8"))
    assert coco["images"][0] == {"id": 1, "file_name": "big.png", "width": 1500, "height": 1000}
    full = check_image_outputs(runs["big_full"].out / "big", (1500, 1000))
    assert not any("scaled" in note for note in full["notes"])
    assert (full["source_width"], full["source_height"]) == (1500, 1000)
    assert runs["big"].returncode == runs["big_full"].returncode == 0
    # Same picture at two sizes: the maps agree closely (CLIP reads 224 px either way).
    with np.load(runs["big"].out / "big" / "maps.npz") as a, np.load(runs["big_full"].out / "big" / "maps.npz") as b:
        assert np.corrcoef(a["surgery"].ravel(), b["surgery"].ravel())[0, 1] > 0.99


def test_folder_and_files_each_processed_once(runs):
    batch = runs["batch"]
    assert sorted(p.name for p in batch.out.iterdir()) == sorted(ASSET_STEMS + ["rotated"])


def test_outputs_follow_the_schema_with_image_sizes_after_exif(runs):
    batch = runs["batch"]
    for stem, size in expected_sizes(runs).items():
        result = check_image_outputs(batch.out / stem, size)
        for entry in result["labels"]:  # no threshold: every label has points
            assert entry["found"] is True
            labels = [p[2] for p in entry["points"]]
            assert 1 in labels and 0 in labels
            if "+" not in entry["label"]:
                assert labels.count(1) == labels.count(0)


def test_unreadable_files_exit_1_with_one_error_line_each(runs):
    """Some images failed, the rest were done: exit 1 (2 is for usage errors), as calibrate and evaluate."""
    batch = runs["batch"]
    assert batch.returncode == 1
    assert "Traceback" not in batch.stderr
    errors = batch.error_lines
    assert len(errors) == 3, batch.stderr
    for name in ("bad.jpg", "empty.jpg", "missing.png"):
        assert sum(name in line for line in errors) == 1, errors
    # the valid images were still explained, the invalid ones left no output
    assert not any((batch.out / stem).exists() for stem in ("bad", "empty", "missing"))


def test_progress_goes_to_stderr_and_one_line_per_image_to_stdout(runs):
    batch = runs["batch"]
    assert "explaining" in batch.stderr and "explaining" not in batch.stdout
    lines = batch.stdout.strip().splitlines()
    explained = sorted(p.name for p in batch.out.iterdir())
    assert len(lines) == len(explained), batch.stdout
    for stem in explained:
        line = next(line for line in lines if f"{batch.out / stem}:" in line)
        result = json.loads((batch.out / stem / "result.json").read_text(encoding="utf-8"))
        found = [entry["label"] for entry in result["labels"] if entry["found"]]
        assert f"found {', '.join(found) or 'none'}" in line


def test_every_option_has_help():
    from surgery.cli import build_parser

    explain = build_parser()._subparsers._group_actions[0].choices["explain"]
    undocumented = [action.dest for action in explain._actions if not action.help]
    assert undocumented == []


# --- threshold -------------------------------------------------------------------------

def test_threshold_above_every_value_finds_nothing(runs):
    high = runs["high"]
    assert high.returncode == 0, high.stderr
    assert sorted(p.name for p in high.out.iterdir()) == ["rocket", "rotated"]
    sizes = expected_sizes(runs)
    for stem in ("rocket", "rotated"):
        result = check_image_outputs(high.out / stem, sizes[stem])
        for entry in result["labels"]:
            assert entry["found"] is False
            assert entry["points"] == []


def test_threshold_zero_is_off_as_in_the_app(runs):
    """0 means off (the reference min-max), exactly as the page's slider and /explain read it."""
    zero, batch = runs["zero"], runs["batch"]
    assert zero.returncode == 0, zero.stderr
    assert zero.stderr.strip() == ""  # a single image: no progress bar, no notes
    result = check_image_outputs(zero.out / "rocket", expected_sizes(runs)["rocket"])
    reference = json.loads((batch.out / "rocket" / "result.json").read_text(encoding="utf-8"))
    assert result["threshold"] is None and reference["threshold"] is None
    for entry, ref in zip(result["labels"], reference["labels"]):
        assert entry["found"] is True
        assert sorted(map(tuple, entry["points"])) == sorted(map(tuple, ref["points"]))


def test_negative_threshold_is_refused_as_in_the_app(runs):
    negative = runs["negative"]
    assert negative.returncode == 2
    assert negative.stderr.strip() == "error: Threshold must be a number from 0 (off) to 10; got -0.5."
    assert not negative.out.exists()


# --- bad arguments -------------------------------------------------------------------------

@pytest.mark.parametrize("name, mentions", [
    ("resolution", "230"),
    ("no_labels", "--labels"),
    ("nan", "Threshold must be a number from 0 (off) to 10"),
    ("bad_method", "Unknown method 'dino'"),
    ("resnet_method", "MaskCLIP work on ViT backbones only"),
])
def test_bad_arguments_exit_2_with_a_single_line(runs, name, mentions):
    run = runs[name]
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    lines = run.stderr_lines
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("error:") and mentions in lines[0]
    assert run.stdout.strip() == ""
    assert not run.out.exists() or not any(run.out.iterdir())


def test_methods_give_one_array_and_one_overlay_each_and_points_from_the_chosen_map(runs):
    from surgery.method.points import points_for_sam

    run = runs["methods"]
    assert run.returncode == 0, run.stderr
    folder = run.out / "rocket"
    result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    order = ["clip", "surgery", "maskclip", "sclip", "clearclip", "naclip"]  # the table's order, whatever was typed
    assert result["methods"] == order and result["points_from"] == "naclip"
    with np.load(folder / "maps.npz") as maps:
        assert sorted(maps.files) == sorted(order)
        assert all(maps[m].shape == (len(LABELS), GRID, GRID) and maps[m].dtype == np.float32 for m in order)
        naclip = maps["naclip"]
    for method in order:
        for label in LABELS:
            assert (folder / f"{method}_{label_slug(label)}.png").is_file()
    for index, entry in enumerate(result["labels"][:2]):  # plain labels: points from the NACLIP map
        expected = points_for_sam(naclip[index], result["width"], result["height"], None)
        assert sorted(map(tuple, entry["points"])) == sorted(map(tuple, expected.tolist()))
    default = json.loads((runs["batch"].out / "rocket" / "result.json").read_text(encoding="utf-8"))
    assert default["methods"] == ["clip", "surgery"] and default["points_from"] == "surgery"


def test_one_method_alone_takes_the_points_from_it(runs):
    """`--methods sclip` without --points-from was refused (the points defaulted to CLIP Surgery)."""
    run = runs["sclip_alone"]
    assert run.returncode == 0, run.stderr
    result = json.loads((run.out / "rocket" / "result.json").read_text())
    assert result["methods"] == ["sclip"] and result["points_from"] == "sclip"
    with np.load(run.out / "rocket" / "maps.npz") as maps:
        assert set(maps.files) == {"sclip"}


def test_explaining_into_an_existing_folder_leaves_only_this_runs_files(tmp_path):
    """A second run into the same --out: the mask and overlays of a label no longer asked for are gone."""
    out = tmp_path / "out"
    common = [str(ASSETS / "rocket.jpg"), "--clip-checkpoint", str(TINY_CLIP), "--sam-checkpoint",
              "tests/data/sam_tiny.safetensors", "--resolution", "224", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run([sys.executable, "-m", "surgery", "explain", *common, "--labels", "rocket, sky"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert (out / "rocket" / "mask_rocket.png").is_file() and (out / "rocket" / "clip_rocket.png").is_file()
    second = subprocess.run([sys.executable, "-m", "surgery", "explain", *common, "--labels", "sky"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    names = {path.name for path in (out / "rocket").iterdir()}
    assert not any("rocket" in name for name in names), names
    assert {"result.json", "maps.npz", "mask_sky.png", "clip_sky.png", "surgery_sky.png"} <= names


@pytest.mark.parametrize("command", ["explain", "calibrate"])
def test_help_states_the_exit_codes(command):
    done = subprocess.run([sys.executable, "-m", "surgery", command, "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "exit codes: 0 every image done; 1 some images failed" in text and "2 a usage error" in text


def test_own_points_and_a_truth_mask_for_one_image(tmp_path):
    """--extra-points and --removed-points reach SAM and result.json; --truth-label/--truth-mask score every
    map and the mask (recomputed here by tests/iou_reference.py from maps.npz and mask_rocket.png)."""
    from iou_reference import bilinear, close_counts, overlap, stretched

    truth = np.zeros((427, 640), np.uint8)
    truth[100:300, 250:350] = 255
    Image.fromarray(truth).save(tmp_path / "truth.png")
    common = [str(ASSETS / "rocket.jpg"), "--labels", "rocket, smoke", "--clip-checkpoint", str(TINY_CLIP),
              "--sam-checkpoint", "tests/data/sam_tiny.safetensors", "--resolution", "224"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def explain(out: Path, *extra: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "surgery", "explain", *common, *extra, "--out", str(out)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads((out / "rocket" / "result.json").read_text())

    plain = explain(tmp_path / "plain")
    points, before = [[320, 200, 1], [20, 20, 0]], plain["labels"][0]
    result = explain(tmp_path / "own", "--extra-points", json.dumps({"rocket": points}), "--removed-points",
                     json.dumps({"rocket": before["points"][:1]}), "--truth-label", "Rocket",
                     "--truth-mask", str(tmp_path / "truth.png"))
    rocket = result["labels"][0]
    assert result["extra_points"] == {"rocket": points} and result["removed_points"] == {"rocket": before["points"][:1]}
    assert rocket["points"] == before["points"][1:] + points
    assert rocket["mask_area"] != before["mask_area"]  # SAM was given the new points
    score, mask = result["truth"], truth >= 128
    assert score["label"] == "rocket" and score["area"] == int(mask.sum())
    with np.load(tmp_path / "own" / "rocket" / "maps.npz") as maps:
        for method in ("clip", "surgery"):
            region = bilinear(stretched(maps[method][0]), 427, 640) >= 0.5  # threshold off: stretched maps
            assert close_counts(score["maps"][method], overlap(region, mask), 427 * 640), method
    sam = np.array(Image.open(tmp_path / "own" / "rocket" / "mask_rocket.png").convert("L")) >= 128
    assert (score["sam_mask"]["intersection"], score["sam_mask"]["union"]) == overlap(sam, mask)


@pytest.mark.parametrize("extra, mentions", [
    (["--extra-points", "{not json"], "not JSON"),
    (["--extra-points", '{"giraffe": [[1, 1, 1]]}'], "not one of the labels"),
    (["--extra-points", '{"rocket": [[1, 1, 2]]}'], "1 (positive) or 0 (negative)"),
    (["--truth-label", "rocket"], "or neither"),
    (["--truth-label", "rocket", "--truth-mask", "missing.png"], "could not be opened"),
    (["--truth-label", "rocket", "--truth-mask", "README.md"], "not an image"),
    ([str(ASSETS / "chelsea.jpg"), "--truth-label", "rocket", "--truth-mask", "assets/chelsea.jpg"],
     "give one image (got 2)"),
])
def test_bad_points_or_truth_exit_2_with_one_line(tmp_path, extra, mentions):
    done = subprocess.run([sys.executable, "-m", "surgery", "explain", str(ASSETS / "rocket.jpg"), *extra, "--labels",
                           "rocket", *COMMON, "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error:") and mentions in lines[0], done.stderr
    assert not (tmp_path / "out").exists()
