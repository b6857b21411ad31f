"""Synthetic datasets in every standard layout (tiny images written here), evaluated end to end: which ids
are evaluated and in what order, how ground truth is read (indices, 255 ignored, `reduce_zero_label`),
and metrics.json against a recomputation that applies EVALUATION.md's label rule for the dataset. Each
dataset's recomputation with the other background handling is checked to differ, so a swapped rule fails.

The runs use a small class file (`--classes`) and `--short-side 32` so each takes a second on the tiny
CLIP; the packaged class files are checked against EVALUATION.md's counts separately.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from surgery.cli import main
from surgery.evaluate.classes import packaged_classes
from surgery.evaluate.datasets import DATASETS, read_label, sample_ids

ROOT = Path(__file__).resolve().parents[2]
TINY_CLIP = ROOT / "tests" / "data" / "parity" / "weights.safetensors"
CLASSES = ["background", "rocket, launch tower", "sky", "smoke"]  # 4 classes, 5 queries
RNG = np.random.default_rng(7)


def _image(path: Path, seed: int, size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    pixels[:, : size[0] // 2] //= 3  # some structure
    Image.fromarray(pixels).save(path)


def _mask(path: Path, seed: int, values: int, offset: int, mode: str = "P", size=(40, 30)) -> np.ndarray:
    """Blocks of raw values offset..offset+values-1, a 255 border around one block, raw 0 somewhere."""
    rng = np.random.default_rng(seed)
    raw = np.zeros((size[1], size[0]), dtype=np.uint8)
    for _ in range(6):
        y, x = rng.integers(0, size[1] - 8), rng.integers(0, size[0] - 8)
        raw[y:y + 8, x:x + 10] = offset + rng.integers(0, values)
    raw[:4, :] = 0  # always some raw 0 (background, or "unlabelled" where it is reduced away)
    raw[10, 5:30] = 255
    raw[12:14, 20:24] = offset + values - 1
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(raw, mode="L")
    if mode == "P":
        image = image.convert("P")
        image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    image.save(path)
    return raw


def _write_list(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(ids) + "\n")


def _build(dataset: str, root: Path) -> list[str]:
    """Write a tiny dataset in `dataset`'s layout under `root`; returns the ids expected, in order."""
    reduce = DATASETS[dataset].reduce_zero_label
    values, offset = (4, 1) if reduce else (4, 0)  # raw label values: classes 0..3, or 1..4 (0 unlabelled)
    if dataset in ("voc21", "voc20"):
        for i, name in enumerate(["2008_000003", "2007_000010", "2009_000001"]):
            _image(root / "JPEGImages" / f"{name}.jpg", i)
            _mask(root / "SegmentationClass" / f"{name}.png", i, values, offset)
        _write_list(root / "ImageSets" / "Segmentation" / "val.txt", ["2008_000003", "2007_000010"])
        return ["2008_000003", "2007_000010"]  # the list's order; the third image is not in the split
    if dataset in ("context60", "context59"):
        for i, name in enumerate(["2010_000002", "2008_000008"]):
            _image(root / "JPEGImages" / f"{name}.jpg", i)
            _mask(root / "SegmentationClassContext" / f"{name}.png", i, values, offset, mode="L")
        _write_list(root / "ImageSets" / "SegmentationContext" / "val.txt", ["2010_000002", "2008_000008"])
        return ["2010_000002", "2008_000008"]
    if dataset in ("coco_object", "coco_stuff"):
        suffix = "_instanceTrainIds.png" if dataset == "coco_object" else "_labelTrainIds.png"
        for i, name in enumerate(["000000000785", "000000000139"]):
            _image(root / "images" / "val2017" / f"{name}.jpg", i)
            _mask(root / "annotations" / "val2017" / f"{name}{suffix}", i, values, offset, mode="L")
        (root / "images" / "val2017" / "notes.txt").write_text("not an image")
        return ["000000000139", "000000000785"]  # scanned: sorted
    if dataset == "cityscapes":
        names = ["munster/munster_000001_000019", "frankfurt/frankfurt_000000_000294",
                 "frankfurt/frankfurt_000001_000538"]
        for i, name in enumerate(names):
            _image(root / "leftImg8bit" / "val" / f"{name}_leftImg8bit.png", i)
            _mask(root / "gtFine" / "val" / f"{name}_gtFine_labelTrainIds.png", i, values, offset, mode="L")
            _mask(root / "gtFine" / "val" / f"{name}_gtFine_labelIds.png", i + 9, 30, 0, mode="L")  # not read
        return sorted(names)  # scanned recursively, sorted paths
    if dataset == "ade20k":
        for i, name in enumerate(["ADE_val_00000002", "ADE_val_00000001"]):
            _image(root / "images" / "validation" / f"{name}.jpg", i)
            _mask(root / "annotations" / "validation" / f"{name}.png", i, values, offset, mode="L")
        return ["ADE_val_00000001", "ADE_val_00000002"]
    if dataset == "folder":
        for i, (name, suffix) in enumerate([("b", ".png"), ("a", ".jpg")]):
            _image(root / "images" / f"{name}{suffix}", i)
            _mask(root / "masks" / f"{name}.png", i, values, offset)
        return ["a", "b"]
    raise AssertionError(dataset)


def _truth(path: Path, reduce: bool) -> np.ndarray:
    """The ground truth by EVALUATION.md's rule, written independently of the product."""
    raw = np.array(Image.open(path)).astype(np.int64)
    if not reduce:
        return raw
    out = raw - 1
    out[raw == 0] = 255
    out[raw == 255] = 255
    return out


def _miou(predictions: list[np.ndarray], truths: list[np.ndarray], classes: int) -> list[float | None]:
    inter, pred, gt = np.zeros(classes), np.zeros(classes), np.zeros(classes)
    for p, g in zip(predictions, truths):
        keep = g != 255
        p, g = p[keep].astype(int), g[keep]
        for c in range(classes):
            inter[c] += np.sum((p == c) & (g == c))
            pred[c] += np.sum(p == c)
            gt[c] += np.sum(g == c)
    union = pred + gt - inter
    return [None if union[c] == 0 else 100 * inter[c] / union[c] for c in range(classes)]


LABEL_PATHS = {
    "voc21": "SegmentationClass/{}.png", "voc20": "SegmentationClass/{}.png",
    "context60": "SegmentationClassContext/{}.png", "context59": "SegmentationClassContext/{}.png",
    "coco_object": "annotations/val2017/{}_instanceTrainIds.png",
    "coco_stuff": "annotations/val2017/{}_labelTrainIds.png",
    "cityscapes": "gtFine/val/{}_gtFine_labelTrainIds.png", "ade20k": "annotations/validation/{}.png",
    "folder": "masks/{}.png",
}
# EVALUATION.md §7: which datasets reduce the zero label (0 ignored, the rest shifted down by one)
REDUCED = {"voc20", "context59", "ade20k"}


@pytest.mark.parametrize("dataset", list(LABEL_PATHS))
def test_each_layout_evaluates_its_ids_with_its_label_rule(dataset, tmp_path):
    root = tmp_path / dataset
    expected_ids = _build(dataset, root)
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES))
    out = tmp_path / "out"
    code = main(["evaluate", str(root), "--dataset", dataset, "--methods", "maskclip", "--classes", str(classes),
                 "--clip-checkpoint", str(TINY_CLIP), "--short-side", "32", "--save-predictions", "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == len(expected_ids) and metrics["evaluated"] == len(expected_ids)
    assert sample_ids(DATASETS[dataset], root) == expected_ids
    saved = sorted(p.relative_to(out / "predictions" / "maskclip").as_posix()[:-4]
                   for p in (out / "predictions" / "maskclip").rglob("*.png"))
    assert saved == sorted(expected_ids)
    assert metrics["protocol"]["reduce_zero_label"] == (dataset in REDUCED)

    predictions = [np.array(Image.open(out / "predictions" / "maskclip" / f"{i}.png")) for i in expected_ids]
    paths = [root / LABEL_PATHS[dataset].format(i) for i in expected_ids]
    right = _miou(predictions, [_truth(p, dataset in REDUCED) for p in paths], len(CLASSES))
    swapped = _miou(predictions, [_truth(p, dataset not in REDUCED) for p in paths], len(CLASSES))
    assert right != swapped  # this dataset's data tells the two background handlings apart
    got = [metrics["methods"]["maskclip"]["per_class"][name] for name in metrics["classes"]]
    assert got == pytest.approx(right, abs=1e-9)
    assert metrics["classes"] == ["background", "rocket", "sky", "smoke"]


def test_folder_can_reduce_the_zero_label_and_reports_a_missing_mask_as_a_failed_image(tmp_path):
    root = tmp_path / "own"
    _build("folder", root)
    (root / "masks" / "b.png").unlink()
    classes = tmp_path / "classes.txt"
    classes.write_text("rocket\nsky\nsmoke\n")
    out = tmp_path / "out"
    code = main(["evaluate", str(root), "--dataset", "folder", "--classes", str(classes), "--methods", "sclip",
                 "--reduce-zero-label", "--clip-checkpoint", str(TINY_CLIP), "--short-side", "32", "--out", str(out)])
    assert code == 1  # one image failed; the other was scored
    metrics = json.loads((out / "metrics.json").read_text())
    assert [f["id"] for f in metrics["failed"]] == ["b"] and "missing" in metrics["failed"][0]["reason"]
    assert metrics["evaluated"] == 1 and metrics["protocol"]["reduce_zero_label"] is True
    assert metrics["methods"]["sclip"]["mIoU"] is not None


def test_ground_truth_is_read_as_indices_never_colours(tmp_path):
    indices = np.array([[0, 1, 255], [20, 2, 0]], dtype=np.uint8)
    palette = tmp_path / "p.png"
    image = Image.fromarray(indices, mode="L").convert("P")
    image.putpalette([v for i in range(256) for v in (255 - i, i, 0)])  # colours unrelated to the indices
    image.save(palette)
    assert read_label(palette, False).tolist() == indices.tolist()
    assert read_label(palette, True).tolist() == [[255, 0, 255], [19, 1, 255]]
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "rgb.png")
    from surgery.errors import InputError

    with pytest.raises(InputError, match="class indices"):
        read_label(tmp_path / "rgb.png", False)


@pytest.mark.parametrize("dataset, classes, queries", [
    ("voc21", 21, 56), ("voc20", 20, 30), ("context60", 60, 60), ("context59", 59, 59), ("coco_object", 81, 113),
    ("coco_stuff", 171, 171), ("cityscapes", 19, 19), ("ade20k", 150, 150)])
def test_packaged_class_files_are_sclips(dataset, classes, queries):
    parsed = packaged_classes(DATASETS[dataset].classes_file)
    assert len(parsed) == classes and len(parsed.queries) == queries
    if dataset in ("voc21", "coco_object"):
        assert parsed.synonyms[0][:3] == ("sky", "wall", "tree") and len(parsed.synonyms[0]) == 26
    if dataset == "voc21":
        assert len(parsed.synonyms[15]) == 7 and len(parsed.synonyms[20]) == 5
        assert parsed.names[20] == "television monitor"
    if dataset == "context60":
        assert parsed.names[0] == "background" and parsed.synonyms[-1] == ("wood ",)  # SCLIP keeps the space


def test_dataset_table_holds_the_standard_values():
    expected = {"voc21": (336, 65, 0.1, 0.1, False), "voc20": (336, 40, 0.0, None, True),
                "context60": (336, 50, 0.1, None, False), "context59": (336, 40, 0.0, None, True),
                "coco_object": (336, 50, 0.1, None, False), "coco_stuff": (448, 40, 0.0, None, False),
                "cityscapes": (560, 40, 0.0, None, False), "ade20k": (336, 40, 0.0, None, True)}
    for key, (short, scale, prob, area, reduce) in expected.items():
        spec = DATASETS[key]
        assert (spec.short_side, spec.logit_scale, spec.prob_threshold, spec.area_threshold,
                spec.reduce_zero_label) == (short, scale, prob, area, reduce), key


def test_an_id_that_would_leave_the_output_folder_is_refused(tmp_path):
    from surgery.errors import InputError

    _build("voc21", tmp_path)
    _write_list(tmp_path / "ImageSets" / "Segmentation" / "val.txt", ["2008_000003", "../../escape"])
    with pytest.raises(InputError, match="not a plain name"):
        sample_ids(DATASETS["voc21"], tmp_path)
