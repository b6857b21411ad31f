"""Start `python app.py` as a real server on a free loopback port, for browser and API tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
TINY_CLIP = DATA / "parity" / "weights.safetensors"
TINY_SAM = DATA / "sam_tiny.safetensors"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppServer:
    def __init__(self, url: str, process: subprocess.Popen, log_path: Path) -> None:
        self.url = url
        self.process = process
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def model_calls(self) -> list[str]:
        return [line for line in self.log().splitlines() if "model call:" in line]


@contextmanager
def running_app(tmp_dir: Path, *args: str, env: dict | None = None, wait_ready: bool = True):
    port = free_port()
    log_path = tmp_dir / f"app-{port}.log"
    environment = dict(os.environ)
    environment.update(
        GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), HF_HUB_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1", HF_HUB_CACHE=str(tmp_dir / "hub"),
    )
    environment.update(env or {})
    handle = open(log_path, "w")
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), *args], cwd=ROOT, env=environment,
                               stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    server = AppServer(url, process, log_path)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"app exited early:\n{server.log()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"app did not start:\n{server.log()}")
            time.sleep(0.5)
        if wait_ready:
            while "loaded and ready" not in server.log():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"models did not load:\n{server.log()}")
                time.sleep(0.5)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        handle.close()


def tiny_args(*extra: str) -> list[str]:
    # The tiny SAM is a SAM (ViT) layout, named vit_b as the app's tests choose it (the default is SAM 2.1).
    return ["--clip-checkpoint", str(TINY_CLIP), "--sam-model", "vit_b", "--sam-checkpoint", str(TINY_SAM),
            "--device", "cpu", *extra]
