"""On a CUDA GPU: the same maps and masks as on the CPU, through the same loaders.

Marked `gpu`: they run wherever CUDA is present and are skipped, with the reason
shown, elsewhere (they are not counted as coverage on a CPU-only machine).
Models are the tiny random checkpoints in the real file formats, loaded twice,
once per device, by `surgery.loading`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from checkpoints import SMALL_ARCH, write_random_sam_checkpoint
from surgery.method.table import METHOD_TABLE
from surgery.loading import load_clip, load_segmenter
from surgery.method.labels import parse_labels
from surgery.method.options import MapOptions

from conftest import TINY_CLIP

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")]

LABELS = parse_labels("rocket, sky, grass, rocket+sky").labels
ALL_METHODS = tuple(METHOD_TABLE)


@pytest.fixture(scope="module")
def explainers():
    return (load_clip(checkpoint=TINY_CLIP, display_name="tiny", device="cpu"),
            load_clip(checkpoint=TINY_CLIP, display_name="tiny", device="cuda"))


@pytest.mark.parametrize("resolution", [224, 448])
def test_fp32_maps_on_cuda_are_within_1e4_of_the_cpu_maps(explainers, rocket, resolution):
    cpu, gpu = explainers
    assert next(gpu.model.parameters()).is_cuda and not torch.backends.cuda.matmul.allow_tf32
    options = MapOptions(resolution=resolution, redundancy="vocab", precision="fp32", methods=ALL_METHODS)
    on_cpu, on_gpu = cpu.compute_maps(rocket, LABELS, options), gpu.compute_maps(rocket, LABELS, options)
    worst = 0.0
    for a, b in zip(on_cpu.labels, on_gpu.labels):
        for method in ALL_METHODS:
            assert b.maps[method].dtype == np.float32  # numpy on the CPU, whatever ran on the GPU
            worst = max(worst, float(np.abs(a.maps[method] - b.maps[method]).max()))
        assert abs(a.presence - b.presence) < 1e-4
    print(f"fp32 CUDA vs CPU at {resolution} px: max |diff| {worst:.2e}")
    assert worst < 1e-4


def test_bf16_maps_are_close_to_fp32(explainers, rocket):
    _, gpu = explainers
    fp32 = gpu.compute_maps(rocket, LABELS, MapOptions(resolution=448, precision="fp32", methods=ALL_METHODS))
    bf16 = gpu.compute_maps(rocket, LABELS, MapOptions(resolution=448, precision="bf16", methods=ALL_METHODS))
    differences = []
    for a, b in zip(fp32.labels, bf16.labels):
        for method in ALL_METHODS:
            x, y = a.maps[method], b.maps[method]
            assert not np.array_equal(x, y)  # really ran in bf16
            scale = float(np.abs(x).max()) or 1.0
            differences.append(float(np.abs(x - y).mean()) / scale)
            assert np.corrcoef(x.ravel(), y.ravel())[0, 1] > 0.95
    print(f"bf16 vs fp32 on CUDA: mean |diff| / max |map| = {np.mean(differences):.4f} "
          f"(worst map {max(differences):.4f})")
    assert np.mean(differences) < 0.05


def test_sam_masks_are_the_same_on_cpu_and_gpu(tmp_path, rocket):
    path = write_random_sam_checkpoint(tmp_path / "sam.safetensors", SMALL_ARCH)
    cpu = load_segmenter(None, path, device="cpu")
    gpu = load_segmenter(None, path, device="cuda", precision="fp32")
    points = np.array([[40, 60, 1], [150, 90, 1], [20, 200, 0]])
    a = cpu.predict(cpu.embed(rocket), points)
    b = gpu.predict(gpu.embed(rocket), points)
    assert gpu.embed(rocket).features.is_cuda
    for mask_cpu, mask_gpu in zip(a.candidates, b.candidates):
        differing = int((mask_cpu != mask_gpu).sum())
        assert differing <= max(20, mask_cpu.size // 1000), differing  # a few boundary pixels at most
    assert np.allclose(a.scores, b.scores, atol=1e-3)


def test_sam_fast_attention_gpu_branch_runs_under_bf16(tmp_path, rocket):
    path = write_random_sam_checkpoint(tmp_path / "sam.safetensors", SMALL_ARCH)
    fp32 = load_segmenter(None, path, device="cuda", precision="fp32")
    bf16 = load_segmenter(None, path, device="cuda", precision="bf16")
    a, b = fp32.embed(rocket).features, bf16.embed(rocket).features
    assert b.dtype == torch.float32 and torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.95
