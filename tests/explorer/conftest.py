"""The app as a real server on the tiny checkpoints: one for each test module that asks for `app`."""

from __future__ import annotations

import pytest

from app_server import running_app, tiny_args


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("app"), *tiny_args()) as server:
        yield server
