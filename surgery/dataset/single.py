"""One image of a calibration run: the one function every runner (serial, processes, Ray) calls.

`explain_one` writes the image's folder exactly as `explain` does (result.json, maps.npz, overlays,
histograms, masks), plus two files of its own:

* `calibration.npz`: per label `k`, `label_k` = the raw (P, g, g) parts of the map the points come
  from (P = 1 for a plain label; for `a+b` each part, as the page's "Suggest threshold" pools them);
* `calibration.json`: `{"options_hash", "file", "source", "width", "height", "labels", "seconds"}`,
  written last (atomically), so a folder holding it with the run's hash, for the same image file
  (name, size and modification time: `source`), is complete and a rerun skips it.

A failure (unreadable image, or any other error on that image) is returned, never raised: it never
stops the run.
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

from ..errors import InputError
from .settings import CalibrationSettings

MARKER = "calibration.json"
RAW_VALUES = "calibration.npz"


@dataclass(frozen=True)
class ImageJob:
    """An image file and the output folder name it was given (unique in the run, decided up front)."""

    path: str
    stem: str

    @property
    def file(self) -> str:
        return Path(self.path).name


@dataclass(frozen=True)
class ImageOutcome:
    """What became of one job: `error` is None when its folder was written, else a one-line reason."""

    file: str
    stem: str
    error: str | None
    seconds: float


@dataclass
class LoadedModels:
    """The models one worker loads once and reuses for every image it explains."""

    explainer: object
    segmenter: object | None


def load_models(settings: CalibrationSettings) -> LoadedModels:
    """CLIP (and SAM unless off) on `settings.device`, checked against the request (resolution, methods,
    and on a Ray GPU actor the precision, which only the actor can check): a `UserError` here is a bad
    option, reported once by the command."""
    from ..clip.text_store import default_text_cache_dir
    from ..loading import load_clip, load_segmenter
    from ..method.table import check_segmenter
    from ..precision import resolve_precision

    request = settings.request
    if settings.precision_checked_on_load:  # a Ray GPU actor: the command could not see this GPU
        resolve_precision(request.maps.precision, settings.device)
    precision = request.maps.precision
    explainer = load_clip(settings.model, settings.clip_checkpoint, text_cache_dir=default_text_cache_dir(),
                          device=settings.device)
    explainer.check_fits(request.maps)
    segmenter = None
    if settings.sam_model is not None:
        segmenter = load_segmenter(settings.sam_model, settings.sam_checkpoint, precision=precision,
                                   device=settings.device)
        check_segmenter(request.maps.methods, segmenter.family)
    return LoadedModels(explainer, segmenter)


def one_line(text: str, limit: int = 300) -> str:
    """An error message on one line, at most `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_marker(directory: Path) -> dict | None:
    """A folder's calibration.json, or None when it is missing or unreadable."""
    try:
        return json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def source_identity(path: Path) -> list[int] | None:
    """An image file's [size, modification time in ns], or None when it cannot be read."""
    try:
        status = Path(path).stat()
    except OSError:
        return None
    return [status.st_size, status.st_mtime_ns]


def is_done(directory: Path, job: ImageJob, digest: str) -> bool:
    """Whether `directory` holds complete outputs of `job`'s image file, as it is now, for the options
    hash `digest`."""
    marker = read_marker(directory)
    return (marker is not None and marker.get("options_hash") == digest and marker.get("file") == job.file
            and marker.get("source") == source_identity(Path(job.path)) and (directory / RAW_VALUES).is_file())


def read_raw_values(directory: Path, label_count: int) -> list[np.ndarray]:
    """Per label, the raw (P, g, g) parts `explain_one` stored in `directory`."""
    with np.load(directory / RAW_VALUES) as data:
        return [data[f"label_{k}"] for k in range(label_count)]


def _clear_marker(directory: Path) -> None:
    """Mark a folder incomplete before its files are rewritten (`write_files` replaces the outputs)."""
    (directory / MARKER).unlink(missing_ok=True)


def _write_marker(directory: Path, record: dict) -> None:
    handle, temp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(record, stream, ensure_ascii=False, indent=1)
    os.replace(temp, directory / MARKER)


def explain_one(job: ImageJob, models: LoadedModels, settings: CalibrationSettings, out: Path,
                digest: str) -> ImageOutcome:
    """Explain one image as `explain` does and write its folder `out / job.stem`, its raw point values and,
    last, its marker with `digest` (the options hash). Never raises for a bad image: returns the reason."""
    from ..memory import release_freed_memory
    from ..output.files import write_files
    from ..pipeline import explain_file

    start = time.perf_counter()
    path = Path(job.path)
    source = source_identity(path)  # before reading: a file changed meanwhile is redone next time
    try:
        done = explain_file(path, models.explainer, models.segmenter, settings.request,
                            max_side=settings.max_side, coco=settings.coco)
        directory = Path(out) / job.stem
        if directory.is_dir():
            _clear_marker(directory)
        write_files(directory, done.files)
        raw = {f"label_{k}": np.asarray(view.maps.point_parts, dtype=np.float32)
               for k, view in enumerate(done.explanation.labels)}
        np.savez_compressed(directory / RAW_VALUES, **raw)
        seconds = time.perf_counter() - start
        _write_marker(directory, {"options_hash": digest, "file": path.name, "source": source, "width": done.result["width"],
                                  "height": done.result["height"], "labels": list(settings.label_texts),
                                  "seconds": round(seconds, 3)})
    except InputError as exc:
        return ImageOutcome(path.name, job.stem, one_line(exc), time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - one bad image never stops a run over thousands
        detail = traceback.format_exception_only(type(exc), exc)[-1]
        return ImageOutcome(path.name, job.stem, one_line(detail), time.perf_counter() - start)
    finally:
        release_freed_memory()
    return ImageOutcome(path.name, job.stem, None, seconds)
