"""From per-image records to the run's results: summed areas, metrics.json, prediction PNGs.

`collect` reads every complete record once and sums its areas per scored name (mmseg's dataset-wide
sums); it keeps each image's own mIoU per name for the report's worst images. `write_predictions`
writes `DIR/predictions/<name>/<id>.png`: uint8 class indices as a palette PNG (PASCAL VOC's colour
map), at the ground truth's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .metrics import image_miou, summarise, unique_names
from .settings import EvaluationSettings
from .single import read_record


def voc_palette() -> np.ndarray:
    """(256, 3) uint8: PASCAL VOC's colour map (bit-interleaved class index), as VOC's PNGs use."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        c, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[index] = (r, g, b)
    return palette


PALETTE = voc_palette()


def palette_image(classes: np.ndarray) -> Image.Image:
    image = Image.fromarray(np.ascontiguousarray(classes, dtype=np.uint8), mode="P")
    image.putpalette(PALETTE.reshape(-1).tolist())
    return image


@dataclass
class Results:
    """Summed areas (3, C) per scored name, and each image's mIoU per name (None: nothing to score)."""

    names: tuple[str, ...]
    areas: dict[str, np.ndarray]
    image_scores: dict[str, list[tuple[str, float | None]]] = field(default_factory=dict)
    evaluated: int = 0

    def metrics_json(self, settings: EvaluationSettings, preset, digest: str, images: int,
                     failed: dict[str, str]) -> dict:
        classes = unique_names(settings.classes.names)
        protocol = settings.protocol.record()
        protocol.update({"templates": "openai_imagenet_template (80)", "classes": settings.classes.source,
                         "ignore_index": 255, "reduce_zero_label": settings.reduce_zero_label,
                         "background": settings.has_background, "precision": settings.precision,
                         "surgery_depth": settings.surgery_depth})
        return {
            "dataset": settings.dataset,
            "images": images,
            "evaluated": self.evaluated,
            "protocol": protocol,
            "preset": None if preset is None else preset.record(),
            "classes": classes,
            "methods": {name: summarise(self.areas[name], classes) for name in self.names},
            "failed": [{"id": sample_id, "reason": reason} for sample_id, reason in sorted(failed.items())],
            "model": {"name": settings.model_name, "weights": settings.clip_weights,
                      "sam": settings.sam_model if settings.sam else None},
            "options_hash": digest,
        }


def collect(out: Path, settings: EvaluationSettings, sample_ids: list[str]) -> Results:
    names = settings.scored
    classes = len(settings.classes)
    results = Results(names, {n: np.zeros((3, classes), dtype=np.int64) for n in names},
                      {n: [] for n in names})
    for sample_id in sample_ids:
        record = read_record(out, sample_id, names)
        for name in names:
            areas = record["areas"][name]
            results.areas[name] += areas
            results.image_scores[name].append((sample_id, image_miou(areas)))
        results.evaluated += 1
    return results


def write_predictions(out: Path, settings: EvaluationSettings, sample_ids: list[str]) -> None:
    """DIR/predictions/<name>/<id>.png for every scored name and complete image."""
    names = settings.scored
    for sample_id in sample_ids:
        record = read_record(out, sample_id, names)
        for name in names:
            path = Path(out) / "predictions" / name / f"{sample_id}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            palette_image(record["pred"][name]).save(path)
