from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
PARITY = DATA / "parity"
TINY_CLIP = PARITY / "weights.safetensors"


@pytest.fixture(scope="session", autouse=True)
def isolated_caches(tmp_path_factory):
    """Keep the app's and CLI's disk caches (label embeddings) inside this test run."""
    import os

    os.environ["CLIP_SURGERY_CACHE"] = str(tmp_path_factory.mktemp("clip-surgery-cache"))
    yield


@pytest.fixture(scope="session")
def parity_cases() -> list[dict]:
    return json.loads((PARITY / "reference.json").read_text())


@pytest.fixture(scope="session")
def parity_maps() -> dict[str, np.ndarray]:
    with np.load(PARITY / "reference.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="session")
def explainer():
    from surgery.loading import load_clip

    return load_clip(checkpoint=TINY_CLIP, display_name="tiny", device="cpu")  # GPU runs: tests/test_gpu.py


@pytest.fixture(scope="session")
def rocket() -> np.ndarray:
    from surgery.images import load_image

    return load_image(PARITY / "rocket.png")


def point_multiset(points) -> list[tuple[int, int, int]]:
    return sorted(tuple(int(v) for v in p) for p in points)


def points_match(actual, expected, tolerance: int = 1) -> bool:
    """Equal as multisets, each coordinate allowed to differ by `tolerance` pixels."""
    actual, expected = point_multiset(actual), point_multiset(expected)
    if len(actual) != len(expected):
        return False
    remaining = list(expected)
    for x, y, label in actual:
        match = next((e for e in remaining if e[2] == label and abs(e[0] - x) <= tolerance
                      and abs(e[1] - y) <= tolerance), None)
        if match is None:
            return False
        remaining.remove(match)
    return True


class ModelCallLog(logging.Handler):
    """The engine's one line per real model call (logger "surgery.calls"), collected."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def text_encodes(self) -> int:
        return self.count("CLIP text encoder")

    def clear(self) -> None:
        self.lines.clear()


@pytest.fixture()
def calls():
    """The model calls made while the test runs."""
    handler = ModelCallLog()
    logger = logging.getLogger("surgery.calls")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app as a real server on the tiny checkpoints, one per test module that asks for it."""
    from app_server import running_app, tiny_args

    with running_app(tmp_path_factory.mktemp("app"), *tiny_args()) as server:
        yield server


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, driven by Playwright (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is required (.ci/run installs it: apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        yield browser
        browser.close()
