"""`--preset METHOD`: the table holds each repository's configs, and a preset run records and applies them
(whole-image inference and PAMR for NACLIP, ClearCLIP's own class file and 448 px windows), with explicit
options still winning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from surgery.cli import main
from surgery.evaluate.presets import PRESETS, find_preset
from surgery.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
DATASET = ROOT / "tests" / "data" / "evaluate" / "voc_tiny"
TINY_CLIP = ROOT / "tests" / "data" / "parity" / "weights.safetensors"
DATASETS = ("voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff", "cityscapes", "ade20k")


def test_every_method_has_a_row_per_standard_dataset_naming_its_target():
    for method in ("sclip", "naclip", "clearclip", "maskclip"):
        for dataset in DATASETS:
            preset = PRESETS[(method, dataset)]
            assert preset.settings_source and preset.number_source
            assert preset.published_miou is not None and 0 < preset.published_miou < 100
    assert PRESETS[("sclip", "voc21")].published_miou == 59.63 and PRESETS[("naclip", "voc21")].published_miou == 64.07
    naclip = PRESETS[("naclip", "voc21")]
    assert (naclip.crop, naclip.pamr_steps, naclip.logit_scale, naclip.prob_threshold) == (0, 10, 40, 0.1)
    assert PRESETS[("naclip", "coco_stuff")].short_side == 336  # NACLIP's config, not SCLIP's 448
    clear = PRESETS[("clearclip", "voc21")]
    assert (clear.short_side, clear.crop, clear.stride, clear.logit_scale, clear.prob_threshold) == (448, 448, 224, 50, 0.5)
    assert clear.classes_file == "clearclip/cls_voc21.txt"
    assert (PRESETS[("clearclip", "cityscapes")].crop, PRESETS[("clearclip", "cityscapes")].stride) == (224, 224)
    sclip = PRESETS[("sclip", "voc21")].protocol()
    assert (sclip.short_side, sclip.logit_scale, sclip.prob_threshold, sclip.area_threshold) == (336, 65, 0.1, 0.1)
    with pytest.raises(InputError, match="CLIP Surgery publish none"):
        find_preset("surgery", "voc21")
    with pytest.raises(InputError, match="no configuration"):
        find_preset("sclip", "folder")


def _run(out: Path, *extra: str) -> dict:
    code = main(["evaluate", str(DATASET), "--dataset", "voc21", "--clip-checkpoint", str(TINY_CLIP),
                 "--limit", "1", "--out", str(out), *extra])
    assert code == 0
    return json.loads((out / "metrics.json").read_text())


def test_naclip_preset_runs_whole_image_with_pamr(tmp_path):
    metrics = _run(tmp_path / "naclip", "--preset", "naclip")
    assert list(metrics["methods"]) == ["naclip"]
    protocol = metrics["protocol"]
    assert (protocol["slide_crop"], protocol["pamr_steps"], protocol["logit_scale"], protocol["prob_thd"],
            protocol["area_thd"]) == (0, 10, 40, 0.1, None)
    assert metrics["preset"]["published_miou"] == 64.07 and "NACLIP" in metrics["preset"]["number_source"]
    standard = _run(tmp_path / "standard", "--methods", "naclip")
    assert metrics["methods"]["naclip"] != standard["methods"]["naclip"]


def test_clearclip_preset_uses_its_class_file_and_explicit_options_win(tmp_path):
    metrics = _run(tmp_path / "clear", "--preset", "clearclip", "--prob-threshold", "0.2", "--methods", "clearclip,sclip")
    assert metrics["classes"][0] == "background" and metrics["classes"][15] == "person"
    protocol = metrics["protocol"]
    assert (protocol["resize"]["scale"], protocol["slide_crop"], protocol["slide_stride"], protocol["logit_scale"],
            protocol["prob_thd"], protocol["pad_to_patch"]) == ([2048, 448], 448, 224, 50, 0.2, True)
    assert list(metrics["methods"]) == ["sclip", "clearclip"]
