"""Load through the real /explain endpoint: 16 clients at once, each a Run and five threshold
variations on its own images and labels, and every answer belongs to its own request; with the
queue full, a request is refused at the door ("busy") and does no model work.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import PIL.Image
import pytest
from gradio_client import Client, handle_file

import robust_media as media
from app_server import running_app, tiny_args

CLIENTS = 16
THRESHOLDS = 5
LABEL_SETS = ["cat, grass", "rocket, smoke+sky", "person, flag", "cup, coffee, spoon+saucer", "man, camera+tripod",
              "sky", "dog, bird", "tree, road, car"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """One image per client, each of its own size (so a size mix-up cannot go unnoticed)."""
    folder = tmp_path_factory.mktemp("load-images")
    sources = sorted(media.ASSETS.glob("*.jpg"))
    out = []
    for index in range(CLIENTS):
        with PIL.Image.open(sources[index % len(sources)]) as image:
            picture = image.convert("RGB").resize((180 + 11 * index, 150 + 7 * index))
        path = folder / f"load-{index}.png"
        picture.save(path)
        out.append(path)
    return out


def request_plan(images, client: int, step: int) -> dict:
    """Step 0 is the Run (threshold off, with files and sometimes SAM); steps 1-5 move the threshold
    on another image and label set. Every request's threshold and labels are its own."""
    labels = LABEL_SETS[(client + step) % len(LABEL_SETS)].split(", ") + [f"client {client} step {step}"]
    return {
        "image": images[(client + 3 * step) % len(images)],
        "labels": labels,
        "threshold": 0.0 if step == 0 else round(0.001 * (client + 1) + 0.01 * step, 3),
        "sam_choice": "vit_b" if step == 0 and client % 2 == 0 else "off",
        "include_files": step == 0,
    }


def send(client: Client, plan: dict, resolution: int = 224):
    return client.submit(handle_file(str(plan["image"])), ", ".join(plan["labels"]), plan["threshold"],
                         resolution=resolution, sam_choice=plan["sam_choice"], include_files=plan["include_files"],
                         api_name="/explain")


def check_own_result(outputs, plan: dict) -> None:
    result = media.result_json(outputs)
    where = f"{plan['image'].name} / {plan['labels']}"
    assert [entry["label"] for entry in result["labels"]] == plan["labels"], where
    assert (result["width"], result["height"]) == media.image_size(plan["image"]), where
    assert result["threshold"] == (plan["threshold"] or None), where
    assert (result["sam_model"] is None) == (plan["sam_choice"] == "off"), where
    assert (outputs[2] is not None) == plan["include_files"], where
    if plan["include_files"]:
        captions = [c.split(" · ", 1)[1] for c in media.gallery_captions(outputs, ("CLIP Surgery",))]
        assert captions == plan["labels"], where


def test_sixteen_clients_with_a_run_and_five_threshold_moves_each_get_their_own_results(app, images):
    plans = {(c, s): request_plan(images, c, s) for c in range(CLIENTS) for s in range(1 + THRESHOLDS)}
    outcomes: dict[tuple[int, int], object] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(CLIENTS)

    def one_client(c: int) -> None:
        client = Client(app.url, verbose=False)
        barrier.wait(timeout=60)
        for s in range(1 + THRESHOLDS):
            try:
                outcome = send(client, plans[c, s]).result(timeout=300)
            except Exception as error:  # noqa: BLE001 - reported below
                outcome = error
            with lock:
                outcomes[c, s] = outcome

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(one_client, range(CLIENTS)))
    failures = {key: repr(value)[:300] for key, value in outcomes.items() if isinstance(value, Exception)}
    assert not failures, failures
    assert len(outcomes) == len(plans), "a request was lost"
    for key, outputs in outcomes.items():
        check_own_result(outputs, plans[key])


def test_a_full_queue_answers_busy_and_the_refused_requests_do_no_model_work(tmp_path, images):
    with running_app(tmp_path, *tiny_args(), env={"QUEUE_SIZE": "1"}) as server:
        clients = [Client(server.url, verbose=False) for _ in range(CLIENTS)]
        plans = [{"image": images[c], "labels": ["rocket", "smoke", "sky"], "threshold": 0.0,
                  "sam_choice": "vit_b", "include_files": False} for c in range(CLIENTS)]
        barrier = threading.Barrier(CLIENTS)
        calls_before = len(server.model_calls())

        def one(c: int):
            barrier.wait(timeout=60)
            try:
                return send(clients[c], plans[c], resolution=512).result(timeout=300)  # slow enough to pile up
            except Exception as error:  # noqa: BLE001 - classified below
                return error

        with ThreadPoolExecutor(CLIENTS) as pool:
            outcomes = list(pool.map(one, range(CLIENTS)))

        def busy(outcome) -> bool:
            return isinstance(outcome, Exception) and "queue is full" in str(outcome).lower()

        refused = [c for c, outcome in enumerate(outcomes) if busy(outcome)]
        served = [c for c, outcome in enumerate(outcomes) if not isinstance(outcome, Exception)]
        failed = [repr(o)[:300] for o in outcomes if isinstance(o, Exception) and not busy(o)]
        assert not failed, f"requests failed for another reason than a full queue: {failed}"
        assert refused, "nothing was refused: the queue of one took every request"
        assert served, "nobody was served"
        for c in served:
            check_own_result(outcomes[c], plans[c])
        for c in refused:
            assert "try again" in str(outcomes[c]).lower()
        # The mechanism: each image is its own size, so each request that ran encoded its image once
        # (CLIP and SAM); a refused request never reached a model.
        calls = server.model_calls()[calls_before:]
        clip_encodes = [line for line in calls if "CLIP image encoder" in line]
        sam_encodes = [line for line in calls if "SAM image encoder" in line]
        assert len(clip_encodes) == len(served) and len(sam_encodes) == len(served), (
            len(clip_encodes), len(sam_encodes), len(served), len(refused))
        # and once the burst is over the app serves again, a refused client included
        check_own_result(send(clients[refused[0]], plans[refused[0]]).result(timeout=300), plans[refused[0]])
