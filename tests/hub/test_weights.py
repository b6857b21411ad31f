"""Checkpoint loading through the real loaders: registry download path, checksums, bad files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import TINY_CLIP
from hub_cache import offline_env, place_in_hub_cache
from surgery.clip.architecture import build_clip
from surgery.errors import CheckpointError
from surgery.hub.registry import CLIP_CHECKPOINTS, SAM_CHECKPOINTS
from surgery.hub.download import file_sha256
from surgery.hub.state_dict import load_state_dict

ROOT = Path(__file__).resolve().parents[2]


def run_download(env: dict, entry: str) -> subprocess.CompletedProcess:
    code = (
        "import sys\n"
        "from surgery.hub.registry import CLIP_CHECKPOINTS\n"
        "from surgery.hub.download import download_checkpoint\n"
        "from surgery.errors import UserError\n"
        "try:\n"
        f"    print(download_checkpoint(CLIP_CHECKPOINTS[{entry!r}]))\n"
        "except UserError as exc:\n"
        "    print('USERERROR', type(exc).__name__, exc); sys.exit(3)\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_registry_pins_default_checksum_and_sam_prefixes():
    assert CLIP_CHECKPOINTS["ViT-B/16"].sha256 == "4b8699299b1e8997753c64b052ba32031449d5d853f55a039148560ee02b820f"
    for name, entry in SAM_CHECKPOINTS.items():
        assert entry.sha256_prefix and entry.sha256_prefix in entry.filename


def test_cached_file_with_wrong_checksum_is_refused(tmp_path):
    cache = tmp_path / "hub"
    entry = CLIP_CHECKPOINTS["ViT-B/16"]
    place_in_hub_cache(cache, entry.repo_id, entry.filename, TINY_CLIP)
    result = run_download(offline_env(cache), "ViT-B/16")
    assert result.returncode == 3, result.stderr
    assert "USERERROR CheckpointError" in result.stdout and "corrupt" in result.stdout
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
