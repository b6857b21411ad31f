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


def test_stray_files_in_the_root_expire_after_the_ttl(tmp_path):
    now = time.time()
    old, fresh = tmp_path / "old.png", tmp_path / "fresh.png"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(old, (now - 7200, now - 7200))
    os.utime(fresh, (now - 60, now - 60))
    sweep(tmp_path, ttl_s=3600, max_bytes=1 << 30)
    assert not old.exists() and fresh.read_bytes() == b"y"
    paths, _, _ = write_render(tmp_path, _files(1), ["clip_a.png"], downloads=False)  # a render sweeps too
    os.utime(fresh, (now - 7200, now - 7200))
    write_render(tmp_path, _files(1), ["clip_a.png"], downloads=False)
    assert not fresh.exists() and os.path.isfile(paths["clip_a.png"])


def test_write_render_keeps_the_root_under_its_size_limit(tmp_path):
    limit = 250 << 10
    newest = []
    for _ in range(8):  # 100 KB each; without the limit the root would hold 800 KB
        paths, _, _ = write_render(tmp_path, _files(100), ["clip_a.png"], downloads=False, max_bytes=limit)
        newest.append(os.path.dirname(paths["clip_a.png"]))
        older = sum(f.stat().st_size for d in tmp_path.iterdir() if str(d) != newest[-1] for f in d.iterdir())
        assert older <= limit  # swept before writing: what was there fits, plus the new render
        assert os.path.isdir(newest[-1])
    assert 2 <= sum(os.path.isdir(d) for d in newest) <= 3


# --- the app's handlers write through the sweep -----------------------------------------------

def _handlers(tmp_path):
    from pathlib import Path

    from explorer.handlers import Handlers
    from explorer.model_store import ModelConfig, ModelStore

    data = Path(__file__).resolve().parents[1] / "data"
    store = ModelStore(ModelConfig(clip_model="ViT-B/16", clip_checkpoint=data / "parity" / "weights.safetensors",
                                   load_sam=False, text_cache_dir=tmp_path / "text"))
    store.start()
    return store, Handlers(store, tmp_path / "served")


def _run(handlers):
    from pathlib import Path

    import PIL.Image

    image = PIL.Image.open(Path(__file__).resolve().parents[2] / "assets" / "rocket.jpg")
    image.load()
    return list(handlers.run(image, "rocket, smoke", 0.0, "ViT-B/16", 224, "vocab", "off", "fp32"))[-1]


def test_a_run_in_the_app_sweeps_expired_render_folders(tmp_path):
    store, handlers = _handlers(tmp_path)
    try:
        served = tmp_path / "served"
        expired, recent = served / "expired-render", served / "recent-render"
        for folder in (expired, recent):
            folder.mkdir(parents=True)
            (folder / "clip_a.png").write_bytes(b"p" * 1000)
        now = time.time()
        os.utime(expired, (now - 7200, now - 7200))  # past the one-hour TTL
        final = _run(handlers)
        assert not expired.exists() and recent.is_dir()
        json_path = final[6]
        assert os.path.isfile(json_path) and os.path.dirname(os.path.dirname(json_path)) == str(served)
    finally:
        store.close()


def test_the_apps_renders_keep_the_served_root_under_its_size_limit(tmp_path, monkeypatch):
    """write_render binds MAX_BYTES as a default argument when it is defined, so patching the module
    constant would change nothing; the limit it really uses is set through its defaults here."""
    from explorer import served_files

    def folder_bytes(folder):
        return sum(f.stat().st_size for f in folder.iterdir())

    store, handlers = _handlers(tmp_path)
    served = tmp_path / "served"
    try:
        _run(handlers)
        (first,) = served.iterdir()
        size = folder_bytes(first)  # one render: images, zip and result.json
        limit = size * 3 // 2  # room for one render, not two
        monkeypatch.setattr(served_files.write_render, "__defaults__", (served_files.TTL_S, limit))
        now = time.time()
        os.utime(first, (now - 600, now - 600))
        _run(handlers)
        (second,) = [d for d in served.iterdir() if d != first]
        assert first.is_dir()  # one render fit under the limit: kept
        os.utime(second, (now - 300, now - 300))
        _run(handlers)
        (third,) = [d for d in served.iterdir() if d not in (first, second)]
        assert not first.exists() and second.is_dir() and third.is_dir()  # the oldest went first
        assert folder_bytes(second) <= limit
        _run(handlers)
        assert not second.exists() and third.is_dir() and len(list(served.iterdir())) == 2
    finally:
        store.close()
