"""Each paper's own evaluation settings, per dataset, in one table (`--preset METHOD`).

Read from each method's repository configs (`configs/cfg_<dataset>.py` and the segmentor's defaults);
each row names the published mIoU it targets and where that number is printed. The standard protocol
(`datasets.DATASETS`) stays the default; a preset changes only what its row lists. What no row can
reproduce: ClearCLIP's harness (and so the MaskCLIP rows) runs CLIP in float16, this one in float32
unless `--precision` says otherwise.

| method | source of the settings | source of the number |
|---|---|---|
| sclip | wangf3014/SCLIP `configs/cfg_*.py` (= the standard protocol) | SCLIP README, results table |
| naclip | sinahmr/NACLIP `configs/cfg_*.py`, `naclip.py` defaults, `test_all.sh ... 5 on` (PAMR on) | NACLIP README, results table (with PAMR) |
| clearclip | mc-lan/ClearCLIP `configs/cfg_*.py`, `clearclip_segmentor.py` defaults, model_type ClearCLIP | ClearCLIP paper (ECCV 2024), Table 1, ViT-B/16 |
| maskclip | mc-lan/ClearCLIP's harness with model_type MaskCLIP (the MaskCLIP-in-mmseg setting ClearCLIP compares under) | ClearCLIP paper, Table 1, MaskCLIP row (figures first reported by TCL, CVPR 2023, with its own harness) |
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from .protocol import Protocol


@dataclass(frozen=True)
class Preset:
    """One method's published configuration for one dataset. `crop` 0: whole-image inference."""

    method: str
    dataset: str
    short_side: int
    crop: int
    stride: int
    logit_scale: float
    prob_threshold: float
    classes_file: str
    published_miou: float | None
    settings_source: str
    number_source: str
    area_threshold: float | None = None
    pamr_steps: int = 0
    pad_to_patch: bool = False
    note: str = ""

    def protocol(self) -> Protocol:
        return Protocol(short_side=self.short_side, crop=self.crop, stride=self.stride,
                        logit_scale=self.logit_scale, prob_threshold=self.prob_threshold,
                        area_threshold=self.area_threshold, pamr_steps=self.pamr_steps,
                        pad_to_patch=self.pad_to_patch)

    def record(self) -> dict:
        return {"method": self.method, "dataset": self.dataset, "published_miou": self.published_miou,
                "settings_source": self.settings_source, "number_source": self.number_source, "note": self.note}


_SCLIP_CLASSES = {"voc21": "cls_voc21.txt", "voc20": "cls_voc20.txt", "context60": "cls_context60.txt",
                  "context59": "cls_context59.txt", "coco_object": "cls_coco_object.txt",
                  "coco_stuff": "cls_coco_stuff.txt", "cityscapes": "cls_city_scapes.txt", "ade20k": "cls_ade20k.txt"}
_CONFIG = {"voc21": "cfg_voc21.py", "voc20": "cfg_voc20.py", "context60": "cfg_context60.py",
           "context59": "cfg_context59.py", "coco_object": "cfg_coco_object.py", "coco_stuff": "cfg_coco_stuff164k.py",
           "cityscapes": "cfg_city_scapes.py", "ade20k": "cfg_ade20k.py"}


def _sclip() -> list[Preset]:
    # (short side, logit scale, prob_thd, area_thd, README mIoU)
    rows = {"voc21": (336, 65, 0.1, 0.1, 59.63), "voc20": (336, 40, 0.0, None, 81.54),
            "context60": (336, 50, 0.1, None, 31.74), "context59": (336, 40, 0.0, None, 34.46),
            "coco_object": (336, 50, 0.1, None, 33.52), "coco_stuff": (448, 40, 0.0, None, 22.77),
            "cityscapes": (560, 40, 0.0, None, 32.34), "ade20k": (336, 40, 0.0, None, 16.45)}
    return [Preset("sclip", d, short, 224, 112, scale, prob, _SCLIP_CLASSES[d], miou,
                   f"wangf3014/SCLIP configs/{_CONFIG[d]}", "SCLIP README, results table", area_threshold=area)
            for d, (short, scale, prob, area, miou) in rows.items()]


def _naclip() -> list[Preset]:
    # (short side, crop (0 = whole image), prob_thd, README mIoU with PAMR)
    rows = {"voc21": (336, 0, 0.1, 64.07), "voc20": (336, 0, 0.0, 83.03), "context60": (336, 224, 0.1, 34.99),
            "context59": (336, 224, 0.0, 38.35), "coco_object": (336, 224, 0.1, 36.19),
            "coco_stuff": (336, 224, 0.0, 25.69), "cityscapes": (560, 224, 0.0, 38.27), "ade20k": (336, 224, 0.0, 19.05)}
    return [Preset("naclip", d, short, crop, 112, 40, prob, _SCLIP_CLASSES[d], miou,
                   f"sinahmr/NACLIP configs/{_CONFIG[d]}, naclip.py defaults, PAMR on (test_all.sh)",
                   "NACLIP README, results table (PAMR on)", pamr_steps=10,
                   note="whole image: no sliding windows" if crop == 0 else "")
            for d, (short, crop, prob, miou) in rows.items()]


_CLEARCLIP_CLASSES = {**_SCLIP_CLASSES, "voc21": "clearclip/cls_voc21.txt", "voc20": "clearclip/cls_voc20.txt",
                      "coco_object": "clearclip/cls_coco_object.txt"}
_CLEARCLIP_PROB = {"voc21": 0.5, "context60": 0.15, "coco_object": 0.4}


def _clearclip_harness(method: str, published: dict[str, float], number_source: str) -> list[Preset]:
    rows = []
    for d in _SCLIP_CLASSES:
        crop, stride = (224, 224) if d == "cityscapes" else (448, 224)  # cfg_city_scapes sets slide_crop=224
        rows.append(Preset(method, d, 448, crop, stride, 50, _CLEARCLIP_PROB.get(d, 0.0), _CLEARCLIP_CLASSES[d],
                           published.get(d), f"mc-lan/ClearCLIP configs/{_CONFIG[d]}, clearclip_segmentor.py defaults",
                           number_source, pad_to_patch=True, note="upstream runs CLIP in float16"))
    return rows


_CLEARCLIP_TABLE1 = {"voc20": 80.9, "context59": 35.9, "coco_stuff": 23.9, "cityscapes": 30.0, "ade20k": 16.7,
                     "voc21": 51.8, "context60": 32.6, "coco_object": 33.0}
_MASKCLIP_TABLE1 = {"voc20": 74.9, "context59": 26.4, "coco_stuff": 16.4, "cityscapes": 12.6, "ade20k": 9.8,
                    "voc21": 38.8, "context60": 23.6, "coco_object": 20.6}

PRESETS: dict[tuple[str, str], Preset] = {
    (p.method, p.dataset): p for p in (
        _sclip() + _naclip()
        + _clearclip_harness("clearclip", _CLEARCLIP_TABLE1, "ClearCLIP paper (ECCV 2024), Table 1, ViT-B/16")
        + _clearclip_harness("maskclip", _MASKCLIP_TABLE1,
                             "ClearCLIP paper, Table 1, MaskCLIP row (first reported by TCL, CVPR 2023)"))
}


def find_preset(method: str, dataset: str) -> Preset:
    """The row for (method, dataset); an `InputError` listing what exists otherwise."""
    method = str(method).strip().lower()
    preset = PRESETS.get((method, dataset))
    if preset is None:
        methods = sorted({m for m, _ in PRESETS})
        if method not in methods:
            raise InputError(f"No published configuration for '{method[:40]}'; presets exist for: "
                             f"{', '.join(methods)} (CLIP and CLIP Surgery publish none).")
        raise InputError(f"{method} publishes no configuration for the dataset {dataset}.")
    return preset
