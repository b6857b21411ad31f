"""Checkpoint loading through the real loaders: registry download path, checksums, bad files."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from conftest import TINY_CLIP
from hub_cache import COMMIT, offline_env, place_in_hub_cache
from safetensors.torch import save_file

from surgery.clip.architecture import build_clip
from surgery.errors import CheckpointError
from surgery.hub.download import file_sha256
from surgery.hub.registry import CLIP_CHECKPOINTS, SAM_CHECKPOINTS, SAM_REPO
from surgery.hub.state_dict import load_state_dict

ROOT = Path(__file__).resolve().parents[2]
TINY_SAM = ROOT / "tests" / "data" / "sam_tiny.safetensors"


def run_entry(env: dict, entry: str) -> subprocess.CompletedProcess:
    """`download_checkpoint(<entry>)` in a fresh interpreter (huggingface_hub reads its environment
    at import); `entry` is a Python expression over the registry tables and `HubCheckpoint`."""
    code = (
        "import sys\n"
        "from surgery.hub.registry import CLIP_CHECKPOINTS, SAM_CHECKPOINTS, HubCheckpoint\n"
        "from surgery.hub.download import download_checkpoint\n"
        "from surgery.errors import UserError\n"
        "try:\n"
        f"    print(download_checkpoint({entry}))\n"
        "except UserError as exc:\n"
        "    print('USERERROR', type(exc).__name__, exc); sys.exit(3)\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def run_download(env: dict, entry: str) -> subprocess.CompletedProcess:
    return run_entry(env, f"CLIP_CHECKPOINTS[{entry!r}]")


# --- a local stand-in for the Hugging Face Hub's file endpoint ----------------------------------

class FakeHub:
    """Answers huggingface_hub's `HEAD`/`GET {endpoint}/{repo_id}/resolve/{revision}/{filename}` the
    way the Hub does for an LFS file: X-Repo-Commit, an ETag (X-Linked-Etag: the file's SHA-256),
    Content-Length, then the bytes. `files[(repo_id, filename)]` is what is served."""

    PATH = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)$")

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.failing_status: int | None = None  # answer every request with this error (a Hub that is down)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _answer(self, body: bool) -> None:
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                hub.requests.append((self.command, path))
                if hub.failing_status is not None:
                    self.send_response(hub.failing_status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                match = FakeHub.PATH.match(path)
                content = hub.files.get((match["repo"], match["filename"])) if match else None
                if content is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                digest = hashlib.sha256(content).hexdigest()
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{digest}"')
                self.send_header("X-Linked-Etag", f'"{digest}"')
                self.send_header("Content-Length", str(len(content)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if body:
                    self.wfile.write(content)

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def gets(self) -> int:
        return sum(method == "GET" for method, _ in self.requests)


@contextmanager
def fake_hub():
    hub = FakeHub()
    thread = threading.Thread(target=hub.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.server.shutdown()
        hub.server.server_close()
        thread.join()


def online_env(tmp_path: Path, hub: FakeHub) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HOME=str(tmp_path / "hf-home"),
               CLIP_SURGERY_CACHE=str(tmp_path / "cache"), HF_HUB_DISABLE_TELEMETRY="1",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return env


def pinned_entry(repo_id: str, filename: str, sha256: str) -> str:
    return f"HubCheckpoint(name='tiny', repo_id={repo_id!r}, filename={filename!r}, sha256={sha256!r})"


def place_as_blob(cache: Path, repo_id: str, filename: str, etag: str, content: bytes) -> Path:
    """A file in the hub cache as huggingface_hub itself leaves it: blobs/<etag>, linked from the snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    blob = repo / "blobs" / etag
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(content)
    pointer = repo / "snapshots" / COMMIT / filename
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    return pointer


def test_fake_hub_download_of_a_good_file_is_verified_and_used(tmp_path):
    good = TINY_CLIP.read_bytes()
    digest = hashlib.sha256(good).hexdigest()
    with fake_hub() as hub:
        hub.files[("test/tiny-clip", "open_clip_model.safetensors")] = good
        result = run_entry(online_env(tmp_path, hub), pinned_entry("test/tiny-clip", "open_clip_model.safetensors", digest))
    assert result.returncode == 0, result.stdout + result.stderr
    assert Path(result.stdout.strip()).read_bytes() == good
    assert hub.gets() == 1 and ("HEAD", "/test/tiny-clip/resolve/main/open_clip_model.safetensors") in hub.requests


def test_corrupt_cached_file_is_downloaded_again_and_then_used(tmp_path):
    """A broken earlier download in the cache: refused by its checksum, fetched again, the fresh copy used."""
    good = TINY_CLIP.read_bytes()
    digest = hashlib.sha256(good).hexdigest()
    repo, filename = "test/tiny-clip", "open_clip_model.safetensors"
    pointer = place_as_blob(tmp_path / "hub", repo, filename, digest, good[: len(good) // 2])
    with fake_hub() as hub:
        hub.files[(repo, filename)] = good
        result = run_entry(online_env(tmp_path, hub), pinned_entry(repo, filename, digest))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "failed its checksum" in result.stderr and "fetching it again" in result.stderr
    assert hub.gets() == 1  # the cached file was tried first, then fetched once
    path = Path(result.stdout.strip())
    assert path == pointer and path.read_bytes() == good
    assert file_sha256(pointer) == digest


def test_file_still_corrupt_after_a_fresh_download_is_refused(tmp_path):
    good = TINY_CLIP.read_bytes()
    digest = hashlib.sha256(good).hexdigest()
    repo, filename = "test/tiny-clip", "open_clip_model.safetensors"
    with fake_hub() as hub:
        hub.files[(repo, filename)] = good[:-100]  # what the hub serves does not match the pin
        result = run_entry(online_env(tmp_path, hub), pinned_entry(repo, filename, digest))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "USERERROR CheckpointError" in result.stdout
    assert "corrupt" in result.stdout and "even after a fresh download" in result.stdout
    assert f"{repo}/{filename}" in result.stdout and "Traceback" not in result.stdout + result.stderr
    assert hub.gets() == 2  # downloaded, refused, downloaded once more, refused


def test_sam_file_whose_digest_does_not_start_with_the_published_prefix_is_refused(tmp_path):
    entry = SAM_CHECKPOINTS["vit_b"]
    assert not file_sha256(TINY_SAM).startswith(entry.sha256_prefix)
    place_in_hub_cache(tmp_path / "hub", entry.repo_id, entry.filename, TINY_SAM)
    result = run_entry(offline_env(tmp_path / "hub"), "SAM_CHECKPOINTS['vit_b']")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "USERERROR CheckpointError" in result.stdout and "corrupt" in result.stdout
    assert f"does not start with the published {entry.sha256_prefix}" in result.stdout


def test_sam_file_whose_digest_starts_with_the_prefix_is_accepted(tmp_path):
    entry = SAM_CHECKPOINTS["vit_b"]
    placed = place_in_hub_cache(tmp_path / "hub", entry.repo_id, entry.filename, TINY_SAM)
    prefix = file_sha256(TINY_SAM)[:6]
    expression = (f"HubCheckpoint(name='vit_b', repo_id={SAM_REPO!r}, filename={entry.filename!r}, "
                  f"sha256_prefix={prefix!r})")
    result = run_entry(offline_env(tmp_path / "hub"), expression)
    assert result.returncode == 0, result.stdout + result.stderr
    assert Path(result.stdout.strip()).resolve() == placed.resolve()


def test_unpinned_entry_records_its_first_digest_and_refuses_a_different_file_later(tmp_path, monkeypatch):
    from surgery.hub.download import digest_record

    entry = CLIP_CHECKPOINTS["ViT-L/14-336"]
    assert entry.sha256 is None and entry.sha256_prefix is None
    cache, hub = tmp_path / "cache", tmp_path / "hub"
    env = dict(offline_env(hub), CLIP_SURGERY_CACHE=str(cache))
    placed = place_in_hub_cache(hub, entry.repo_id, entry.filename, TINY_CLIP)
    first = run_download(env, "ViT-L/14-336")
    assert first.returncode == 0, first.stdout + first.stderr
    monkeypatch.setenv("CLIP_SURGERY_CACHE", str(cache))
    record = digest_record(entry)
    assert record.is_relative_to(cache / "digests")
    assert record.read_text().strip() == file_sha256(TINY_CLIP)
    assert run_download(env, "ViT-L/14-336").returncode == 0  # the same file again: fine

    other = tmp_path / "other.safetensors"
    data = bytearray(TINY_CLIP.read_bytes())
    data[-1] ^= 0xFF
    other.write_bytes(bytes(data))
    placed.unlink()
    place_in_hub_cache(hub, entry.repo_id, entry.filename, other)
    later = run_download(env, "ViT-L/14-336")
    assert later.returncode == 3, later.stdout + later.stderr
    assert "USERERROR CheckpointError" in later.stdout and "corrupt" in later.stdout
    assert "first download's" in later.stdout
    assert record.read_text().strip() == file_sha256(TINY_CLIP)  # not overwritten by the bad copy


def test_app_says_a_truncated_checkpoint_cannot_be_read(tmp_path):
    from app_server import running_app
    from gradio_client import Client, handle_file

    data = TINY_CLIP.read_bytes()
    broken = tmp_path / "cut-weights.safetensors"
    broken.write_bytes(data[: len(data) // 2])
    with running_app(tmp_path, "--clip-checkpoint", str(broken), "--no-sam", wait_ready=False) as server:
        deadline = time.monotonic() + 120
        while "default models" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        status = server.log().split("not all available:", 1)[1]
        assert "not available. Could not read checkpoint cut-weights.safetensors" in status
        assert "truncated or corrupt" in status
        client = Client(server.url, verbose=False)
        with pytest.raises(Exception) as error:
            client.predict(handle_file(str(ROOT / "assets" / "chelsea.jpg")), "cat", api_name="/explain")
    message = str(error.value)
    assert "Could not read checkpoint cut-weights.safetensors" in message and "truncated or corrupt" in message
    assert "Traceback" not in message and "SafetensorError" not in message


@pytest.mark.parametrize("name, digest", [
    ("ViT-B/16", "4b8699299b1e"),
    ("ViT-B/32", "e6d1bd7789aa"),  # published digests pinned (issue: only ViT-B/16 was)
    ("ViT-L/14", "9ce2e8a8ebff"),
    ("RN50", "da0baa37fb22"),
])
def test_cached_file_with_wrong_checksum_is_refused(tmp_path, name, digest):
    cache = tmp_path / "hub"
    entry = CLIP_CHECKPOINTS[name]
    place_in_hub_cache(cache, entry.repo_id, entry.filename, TINY_CLIP)
    result = run_download(offline_env(cache), name)
    assert result.returncode == 3, result.stderr
    assert "USERERROR CheckpointError" in result.stdout and "corrupt" in result.stdout
    assert f"differs from the pinned {digest}" in result.stdout
    assert "Traceback" not in result.stdout


def test_cached_file_without_pinned_checksum_is_found_offline(tmp_path):
    cache = tmp_path / "hub"
    entry = CLIP_CHECKPOINTS["ViT-L/14-336"]
    assert entry.sha256 is None and entry.sha256_prefix is None  # no published digest
    placed = place_in_hub_cache(cache, entry.repo_id, entry.filename, TINY_CLIP)
    result = run_download(offline_env(cache), "ViT-L/14-336")
    assert result.returncode == 0, result.stdout + result.stderr
    assert Path(result.stdout.strip()).resolve() == placed.resolve()


def test_missing_weights_offline_is_a_clear_error(tmp_path):
    result = run_download(offline_env(tmp_path / "empty-hub"), "ViT-B/16")
    assert result.returncode == 3
    assert "WeightsUnavailable" in result.stdout and "HF_HUB_OFFLINE" in result.stdout
    assert "--clip-checkpoint" in result.stdout


def test_truncated_checkpoint_is_refused(tmp_path):
    data = TINY_CLIP.read_bytes()
    for cut in (len(data) // 2, 100, 0):
        broken = tmp_path / f"cut{cut}.safetensors"
        broken.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=broken.name):
            load_state_dict(broken)


def test_pt_state_dict_fp16_loads_as_float32_and_matches_safetensors(tmp_path):
    state = load_state_dict(TINY_CLIP)
    pt_path = tmp_path / "tiny.pt"
    torch.save({k: v.half() for k, v in state.items()}, pt_path)
    loaded = load_state_dict(pt_path)
    assert all(v.dtype == torch.float32 for v in loaded.values() if v.is_floating_point())
    model = build_clip(loaded)
    torch.testing.assert_close(model.visual.proj, state["visual.proj"])  # stored as fp16 originally


def test_float32_checkpoint_is_not_rounded_to_fp16(tmp_path):
    state = load_state_dict(TINY_CLIP)
    state["visual.proj"] = state["visual.proj"] + 1e-6  # not representable in fp16
    path = tmp_path / "fp32.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    model = build_clip(load_state_dict(path))
    torch.testing.assert_close(model.visual.proj, state["visual.proj"], atol=0, rtol=0)


def test_meta_built_clip_equals_open_clips_own_builder():
    """build_clip builds on the meta device and adopts the checkpoint's tensors; open_clip's own
    builder (ordinary construction, then a copy into its parameters) must give the same network."""
    from open_clip.model import build_model_from_openai_state_dict
    from open_clip.tokenizer import tokenize

    # open_clip's builder rounds weights to fp16; fp16-representable weights make that exact.
    state = {k: (v.half().float() if v.is_floating_point() else v) for k, v in load_state_dict(TINY_CLIP).items()}
    ours = build_clip(dict(state))
    reference = build_model_from_openai_state_dict(dict(state), cast_dtype=None).float().eval()
    reference.requires_grad_(False)  # as build_clip: MultiheadAttention's fused path needs it, and rounds differently
    assert torch.equal(ours.attn_mask, reference.attn_mask)
    reference_state = reference.state_dict()
    assert ours.state_dict().keys() == reference_state.keys()
    assert all(torch.equal(tensor, reference_state[name]) for name, tensor in ours.state_dict().items())
    assert not any(t.is_meta for t in [*ours.parameters(), *ours.buffers()])
    image_size = ours.visual.image_size[0] if isinstance(ours.visual.image_size, tuple) else ours.visual.image_size
    image = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    text = tokenize(["a photo of a rocket", "smoke"])
    with torch.inference_mode():
        assert torch.equal(ours.encode_image(image), reference.encode_image(image))
        assert torch.equal(ours.encode_text(text), reference.encode_text(text))


def test_pickled_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"weight": Payload()}, path)
    with pytest.raises(CheckpointError):
        load_state_dict(path)


def test_not_a_clip_checkpoint(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"foo": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not an OpenAI-layout CLIP"):
        build_clip(load_state_dict(path))


def test_file_sha256_known_value(tmp_path):
    path = tmp_path / "abc.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_a_hub_that_is_down_is_reported_after_one_request(tmp_path):
    """No minute of retries at start-up: one request without retries, then a clear message."""
    with fake_hub() as hub:
        hub.failing_status = 503
        done = run_entry(online_env(tmp_path, hub), pinned_entry("org/tiny", "weights.safetensors", "0" * 64))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "USERERROR WeightsUnavailable" in done.stdout and "could not be reached" in done.stdout
    assert len(hub.requests) == 1, hub.requests


def test_a_cached_verified_file_needs_no_request(tmp_path):
    content = TINY_CLIP.read_bytes()
    with fake_hub() as hub:
        hub.failing_status = 503  # any request would fail
        env = online_env(tmp_path, hub)
        place_in_hub_cache(Path(env["HF_HUB_CACHE"]), "org/tiny", "weights.safetensors", TINY_CLIP)
        done = run_entry(env, pinned_entry("org/tiny", "weights.safetensors", hashlib.sha256(content).hexdigest()))
    assert done.returncode == 0, done.stdout + done.stderr
    assert hub.requests == []
