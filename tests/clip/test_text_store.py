"""The label-feature disk cache: bad entries (empty, truncated, wrong shape, garbage) are dropped and
recomputed, not raised; a disk that cannot be written stops the writes, not the requests; a file cap.

Issue #17: an empty `.npy` left by a crash raised EOFError and broke every request."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from surgery.clip import text_store
from surgery.clip.text_store import TextFeatureStore
from surgery.loading import load_clip

ROOT = Path(__file__).resolve().parents[2]
TINY_CLIP = ROOT / "tests" / "data" / "parity" / "weights.safetensors"
IMAGE = ROOT / "assets" / "chelsea.jpg"
DIM = 8
LABELS = ["cat", "grass", "smoke", "rocket", "sky", "whiskers", "tree"]


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    stream = io.BytesIO()
    np.save(stream, array, allow_pickle=False)
    return stream.getvalue()


def _good() -> np.ndarray:
    return np.arange(DIM, dtype=np.float32) / DIM


# Each one is a file the store must refuse: (name, bytes).
BAD_FILES = [
    ("empty", b""),
    ("truncated", _npy_bytes(_good())[:-5]),
    ("header only", _npy_bytes(_good())[:60]),
    ("too short (3,)", _npy_bytes(np.ones(3, dtype=np.float32))),
    ("2-D", _npy_bytes(np.ones((1, DIM), dtype=np.float32))),
    ("float64", _npy_bytes(np.ones(DIM, dtype=np.float64))),
    ("not finite", _npy_bytes(np.full(DIM, np.nan, dtype=np.float32))),
    ("garbage", bytes(range(256)) * 3),
    ("text", b"not a numpy file at all\n"),
]


def _cache_warnings(caplog, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == text_store.__name__ and name in r.getMessage()]


@pytest.mark.parametrize("kind, content", BAD_FILES, ids=[kind for kind, _ in BAD_FILES])
def test_bad_entry_is_dropped_reported_once_and_rewritten(tmp_path, caplog, kind, content):
    store = TextFeatureStore(tmp_path, "weights0", dimension=DIM)
    store.save("cat", torch.from_numpy(_good()))
    path = store._path("cat")
    assert path.is_file()
    path.write_bytes(content)

    with caplog.at_level(logging.WARNING, logger=text_store.__name__):
        assert store.load("cat") is None  # refused, not raised
        assert not path.exists()  # removed, so the next start does not trip over it again
        assert store.load("cat") is None  # plain miss now
    assert len(_cache_warnings(caplog, path.name)) == 1  # logged once for that file

    store.save("cat", torch.from_numpy(_good()))
    torch.testing.assert_close(store.load("cat"), torch.from_numpy(_good()), atol=0, rtol=0)


def test_good_entries_next_to_bad_ones_are_kept(tmp_path, caplog):
    store = TextFeatureStore(tmp_path, "weights0", dimension=DIM)
    store.save("good", torch.from_numpy(_good()))
    store.save("bad", torch.from_numpy(_good()))
    store._path("bad").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger=text_store.__name__):
        assert store.load("bad") is None
        torch.testing.assert_close(store.load("good"), torch.from_numpy(_good()), atol=0, rtol=0)
    assert store._path("good").is_file()
    assert _cache_warnings(caplog, store._path("good").name) == []


def test_store_without_expected_dimension_still_refuses_non_vectors(tmp_path):
    store = TextFeatureStore(tmp_path, "weights0")  # dimension None: any 1-D float32 vector
    store.save("any", torch.ones(5))
    assert store.load("any").shape == (5,)
    store._path("any").write_bytes(_npy_bytes(np.ones((2, 5), dtype=np.float32)))
    assert store.load("any") is None and not store._path("any").exists()


# --- through the explainer ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def clean_features():
    clean = load_clip(checkpoint=TINY_CLIP)  # memory only
    return clean.text_features(LABELS)


def test_explainer_recomputes_bad_cache_files_and_rewrites_them(tmp_path, clean_features, calls, caplog):
    cache = tmp_path / "text"
    first = load_clip(checkpoint=TINY_CLIP, text_cache_dir=cache)
    torch.testing.assert_close(first.text_features(LABELS), clean_features, atol=0, rtol=0)
    dim = clean_features.shape[1]
    store = TextFeatureStore(cache, first.weights_id, dimension=dim)
    paths = [store._path(label) for label in LABELS]
    assert all(p.is_file() for p in paths)

    corruptions = [b"", paths[1].read_bytes()[:-7], _npy_bytes(np.ones(3, dtype=np.float32)),
                   _npy_bytes(np.ones((2, dim), dtype=np.float32)), bytes(range(200)),
                   _npy_bytes(np.ones(dim, dtype=np.float64)), paths[6].read_bytes()[:40]]
    for path, content in zip(paths, corruptions):
        path.write_bytes(content)

    restarted = load_clip(checkpoint=TINY_CLIP, text_cache_dir=cache)  # a new process: nothing in memory
    encodes = calls.text_encodes()
    with caplog.at_level(logging.WARNING, logger=text_store.__name__):
        features = restarted.text_features(LABELS)
    torch.testing.assert_close(features, clean_features, atol=0, rtol=0)
    assert calls.text_encodes() == encodes + 1  # the bad entries were recomputed (in one batch)
    assert all(len(_cache_warnings(caplog, p.name)) == 1 for p in paths)
    for path, row in zip(paths, clean_features):  # rewritten as good files
        array = np.load(path, allow_pickle=False)
        assert array.dtype == np.float32 and array.shape == (dim,)
        np.testing.assert_array_equal(array, row.numpy())

    third = load_clip(checkpoint=TINY_CLIP, text_cache_dir=cache)
    encodes = calls.text_encodes()
    torch.testing.assert_close(third.text_features(LABELS), clean_features, atol=0, rtol=0)
    assert calls.text_encodes() == encodes  # all from disk now


# --- a disk that cannot be written, and the file cap ------------------------------------------

def test_unwritable_cache_stops_writing_and_memory_still_works(tmp_path, caplog, clean_features, calls):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory should be")  # unwritable even for root
    store = TextFeatureStore(blocker, "weights0", dimension=DIM)
    with caplog.at_level(logging.WARNING, logger=text_store.__name__):
        store.save("cat", torch.from_numpy(_good()))  # no exception
        assert store.load("cat") is None
    disabled = [r for r in caplog.records if "text feature cache disabled" in r.getMessage()]
    assert len(disabled) == 1

    # The store gave up: even once the path could be written, this store writes nothing more.
    blocker.unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=text_store.__name__):
        store.save("grass", torch.from_numpy(_good()))
    assert not blocker.exists() and caplog.records == []

    blocked = tmp_path / "blocked"
    blocked.write_text("x")
    explainer = load_clip(checkpoint=TINY_CLIP, text_cache_dir=blocked)
    encodes = calls.text_encodes()
    torch.testing.assert_close(explainer.text_features(LABELS), clean_features, atol=0, rtol=0)
    torch.testing.assert_close(explainer.text_features(LABELS), clean_features, atol=0, rtol=0)
    assert calls.text_encodes() == encodes + 1  # the second call came from memory
    assert blocked.read_text() == "x"


def test_file_cap_stops_new_files(tmp_path, monkeypatch):
    monkeypatch.setattr(text_store, "MAX_FILES", 3)
    store = TextFeatureStore(tmp_path, "weights0", dimension=DIM)
    vectors = {f"label {i}": torch.full((DIM,), float(i)) for i in range(6)}
    for label, vector in vectors.items():
        store.save(label, vector)
    assert sorted(store.directory.iterdir()) == sorted(store._path(f"label {i}") for i in range(3))
    for i, (label, vector) in enumerate(vectors.items()):
        loaded = store.load(label)
        if i < 3:
            torch.testing.assert_close(loaded, vector, atol=0, rtol=0)
        else:
            assert loaded is None


# --- through the running app, across a restart --------------------------------------------------

def _explain(server) -> tuple[dict, dict[str, np.ndarray]]:
    """result.json and the heatmap images (caption -> pixels) of one /explain call."""
    from gradio_client import Client, handle_file
    from PIL import Image

    client = Client(server.url, verbose=False)
    result, _, _, images = client.predict(handle_file(str(IMAGE)), "cat, grass, whiskers", api_name="/explain",
                                          threshold=0, include_files=True)
    heatmaps = {item["caption"]: np.asarray(Image.open(item["image"]).convert("RGB")) for item in images
                if item["caption"].startswith("CLIP")}
    return result, heatmaps


def test_app_survives_a_damaged_label_cache_after_restart(tmp_path):
    from app_server import running_app

    cache = tmp_path / "cache"
    args = ("--clip-checkpoint", str(TINY_CLIP), "--no-sam")
    env = {"CLIP_SURGERY_CACHE": str(cache)}
    with running_app(tmp_path, *args, env=env) as server:
        before, maps_before = _explain(server)
    files = sorted((cache / "text").rglob("*.npy"))
    assert len(files) > 10  # the vocabulary and the labels were written
    for i, path in enumerate(files):
        path.write_bytes(b"" if i % 2 == 0 else path.read_bytes()[: 20 + i % 60])

    with running_app(tmp_path, *args, env=env) as server:
        after, maps_after = _explain(server)
        log = server.log()
    assert "recomputing it" in log and "Traceback" not in log
    assert [(e["label"], e["points"], e["found"]) for e in after["labels"]] == \
        [(e["label"], e["points"], e["found"]) for e in before["labels"]]
    assert all(e["found"] and e["points"] for e in before["labels"])
    assert after == before
    assert maps_after.keys() == maps_before.keys() and len(maps_before) == 6
    assert all(np.array_equal(maps_after[k], maps_before[k]) for k in maps_before)
    for path in files:  # rewritten
        assert np.load(path, allow_pickle=False).dtype == np.float32
