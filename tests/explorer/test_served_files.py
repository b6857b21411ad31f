"""The app's served-file folders: swept by age, and held under a total size, oldest first."""

from __future__ import annotations

import os
import time

from explorer.served_files import sweep, write_render


def _files(kb: int) -> dict[str, bytes]:
    return {"clip_a.png": b"p" * (kb << 10), "result.json": b"{}"}


def test_write_render_writes_shown_files_and_the_downloads(tmp_path):
    paths, zip_path, json_path = write_render(tmp_path, _files(4), ["clip_a.png"], downloads=True)
    assert open(paths["clip_a.png"], "rb").read() == b"p" * 4096
    assert open(json_path, "rb").read() == b"{}" and zip_path.endswith(".zip")
    paths, zip_path, json_path = write_render(tmp_path, _files(4), [], downloads=False)
    assert paths == {} and zip_path is None and json_path is None


def test_sweep_drops_old_folders_then_the_oldest_until_the_rest_fit(tmp_path):
    now = time.time()
    folders = []
    for age in (7200, 300, 200, 100):  # seconds; the first is past the one-hour TTL
        paths, _, _ = write_render(tmp_path, _files(100), ["clip_a.png"], downloads=False, max_bytes=1 << 30)
        folder = os.path.dirname(paths["clip_a.png"])
        os.utime(folder, (now - age, now - age))
        folders.append(folder)
    sweep(tmp_path, ttl_s=3600, max_bytes=250 << 10)  # room for two 100 KB folders
    assert [os.path.isdir(f) for f in folders] == [False, False, True, True]
    sweep(tmp_path, ttl_s=150, max_bytes=1 << 30)
    assert [os.path.isdir(f) for f in folders] == [False, False, False, True]
