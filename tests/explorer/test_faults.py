"""Faults the app must survive: a served-files folder that cannot be written, and a model error
inside one request. Each fails only the request it hits, with a clear message, and the next request
works once the fault is gone. (A corrupt or truncated label-feature cache at start-up is covered by
tests/clip/test_text_store.py.)

Run as root, so a read-only folder would still be written: the fault is made by putting a regular
file where the folder should be (or above it), which fails every write whoever asks.
"""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from explorer.handlers import GENERIC_ERROR, Handlers
from explorer.served_files import WRITE_FAILED, ServedFilesError, write_render

from app_server import running_app, tiny_args
from test_handlers import make_store, named, result_of, rocket_upload, run_all

ROCKET = Path(__file__).resolve().parents[2] / "assets" / "rocket.jpg"


@pytest.fixture()
def handlers(tmp_path):
    store = make_store(tmp_path)
    yield Handlers(store, tmp_path / "served")
    store.close()


def break_folder(folder: Path, how: str) -> None:
    """Make every write under `folder` fail, even as root."""
    shutil.rmtree(folder, ignore_errors=True)
    if how == "folder is a file":
        folder.write_bytes(b"not a folder")
    else:  # "under a file": the parent is a regular file
        shutil.rmtree(folder.parent, ignore_errors=True)
        folder.parent.write_bytes(b"not a folder")


def restore_folder(folder: Path) -> None:
    for path in (folder, folder.parent):
        if path.is_file():
            path.unlink()


def explain(handlers: Handlers, labels="rocket, smoke", threshold=0.0, include_files=True, sam="vit_b"):
    return handlers.explain(rocket_upload(), labels, threshold, "ViT-B/16", 224, "vocab", sam, "fp32",
                            include_files=include_files)


@pytest.mark.parametrize("how", ["folder is a file", "under a file"])
def test_an_unwritable_served_folder_fails_each_request_clearly_and_the_next_works_once_it_is_back(
        tmp_path, how, caplog):
    import gradio as gr

    store = make_store(tmp_path)
    folder = tmp_path / ("served" if how == "folder is a file" else "blocker/served")
    handlers = Handlers(store, folder)
    try:
        if how == "folder is a file":
            state = named(run_all(handlers, rocket_upload())[-1])["state"]  # a session from before the fault
        else:
            state = named(run_all(Handlers(store, tmp_path / "elsewhere"), rocket_upload())[-1])["state"]
        break_folder(folder, how)
        attempts = {
            "run": lambda: run_all(handlers, rocket_upload(), sam="off"),
            "threshold move": lambda: handlers.rethreshold(state, 0.01),
            "explain with files": lambda: explain(handlers),
        }
        for name, attempt in attempts.items():
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="app"), pytest.raises(gr.Error) as raised:
                attempt()
            assert raised.value.message == WRITE_FAILED, name
            assert "Traceback" not in caplog.text, name  # one line for the operator, no stack
            warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(warnings) == 1 and "could not write served files" in warnings[0].getMessage(), name
        # what needs no file still works meanwhile
        result, _, zip_path, images = explain(handlers, include_files=False)
        assert [e["label"] for e in result["labels"]] == ["rocket", "smoke"] and zip_path is None

        restore_folder(folder)
        final = named(run_all(handlers, rocket_upload(), sam="off")[-1])
        assert Path(final["zip"]).is_file()
        moved = result_of(handlers.rethreshold(state, 0.01))
        assert moved["threshold"] == pytest.approx(0.01)
        result, _, zip_path, images = explain(handlers)
        assert Path(zip_path).is_file() and all(Path(path).is_file() for path, _ in images)
    finally:
        store.close()


def test_a_write_failing_half_way_leaves_no_half_written_folder(tmp_path, monkeypatch):
    """Disk full while the zip is written: a clear error, and the render's folder is removed."""
    real = Path.write_bytes

    def full(self, data):
        if self.name.endswith(".zip"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    files = {"clip_a.png": b"p" * 100, "result.json": b"{}"}
    with pytest.raises(ServedFilesError, match="could not write the result files"):
        write_render(tmp_path, files, ["clip_a.png"], downloads=True)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(Path, "write_bytes", real)
    paths, zip_path, _ = write_render(tmp_path, files, ["clip_a.png"], downloads=True)
    assert Path(zip_path).is_file() and Path(paths["clip_a.png"]).read_bytes() == b"p" * 100


def test_a_model_error_in_one_request_affects_that_request_only(handlers, caplog):
    import gradio as gr

    segmenter = handlers.store.sam("vit_b", "fp32")
    original = segmenter.embed
    failures = []

    def fails_once(image_rgb):
        if not failures:
            failures.append(1)
            raise RuntimeError("simulated failure inside SAM")
        return original(image_rgb)

    segmenter.embed = fails_once
    try:
        with caplog.at_level(logging.ERROR, logger="app"), pytest.raises(gr.Error) as raised:
            explain(handlers, labels="rocket, smoke")
        assert raised.value.message == GENERIC_ERROR and "simulated failure inside SAM" in caplog.text
        result, _, zip_path, _ = explain(handlers, labels="smoke, sky")  # the next request, same models
        assert [e["label"] for e in result["labels"]] == ["smoke", "sky"] and Path(zip_path).is_file()
        assert result["sam_model"] is not None
        final = result_of(run_all(handlers, rocket_upload())[-1])
        assert all(e["mask_area"] is not None for e in final["labels"] if e["found"])
    finally:
        segmenter.embed = original
    assert failures == [1]


def test_an_unwritable_served_folder_through_the_running_app(tmp_path):
    folder = tmp_path / "served"
    with running_app(tmp_path, *tiny_args(), env={"CLIP_SURGERY_OUTPUT_DIR": str(folder)}) as server:
        client = Client(server.url, verbose=False)

        def ask(include_files=True):
            return client.predict(handle_file(str(ROCKET)), "rocket, smoke", 0.0, resolution=224, sam_choice="off",
                                  include_files=include_files, api_name="/explain")

        assert ask()[2] is not None and any(folder.iterdir())  # the app writes where it was told
        break_folder(folder, "folder is a file")
        for _ in range(2):
            with pytest.raises(Exception) as error:
                ask()
            assert "could not write the result files" in str(error.value)
            assert "Traceback" not in str(error.value)
        assert ask(include_files=False)[0]["labels"][0]["label"] == "rocket"  # up, and answering
        assert server.process.poll() is None
        restore_folder(folder)
        outputs = ask()
        assert outputs[2] is not None and outputs[0]["labels"][1]["label"] == "smoke"
        log = server.log()
        assert log.count("could not write served files") == 2 and "Traceback" not in log
