"""Reading weight files safely: only through `safetensors` or `torch.load(weights_only=True)`,
so a checkpoint can never run code."""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import torch

from ..errors import CheckpointError

log = logging.getLogger(__name__)

STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from `.safetensors` or a `.pt`/`.pth`/`.bin` file as float32 CPU tensors.

    Raises `CheckpointError` naming the file for anything missing, truncated or
    not a plain state dict.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file {name} was not found. Check the path you passed.")
    if path.suffix not in STATE_DICT_SUFFIXES:
        raise CheckpointError(
            f"Checkpoint {name} has an unknown extension; use a .safetensors, .pt, .pth or .bin state dict."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path), device="cpu")
        else:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        log.warning("reading %s failed: %r", path, exc)
        hint = "It may be truncated or corrupt: download it again."
        if zipfile.is_zipfile(path) and "constants.pkl" in _zip_names(path):
            hint = "It is a TorchScript archive; export its state_dict() and pass that file instead."
        raise CheckpointError(f"Could not read checkpoint {name}. {hint}") from None
    for wrapper in ("state_dict", "model"):  # training checkpoints; SAM 2.1 releases are {"model": state_dict}
        if isinstance(raw, dict) and isinstance(raw.get(wrapper), dict):
            raw = raw[wrapper]
            break
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"Checkpoint {name} is not a state dict of tensors.")
    return {key: (value.float() if value.is_floating_point() else value) for key, value in raw.items()}


def _zip_names(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as archive:
        return {item.rsplit("/", 1)[-1] for item in archive.namelist()}
