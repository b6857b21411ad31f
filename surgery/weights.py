"""Obtaining and reading weight files.

Downloads go through `huggingface_hub` (its cache; `HF_HUB_OFFLINE=1` is
honoured by the library itself). Files are read only through `safetensors` or
`torch.load(weights_only=True)`, so a checkpoint can never run code.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from pathlib import Path

import torch

from .errors import CheckpointError, WeightsUnavailable
from .registry import HubCheckpoint

log = logging.getLogger(__name__)

STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
_HASH_CHUNK = 8 << 20


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_problem(path: Path, entry: HubCheckpoint) -> str | None:
    """None when the file matches the entry's pinned digest, else a description."""
    if entry.sha256 is None and entry.sha256_prefix is None:
        return None
    actual = file_sha256(path)
    if entry.sha256 is not None and actual != entry.sha256:
        return f"SHA-256 {actual[:12]}… differs from the pinned {entry.sha256[:12]}…"
    if entry.sha256_prefix is not None and not actual.startswith(entry.sha256_prefix):
        return f"SHA-256 {actual[:12]}… does not start with the published {entry.sha256_prefix}"
    return None


def download_checkpoint(entry: HubCheckpoint) -> Path:
    """Fetch (or find in the hub cache) one registry file and verify it.

    A cached file that fails its checksum (a broken earlier download) is fetched
    once more; if that also fails the caller gets a `CheckpointError`.
    """
    from huggingface_hub import hf_hub_download

    where = f"{entry.repo_id}/{entry.filename}"
    problem = None
    for attempt in range(2):
        try:
            path = Path(hf_hub_download(entry.repo_id, entry.filename, force_download=attempt > 0))
        except Exception as exc:  # offline, hub down, not cached, gated: all one story for a user
            log.warning("download of %s failed: %r", where, exc)
            if problem is not None:
                raise CheckpointError(
                    f"The cached {entry.name} file {where} is corrupt ({problem}) and a fresh download "
                    "failed. Connect to the internet and try again, or pass a local checkpoint file."
                ) from None
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
            why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else (
                "the Hugging Face Hub could not be reached")
            raise WeightsUnavailable(
                f"The {entry.name} weights ({where}, {entry.size_note}) are not available: {why}. "
                "Connect to the internet once, or pass a local checkpoint file "
                "(--clip-checkpoint / --sam-checkpoint)."
            ) from None
        problem = checksum_problem(path, entry)
        if problem is None:
            return path
        log.warning("%s failed its checksum (%s); %s", where, problem,
                    "fetching it again" if attempt == 0 else "giving up")
    raise CheckpointError(
        f"The downloaded {entry.name} file {where} is corrupt ({problem}) even after a fresh "
        "download. Delete it from the Hugging Face cache and try again, or pass a local file."
    )


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
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"Checkpoint {name} is not a state dict of tensors.")
    return {key: (value.float() if value.is_floating_point() else value) for key, value in raw.items()}


def _zip_names(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as archive:
        return {item.rsplit("/", 1)[-1] for item in archive.namelist()}
