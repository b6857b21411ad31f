"""summary.json: pooled raw values per label, Otsu's suggested threshold, found rates at it.

Reads back what `explain_one` stored in each image folder (so done and skipped images count alike)
and is independent of the runner and of completion order: images are taken in file-name order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..method.threshold import otsu_threshold, threshold_note
from ..method.views import label_points
from .settings import CalibrationSettings
from .single import ImageJob, read_marker, read_raw_values

HISTOGRAM_BINS = 64  # summary.json's per-label histograms (edges shared by every label)


@dataclass(frozen=True)
class ImageValues:
    """One explained image's raw point values per label, and its working size."""

    file: str
    stem: str
    width: int
    height: int
    parts: tuple[np.ndarray, ...]  # per label, (P, g, g) raw


def read_image_values(jobs: Sequence[ImageJob], out: Path, label_count: int) -> tuple[list[ImageValues], dict]:
    """The stored values of every job whose folder is complete, in file-name order, and
    {file: reason} for folders that could not be read back."""
    values, unreadable = [], {}
    for job in sorted(jobs, key=lambda j: (j.file, j.stem)):
        directory = out / job.stem
        marker = read_marker(directory)
        try:
            parts = read_raw_values(directory, label_count)
            values.append(ImageValues(job.file, job.stem, int(marker["width"]), int(marker["height"]),
                                      tuple(parts)))
        except (OSError, KeyError, TypeError, ValueError) as exc:
            unreadable[job.file] = f"its stored outputs could not be read back ({type(exc).__name__})"
    return values, unreadable


def build_summary(settings: CalibrationSettings, image_count: int, images: Sequence[ImageValues],
                  failed: dict[str, str], digest: str) -> dict:
    """summary.json's content (without `timings`, which the command adds).

    `histogram`: counts over `HISTOGRAM_BINS` bins whose edges span the pooled values of all labels;
    `suggested_threshold`: `otsu_threshold` (the page's function and bins) of all labels' pooled
    values; `found_rate`: the share of explained images where the label is found at that threshold.
    """
    labels = settings.request.labels
    pooled = [np.concatenate([image.parts[k].reshape(-1) for image in images]) if images
              else np.zeros(0, np.float32) for k in range(len(labels))]
    everything = np.concatenate(pooled) if pooled else np.zeros(0, np.float32)
    suggested = otsu_threshold(everything) if everything.size else None
    if everything.size:
        low, high = float(everything.min()), float(everything.max())
        edges = np.histogram_bin_edges(everything.astype(np.float64), bins=HISTOGRAM_BINS,
                                       range=(low, high) if high > low else None)
    else:
        edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    points = settings.request.points
    found = [[label_points(label, image.parts[k], image.width, image.height, suggested, points)[0]
              for k, label in enumerate(labels)] for image in images]
    label_records = []
    for k, label in enumerate(labels):
        counts, _ = np.histogram(pooled[k].astype(np.float64), bins=edges)
        hits = sum(row[k] for row in found)
        label_records.append({
            "label": label.text,
            "values": int(pooled[k].size),
            "histogram": {"counts": [int(c) for c in counts], "edges": [float(e) for e in edges]},
            "image_max": {image.file: float(np.max(image.parts[k])) for image in images},
            "found": int(hits),
            "found_rate": hits / len(images) if images else None,
        })
    summary = {
        "images": image_count,
        "explained": len(images),
        "failed": [{"file": file, "reason": reason} for file, reason in sorted(failed.items())],
        "suggested_threshold": suggested,
        "points_from": settings.request.maps.points_from,
        "labels": label_records,
        "results": [{"file": image.file, "folder": image.stem, "found": row} for image, row in zip(images, found)],
        "options": {**settings.options_record(), "options_hash": digest},
    }
    note = threshold_note(suggested)
    if note:
        summary["suggested_threshold_note"] = note
    return summary
