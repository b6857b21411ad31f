"""Obtaining weight files: download through `huggingface_hub` and checksum verification.

Downloads go through `huggingface_hub` (its cache; `HF_HUB_OFFLINE=1` is
honoured by the library itself). A registry entry with a pinned SHA-256 (or
published prefix) is verified against it; an entry without one gets the digest
of its first download recorded, and later copies are verified against that.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from ..cache import disk_cache_root
from ..errors import CheckpointError, WeightsUnavailable
from .registry import HubCheckpoint

log = logging.getLogger(__name__)

_HASH_CHUNK = 8 << 20


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def digest_record(entry: HubCheckpoint) -> Path:
    """Where the digest of an unpinned entry's first download is kept."""
    key = hashlib.sha256(f"{entry.repo_id}/{entry.filename}".encode("utf-8")).hexdigest()[:24]
    return disk_cache_root() / "digests" / f"{key}.sha256"


def _recorded_digest(entry: HubCheckpoint) -> str | None:
    try:
        text = digest_record(entry).read_text().strip()
    except OSError:
        return None
    return text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else None


def _record_digest(entry: HubCheckpoint, digest: str) -> None:
    record = digest_record(entry)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        staging = record.with_suffix(".tmp")
        staging.write_text(digest)
        os.replace(staging, record)
    except OSError as exc:  # read-only cache: the file is used unverified, as before the first record
        log.warning("could not record the digest of %s: %s", entry.filename, exc)


def checksum_problem(path: Path, entry: HubCheckpoint, recorded: str | None = None) -> str | None:
    """None when the file matches the entry's pinned digest (or, for an entry without one, the
    `recorded` digest of its first download), else a description."""
    expected = entry.sha256 or recorded
    if expected is None and entry.sha256_prefix is None:
        return None
    actual = file_sha256(path)
    if expected is not None and actual != expected:
        which = "pinned" if entry.sha256 else "first download's"
        return f"SHA-256 {actual[:12]}… differs from the {which} {expected[:12]}…"
    if entry.sha256_prefix is not None and not actual.startswith(entry.sha256_prefix):
        return f"SHA-256 {actual[:12]}… does not start with the published {entry.sha256_prefix}"
    return None


HUB_TIMEOUT_S = 5.0  # one request: an unreachable Hub is reported in seconds, not after a minute of retries


def _fetch(entry: HubCheckpoint, fresh: bool) -> Path:
    """The file from the local hub cache when it is there (no request at all), else downloaded. Before
    a download one quick request without retries checks that the Hub answers."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    if not fresh:
        try:
            return Path(hf_hub_download(entry.repo_id, entry.filename, local_files_only=True))
        except Exception:  # not cached yet: go online (or fail below when offline)
            pass
    if _offline():
        raise RuntimeError("offline")
    get_hf_file_metadata(hf_hub_url(entry.repo_id, entry.filename), timeout=HUB_TIMEOUT_S)
    return Path(hf_hub_download(entry.repo_id, entry.filename, force_download=fresh))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def download_checkpoint(entry: HubCheckpoint) -> Path:
    """Fetch (or find in the hub cache) one registry file and verify it.

    A cached file that fails its checksum (a broken earlier download) is fetched
    once more; if that also fails the caller gets a `CheckpointError`. An entry
    without a published digest has its first download's digest recorded.
    """
    where = f"{entry.repo_id}/{entry.filename}"
    recorded = None if entry.sha256 else _recorded_digest(entry)
    problem = None
    for attempt in range(2):
        try:
            path = _fetch(entry, fresh=attempt > 0)
        except Exception as exc:  # offline, hub down, not cached, gated: all one story for a user
            log.warning("download of %s failed: %s", where, str(exc).splitlines()[0][:200] if str(exc) else repr(exc))
            if problem is not None:
                raise CheckpointError(
                    f"The cached {entry.name} file {where} is corrupt ({problem}) and a fresh download "
                    "failed. Connect to the internet and try again, or pass a local checkpoint file."
                ) from None
            why = "HF_HUB_OFFLINE is set and it is not in the local cache" if _offline() else (
                "the Hugging Face Hub could not be reached")
            raise WeightsUnavailable(
                f"The {entry.name} weights ({where}, {entry.size_note}) are not available: {why}. "
                "Connect to the internet once, or pass a local checkpoint file "
                "(--clip-checkpoint / --sam-checkpoint)."
            ) from None
        problem = checksum_problem(path, entry, recorded)
        if problem is None:
            if entry.sha256 is None and recorded is None:
                _record_digest(entry, file_sha256(path))
            return path
        log.warning("%s failed its checksum (%s); %s", where, problem,
                    "fetching it again" if attempt == 0 else "giving up")
    raise CheckpointError(
        f"The downloaded {entry.name} file {where} is corrupt ({problem}) even after a fresh "
        "download. Delete it from the Hugging Face cache and try again, or pass a local file."
    )
