"""One image of an evaluation: the function every runner calls, and the record it leaves.

`evaluate_one` predicts every method on one image (and `+sam`), scores the predictions against the
ground truth and writes `DIR/records/<id>.npz`, atomically, holding per scored name `pred:<name>`
(H, W) uint8 and `areas:<name>` (3, C) int64 (intersection, prediction, ground truth per class), and
`meta`: JSON with the options hash, the id, the image and mask files' identities (size, modification
time), the size and the seconds taken. A record with the run's hash for the files as they are now is
complete, and a rerun skips the image. A failure is returned, never raised.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..dataset.single import ImageJob, ImageOutcome, one_line, source_identity
from ..errors import InputError
from .settings import EvaluationSettings

RECORDS = "records"


@dataclass
class EvaluationModels:
    """What one worker loads once: CLIP (its explainer, for the text features and the model), the window
    encoder, the query features (Q, c), and SAM when `+sam` is scored."""

    explainer: object
    encoder: object
    text_features: object
    segmenter: object | None


def load_evaluation_models(settings: EvaluationSettings) -> EvaluationModels:
    """The models on `settings.device`; the query features from the disk cache (computed once per model
    and class file). A `UserError` here is a bad option, reported once by the command."""
    from ..method.table import IMAGENET_TEMPLATES
    from ..clip.text_store import default_text_cache_dir
    from ..loading import load_clip, load_segmenter
    from ..method.table import check_segmenter
    from .features import WindowEncoder

    explainer = load_clip(settings.model, settings.clip_checkpoint, text_cache_dir=default_text_cache_dir(),
                          device=settings.device)
    if explainer.is_resnet:
        raise InputError("evaluate scores ViT CLIP models; this checkpoint is a ResNet.")
    text = explainer.text_features(list(settings.classes.queries), IMAGENET_TEMPLATES)
    segmenter = None
    if settings.sam_model is not None:  # for +sam, or as ProxyCLIP's proxy
        segmenter = load_segmenter(settings.sam_model, settings.sam_checkpoint, precision=settings.precision,
                                   device=settings.device)
        check_segmenter(settings.methods, segmenter.family)
    encoder = WindowEncoder(explainer.model.visual, settings.methods, settings.surgery_depth, settings.precision,
                            label_features=text, proxy=getattr(segmenter, "proxy", None))
    return EvaluationModels(explainer, encoder, text, segmenter if settings.sam else None)


def warm_query_features(settings: EvaluationSettings) -> None:
    """Compute the query features once into the disk cache (before workers start, so they read them
    instead of each encoding them): CLIP alone, on the run's device."""
    from ..method.table import IMAGENET_TEMPLATES
    from ..clip.text_store import default_text_cache_dir
    from ..loading import load_clip

    explainer = load_clip(settings.model, settings.clip_checkpoint, text_cache_dir=default_text_cache_dir(),
                          device=settings.device)
    explainer.text_features(list(settings.classes.queries), IMAGENET_TEMPLATES)


def record_path(out: Path, sample_id: str) -> Path:
    return Path(out) / RECORDS / f"{sample_id}.npz"


def identities(settings: EvaluationSettings, sample_id: str) -> list:
    return [source_identity(settings.image_path(sample_id)), source_identity(settings.label_path(sample_id))]


def read_meta(path: Path) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError):
        return None


def is_done(out: Path, settings: EvaluationSettings, sample_id: str, digest: str) -> bool:
    meta = read_meta(record_path(out, sample_id))
    return (meta is not None and meta.get("options_hash") == digest and meta.get("id") == sample_id
            and meta.get("sources") == identities(settings, sample_id))


def read_record(out: Path, sample_id: str, names: tuple[str, ...]) -> dict:
    """{"meta": dict, "pred": {name: (H, W)}, "areas": {name: (3, C)}} of a complete record."""
    with np.load(record_path(out, sample_id), allow_pickle=False) as data:
        return {"meta": json.loads(str(data["meta"])),
                "pred": {n: data[f"pred:{n}"] for n in names}, "areas": {n: data[f"areas:{n}"] for n in names}}


def _write_record(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez_compressed(stream, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def evaluate_one(job: ImageJob, models: EvaluationModels, settings: EvaluationSettings, out: Path,
                 digest: str) -> ImageOutcome:
    """Predict, score and record one image (`job.stem` is its id). Never raises for a bad image."""
    from ..images import load_image
    from ..memory import release_freed_memory
    from .datasets import read_label
    from .metrics import image_areas
    from .predict import predict_methods
    from .sam import sam_prediction

    start = time.perf_counter()
    sample_id = job.stem
    name = Path(job.path).name
    sources = identities(settings, sample_id)  # before reading: a file changed meanwhile is redone next time
    try:
        image = load_image(settings.image_path(sample_id), name=name)
        label = read_label(settings.label_path(sample_id), settings.reduce_zero_label)
        if label.shape != image.shape[:2]:
            raise InputError(f"{name} is {image.shape[1]}x{image.shape[0]} but its mask is "
                             f"{label.shape[1]}x{label.shape[0]}.")
        classes = len(settings.classes)
        arrays: dict[str, np.ndarray] = {}
        embedding = None
        for method, prediction, probabilities in predict_methods(models.encoder, models.text_features, image,
                                                                  settings.classes, settings.protocol):
            arrays[f"pred:{method}"] = prediction
            arrays[f"areas:{method}"] = image_areas(prediction, label, classes)
            if settings.sam:
                if embedding is None:
                    embedding = models.segmenter.embed(image)
                refined = sam_prediction(models.segmenter, embedding, prediction, probabilities,
                                         settings.has_background)
                arrays[f"pred:{method}+sam"] = refined
                arrays[f"areas:{method}+sam"] = image_areas(refined, label, classes)
            del probabilities
        seconds = time.perf_counter() - start
        _write_record(record_path(out, sample_id), arrays, {
            "options_hash": digest, "id": sample_id, "file": name, "sources": sources,
            "width": int(image.shape[1]), "height": int(image.shape[0]), "seconds": round(seconds, 3)})
    except InputError as exc:
        return ImageOutcome(name, sample_id, one_line(exc), time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - one bad image never stops a run over thousands
        detail = traceback.format_exception_only(type(exc), exc)[-1]
        return ImageOutcome(name, sample_id, one_line(detail), time.perf_counter() - start)
    finally:
        release_freed_memory()
    return ImageOutcome(name, sample_id, None, seconds)
