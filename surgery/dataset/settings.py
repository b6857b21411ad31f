"""Everything that decides a calibration run's per-image outputs, resolved once, and its hash.

`CalibrationSettings` is plain, picklable data: the main process builds it from the command line and
every runner (serial, processes, Ray actors) receives the same value, so every worker loads the same
models and explains with the same options. `options_hash` digests exactly what changes an image's
outputs; it is stored with each image's files and decides whether a rerun may skip the image.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..method.results import MapOptions
from ..method.views import PointOptions


@dataclass(frozen=True)
class CalibrationSettings:
    """One calibration run's resolved options.

    `sam_model` is None when SAM is off. `device` is a torch device string ("cpu", "cuda", "cuda:1");
    `precision` is already resolved for it. `clip_weights` / `sam_weights` are the checkpoint files'
    SHA-256 prefixes (their identity), `model_name` the name outputs give the CLIP model.
    """

    labels: str
    label_texts: tuple[str, ...]
    model: str
    model_name: str
    clip_checkpoint: str | None
    clip_weights: str
    sam_model: str | None
    sam_checkpoint: str | None
    sam_weights: str | None
    resolution: int
    redundancy: str
    methods: tuple[str, ...]
    points_from: str
    threshold: float | None
    precision: str
    device: str
    instances: bool
    positive_only: bool
    max_side: int
    coco: bool

    @property
    def map_options(self) -> MapOptions:
        return MapOptions(resolution=self.resolution, redundancy=self.redundancy, precision=self.precision,
                          methods=self.methods, points_from=self.points_from)

    @property
    def point_options(self) -> PointOptions:
        return PointOptions(self.instances, self.positive_only)

    def options_record(self) -> dict:
        """The options as JSON-ready values (what summary.json lists under `options`)."""
        record = asdict(self)
        record["label_texts"] = list(self.label_texts)
        record["methods"] = list(self.methods)
        return record


HASHED_FIELDS = ("label_texts", "clip_weights", "model_name", "sam_weights", "sam_model", "resolution",
                 "redundancy", "methods", "points_from", "threshold", "precision", "instances",
                 "positive_only", "max_side", "coco")


def options_hash(settings: CalibrationSettings) -> str:
    """A 16-hex-digit digest of every option that changes an image's output files.

    Checkpoints enter by their content digest (not their path), the device by its kind (cpu or cuda:
    the same weights give slightly different floats there). The labels enter as parsed, so
    "a,b" and "a, b" share a hash.
    """
    record = {name: getattr(settings, name) for name in HASHED_FIELDS}
    record["label_texts"] = list(settings.label_texts)
    record["methods"] = list(settings.methods)
    record["device_kind"] = settings.device.split(":")[0]
    text = json.dumps(record, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def checkpoint_digest(path: Path) -> str:
    """A weight file's identity for the options hash: its SHA-256, 16 hex digits (as `load_clip`'s)."""
    from ..hub.download import file_sha256

    return file_sha256(path)[:16]
