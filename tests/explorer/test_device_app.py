"""The app and the device: a device it cannot use is said in the page and in every answer; the
`spaces` package changes nothing off ZeroGPU; and the model tasks work across a process boundary
the way ZeroGPU runs them (a forked worker, arguments and results pickled, CPU data back)."""

from __future__ import annotations

import json
import multiprocessing
import os
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from gradio_client import Client, handle_file

from app_server import ROOT, TINY_CLIP, TINY_SAM, running_app, tiny_args
from explorer import gpu
from explorer.gpu import ModelWork
from explorer.model_store import ModelConfig, ModelStore
from surgery.errors import InputError
from surgery.images import load_image
from surgery.method.labels import parse_labels
from surgery.method.options import MapOptions
from surgery.sam.segmenter import ImageEmbedding

ROCKET = ROOT / "assets" / "rocket.jpg"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the refusal cannot happen")
def test_device_cuda_without_cuda_is_said_in_the_page_and_in_each_answer(tmp_path):
    with running_app(tmp_path, *tiny_args("--device", "cuda"), wait_ready=False) as server:
        client = Client(server.url, verbose=False)
        with pytest.raises(Exception) as error:
            client.predict(handle_file(str(ROCKET)), "rocket", api_name="/explain")
        message = str(error.value)
        assert "Device cuda was asked for" in message and "no usable CUDA GPU" in message
        assert "Traceback" not in message
        with urllib.request.urlopen(server.url, timeout=10) as response:
            assert response.status == 200  # the page is up
        log = server.log()
    assert "Device cuda was asked for" in log and "Traceback" not in log


def test_the_page_offers_the_precisions_this_device_runs():
    cpu = ModelConfig(device="cpu")
    assert cpu.default_precision() == "fp32" and "fp16" not in cpu.precisions()
    assert ModelConfig(device="cuda:7").device_problem() is not None or torch.cuda.device_count() > 7


def test_spaces_installed_off_a_space_changes_nothing(app):
    import spaces

    def task(x):
        return x + 1

    assert not gpu.on_zero_gpu()
    assert spaces.GPU(duration=5)(task) is task  # Hugging Face's decorator is a no-op off ZeroGPU
    assert gpu.gpu_task(lambda x: 5)(task) is task
    result = Client(app.url, verbose=False).predict(handle_file(str(ROCKET)), "rocket, sky", api_name="/explain")
    assert [entry["label"] for entry in result[0]["labels"]] == ["rocket", "sky"]


# --- ZeroGPU's process boundary, for real: tasks run in a forked worker, arguments and results pickled --------
_TASKS: dict[int, object] = {}


def _run_registered(index: int, args: tuple, kwargs: dict):
    return _TASKS[index](*args, **kwargs)


class ForkedWorker:
    """A `gpu_task` stand-in that runs each task in one forked worker process, as `spaces.GPU` does on
    ZeroGPU: the task's arguments and its result cross by pickle, and the worker's memory is its own."""

    def __init__(self) -> None:
        self.pool = None
        self.durations: list[float] = []

    def gpu_task(self, duration):
        def decorate(task):
            index = len(_TASKS)
            _TASKS[index] = task

            def call(*args, **kwargs):
                self.durations.append(duration(*args, **kwargs))
                return self.pool.apply(_run_registered, (index, args, kwargs))
            return call
        return decorate


def _loaded_store(tmp_path: Path) -> ModelStore:
    config = ModelConfig(clip_checkpoint=TINY_CLIP, sam_model="vit_b", sam_checkpoint=TINY_SAM,
                         text_cache_dir=tmp_path / "text", device="cpu")
    store = ModelStore(config)
    store.start(wait=True)  # loaded before the worker is forked, as ZeroGPU wants
    return store


@pytest.fixture()
def one_thread():
    """This process on one intra-op thread too, so worker and in-process results are the same arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _forked_pool():
    # One intra-op thread in the worker: OpenMP's pool does not survive a fork (as in DataLoader's workers).
    return multiprocessing.get_context("fork").Pool(1, initializer=torch.set_num_threads, initargs=(1,))


def test_model_tasks_give_the_same_results_across_a_forked_worker(tmp_path, monkeypatch, one_thread):
    store = _loaded_store(tmp_path)
    local = ModelWork(store)
    worker = ForkedWorker()
    monkeypatch.setattr(gpu, "gpu_task", worker.gpu_task)
    monkeypatch.setattr(gpu, "on_zero_gpu", lambda: True)
    remote = ModelWork(store)
    rgb = load_image(ROCKET)
    labels = parse_labels("rocket, sky, rocket+smoke").labels
    options = MapOptions(resolution=224, methods=("clip", "surgery", "naclip"))
    key = ("vit_b", "fp32")
    prompts = [np.array([[100, 80, 1], [300, 200, 0]]), np.array([[50, 50, 1]])]
    worker.pool = _forked_pool()
    try:
        maps = remote.maps(None, rgb, labels, options)
        embedding = remote.embed(key, rgb)
        masks = remote.decode(key, embedding, prompts)
        remote.pre_encode(None, 224, "fp32", key, rgb)
        with pytest.raises(InputError, match="outside the 640×427 image") as refused:  # the engine's own message
            remote.decode(key, embedding, [np.array([[9999, 5, 1]])])
        worker_pid = worker.pool.apply(os.getpid)
    finally:
        worker.pool.terminate()
        store.close()
    assert worker_pid != os.getpid()
    assert isinstance(embedding, ImageEmbedding) and embedding.features.device.type == "cpu"
    expected = local.maps(None, rgb, labels, options)
    for a, b in zip(expected.labels, maps.labels):
        for method in options.methods:
            np.testing.assert_array_equal(a.maps[method], b.maps[method])
    expected_masks = local.decode(key, local.embed(key, rgb), prompts)
    assert len(masks) == 2
    for a, b in zip(expected_masks, masks):
        np.testing.assert_array_equal(a.candidates, b.candidates)
    assert "Traceback" not in str(refused.value)
    assert len(worker.durations) == 5 and all(0 < d for d in worker.durations)  # asked with the task's arguments
    assert worker.durations[0] > worker.durations[2]  # maps with NaCLIP ask for more than one decode


def test_a_run_on_zerogpu_is_three_gpu_tasks_and_threshold_moves_use_none(tmp_path, monkeypatch, one_thread):
    """The app's Run and threshold moves with every model call in a forked worker: the page's results equal
    the in-process ones; a Run is one task each for the maps, SAM's encoder and all labels' decodes."""
    from explorer.handlers import Handlers

    def result(outputs) -> dict:
        return json.loads(Path(dict(zip(Handlers.PAGE_OUTPUT_NAMES, outputs))["result_json"]).read_text())

    store = _loaded_store(tmp_path)
    upload = PIL.Image.open(ROCKET)
    request = (upload, "rocket, smoke, sky+cloud", 0.0, None, 224, "vocab", "vit_b", "fp32")
    plain = Handlers(store, tmp_path / "plain")
    expected_run = list(plain.run(*request))[-1]
    expected_moved = result(plain.rethreshold(expected_run[-1], 0.02))
    worker = ForkedWorker()
    monkeypatch.setattr(gpu, "gpu_task", worker.gpu_task)
    monkeypatch.setattr(gpu, "on_zero_gpu", lambda: True)
    handlers = Handlers(store, tmp_path / "zero")
    worker.pool = _forked_pool()
    try:
        run = list(handlers.run(*request))[-1]
        tasks_for_run = len(worker.durations)
        moved = result(handlers.rethreshold(run[-1], 0.02))
        tasks_for_move = len(worker.durations) - tasks_for_run
        same = result(handlers.rethreshold(run[-1], 0.02))
        tasks_for_same = len(worker.durations) - tasks_for_run - tasks_for_move
    finally:
        worker.pool.terminate()
        store.close()
    assert result(run[:-1]) == result(expected_run[:-1])
    assert moved == expected_moved and same == moved
    assert tasks_for_run == 3  # maps, SAM image encoder, every found label's decode together
    assert tasks_for_move <= 1 and tasks_for_same == 0  # new points: one decode task; same points: none
    assert run[-1].embedding.features.device.type == "cpu"
