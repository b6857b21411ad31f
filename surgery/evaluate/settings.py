"""Everything that decides an evaluation's per-image results, resolved once, and its hash.

`EvaluationSettings` is plain, picklable data: the command builds it and every runner (serial,
processes, Ray actors) receives the same value. `options_hash` digests what changes an image's
predictions; each image's record stores it, and a rerun skips images whose record has it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .classes import ClassList
from .datasets import DATASETS, DatasetSpec
from .protocol import Protocol

RECORD_FORMAT = 1  # bump when a record's content changes


@dataclass(frozen=True)
class EvaluationSettings:
    """One evaluation run's resolved options. `methods` are scored method names (features.SCORED_METHODS);
    with `sam`, each also gets `<method>+sam`. Checkpoints are identified by their content digests."""

    root: str
    dataset: str
    classes: ClassList
    methods: tuple[str, ...]
    sam: bool
    protocol: Protocol
    reduce_zero_label: bool
    has_background: bool
    model: str
    model_name: str
    clip_checkpoint: str | None
    clip_weights: str
    sam_model: str | None
    sam_checkpoint: str | None
    sam_weights: str | None
    device: str
    precision: str
    preset: str | None = None
    surgery_depth: int = 6

    @property
    def spec(self) -> DatasetSpec:
        return DATASETS[self.dataset]

    @property
    def scored(self) -> tuple[str, ...]:
        """Every name results are reported under: the methods, then their `+sam` variants."""
        return self.methods + (tuple(f"{m}+sam" for m in self.methods) if self.sam else ())

    def image_path(self, sample_id: str) -> Path:
        return self.spec.image_path(Path(self.root), sample_id)

    def label_path(self, sample_id: str) -> Path:
        return self.spec.label_path(Path(self.root), sample_id)


def options_hash(settings: EvaluationSettings) -> str:
    """16 hex digits over every option that changes an image's predictions (not the root folder: the
    image files' own identities are checked per image)."""
    record = {
        "format": RECORD_FORMAT, "dataset": settings.dataset, "synonyms": [list(g) for g in settings.classes.synonyms],
        "methods": list(settings.methods), "sam": settings.sam, "protocol": asdict(settings.protocol),
        "reduce_zero_label": settings.reduce_zero_label, "has_background": settings.has_background,
        "clip_weights": settings.clip_weights, "model_name": settings.model_name,
        "sam_weights": settings.sam_weights, "sam_model": settings.sam_model,  # for +sam or ProxyCLIP's proxy
        "precision": settings.precision,
        "device_kind": settings.device.split(":")[0], "surgery_depth": settings.surgery_depth,
    }
    text = json.dumps(record, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]
