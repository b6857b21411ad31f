"""The files the app hands to Gradio: one folder per render under a root, swept by age and size.

Gradio copies what a handler returns into its own cache, so these folders only
have to outlive the request; they are kept an hour (a download link may be
clicked late) and the whole root is held under a size limit, oldest first, so
a slider dragged for minutes cannot fill the disk.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

from surgery.errors import UserError
from surgery.output.files import zip_outputs

log = logging.getLogger("app")

TTL_S = 3600
MAX_BYTES = 512 << 20
WRITE_FAILED = ("The server could not write the result files (disk full or read-only); "
                "try again in a minute.")


class ServedFilesError(UserError):
    """The served-files folder cannot be written: a message for the page, not a traceback."""


def _folder_bytes(folder: Path) -> int:
    try:
        return sum(f.stat().st_size for f in folder.iterdir())
    except OSError:
        return 0


def sweep(root: Path, ttl_s: float = TTL_S, max_bytes: int = MAX_BYTES) -> None:
    """Delete render folders older than `ttl_s`, then the oldest ones until the rest fit `max_bytes`."""
    now = time.time()
    kept = []  # (modified, size, folder)
    for entry in root.glob("*"):
        try:
            modified = entry.stat().st_mtime
        except OSError:
            continue
        expired = now - modified > ttl_s
        if not entry.is_dir():
            if expired:
                entry.unlink(missing_ok=True)
        elif expired:
            shutil.rmtree(entry, ignore_errors=True)
        else:
            kept.append((modified, _folder_bytes(entry), entry))
    kept.sort()
    total = sum(size for _, size, _ in kept)
    for _, size, folder in kept:
        if total <= max_bytes:
            break
        total -= size
        shutil.rmtree(folder, ignore_errors=True)


def write_render(root: Path, files: dict[str, bytes], shown: list[str], downloads: bool,
                 ttl_s: float = TTL_S, max_bytes: int = MAX_BYTES) -> tuple[dict[str, str], str | None, str | None]:
    """Write the `shown` files (name -> path) and, with `downloads`, the zip of all `files` and
    result.json into a new folder under `root` (swept first). A folder that cannot be written (disk
    full, read-only, gone) is a `ServedFilesError` with one log line; a half-written folder is removed."""
    folder = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        sweep(root, ttl_s, max_bytes)
        folder = Path(tempfile.mkdtemp(dir=root))
        return _write_files(folder, files, shown, downloads)
    except OSError as exc:
        log.warning("could not write served files under %s: %s", root, exc)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise ServedFilesError(WRITE_FAILED) from None


def _write_files(folder: Path, files: dict[str, bytes], shown: list[str],
                 downloads: bool) -> tuple[dict[str, str], str | None, str | None]:
    paths = {}
    for name in shown:
        path = folder / name
        path.write_bytes(files[name])
        paths[name] = str(path)
    if not downloads:
        return paths, None, None
    zip_path = folder / "clip-surgery.zip"
    zip_path.write_bytes(zip_outputs(files))
    json_path = folder / "result.json"
    json_path.write_bytes(files["result.json"])
    return paths, str(zip_path), str(json_path)
