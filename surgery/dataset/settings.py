"""Everything that decides a calibration run's per-image outputs, resolved once, and its hash.

`CalibrationSettings` is plain, picklable data: the main process builds it from the command line and
every runner (serial, processes, Ray actors) receives the same value, so every worker loads the same
models and explains with the same options. `options_hash` digests exactly what changes an image's
outputs; it is stored with each image's files and decides whether a rerun may skip the image.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..request import ExplainRequest


@dataclass(frozen=True)
class CalibrationSettings:
    """One calibration run's resolved options: the explanation request every image gets (checked once,
    by the command), and the models and output options.

    `labels` is the label text as typed. `sam_model` is None when SAM is off. `device` is a torch device
    string ("cpu", "cuda", "cuda:1"); the request's precision is resolved for it (by each actor, on a Ray
    cluster's GPUs, which the command does not see). `clip_weights` /
    `sam_weights` are the checkpoint files' SHA-256 prefixes (their identity), `model_name` the name
    outputs give the CLIP model.
    """

    request: ExplainRequest
    labels: str
    model: str
    model_name: str
    clip_checkpoint: str | None
    clip_weights: str
    sam_model: str | None
    sam_checkpoint: str | None
    sam_weights: str | None
    device: str
    max_side: int
    coco: bool
    precision_checked_on_load: bool = False  # Ray GPU actors check the request's precision on their GPU

    @property
    def label_texts(self) -> tuple[str, ...]:
        return self.request.label_texts

    def options_record(self) -> dict:
        """The options as JSON-ready values (what summary.json lists under `options`)."""
        request = self.request
        return {
            "labels": self.labels, "label_texts": list(request.label_texts), "model": self.model,
            "model_name": self.model_name, "clip_checkpoint": self.clip_checkpoint, "clip_weights": self.clip_weights,
            "sam_model": self.sam_model, "sam_checkpoint": self.sam_checkpoint, "sam_weights": self.sam_weights,
            "resolution": request.maps.resolution, "redundancy": request.maps.redundancy,
            "methods": list(request.maps.methods), "points_from": request.maps.points_from,
            "threshold": request.threshold, "precision": request.maps.precision, "device": self.device,
            "instances": request.points.instances, "positive_only": request.points.positive_only,
            "max_side": self.max_side, "coco": self.coco,
        }


HASHED_FIELDS = ("label_texts", "clip_weights", "model_name", "sam_weights", "sam_model", "resolution",
                 "redundancy", "methods", "points_from", "threshold", "precision", "instances",
                 "positive_only", "max_side", "coco")


def options_hash(settings: CalibrationSettings) -> str:
    """A 16-hex-digit digest of every option that changes an image's output files.

    Checkpoints enter by their content digest (not their path), the device by its kind (cpu or cuda:
    the same weights give slightly different floats there). The labels enter as parsed, so
    "a,b" and "a, b" share a hash.
    """
    options = settings.options_record()
    record = {name: options[name] for name in HASHED_FIELDS}
    record["device_kind"] = settings.device.split(":")[0]
    text = json.dumps(record, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def checkpoint_digest(path: Path) -> str:
    """A weight file's identity for the options hash: its SHA-256, 16 hex digits (as `load_clip`'s)."""
    from ..hub.download import file_sha256

    return file_sha256(path)[:16]
