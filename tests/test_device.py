"""The one `device` setting: what it resolves to, the message where CUDA is missing, and what follows
from the device actually used (default SAM, default precision), in the engine and the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from surgery.device import resolve_device
from surgery.errors import InputError
from surgery.loading import default_sam_name, load_clip
from surgery.precision import default_precision, resolve_precision

ROOT = Path(__file__).resolve().parent.parent
TINY_CLIP = ROOT / "tests" / "data" / "parity" / "weights.safetensors"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the refusal cannot happen")


def _pretend_cuda(monkeypatch, count: int = 1, capability: tuple[int, int] = (9, 0)) -> None:
    """A machine with `count` CUDA GPUs, as torch reports it (placement itself is never faked)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


def test_settings_resolve_to_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    for bad in ("gpu", "cuda:x", "cuda:", "mps", "cuda:1:2", ""):
        with pytest.raises(InputError, match="Device must be auto, cpu, cuda or cuda:N"):
            resolve_device(bad)


@NO_CUDA
@pytest.mark.parametrize("setting", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_where_there_is_none_is_one_clear_line(setting):
    with pytest.raises(InputError) as caught:
        resolve_device(setting)
    message = str(caught.value)
    assert "no usable CUDA GPU" in message and "cpu or auto" in message and "\n" not in message
    with pytest.raises(InputError, match="no usable CUDA GPU"):  # before any weights are read
        load_clip(checkpoint=TINY_CLIP, device=setting)


def test_a_gpu_index_past_the_last_one_is_refused(monkeypatch):
    _pretend_cuda(monkeypatch, count=2)
    monkeypatch.setattr("surgery.device.exact_float32_on_cuda", lambda: None)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(InputError, match=r"has 2 CUDA GPU\(s\) \(cuda:0..cuda:1\)"):
        resolve_device("cuda:2")


def test_the_default_sam_and_precision_follow_the_device_used_not_the_hardware(monkeypatch):
    _pretend_cuda(monkeypatch)
    assert default_sam_name("cpu") == "sam2.1_hiera_tiny" and default_precision("cpu") == "fp32"
    assert default_sam_name("cuda") == "sam2.1_hiera_large" and default_precision(torch.device("cuda")) == "bf16"
    _pretend_cuda(monkeypatch, capability=(7, 5))  # a T4: no native bf16, so fp32 stays the default
    assert default_precision(torch.device("cuda")) == "fp32"
    with pytest.raises(InputError, match="bf16 is not supported on this GPU"):
        resolve_precision("bf16", "cuda")


def test_fp16_is_refused_on_the_cpu():
    with pytest.raises(InputError, match="fp16 runs on a GPU only"):
        resolve_precision("fp16", "cpu")


def test_loaded_models_sit_on_the_device_asked_for():
    explainer = load_clip(checkpoint=TINY_CLIP, device="cpu")
    assert explainer.device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in explainer.model.parameters())


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "surgery", "explain", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@NO_CUDA
def test_cli_device_cuda_without_cuda_exits_2_with_one_line(tmp_path):
    run = _cli(str(ROOT / "assets" / "rocket.jpg"), "--labels", "rocket", "--clip-checkpoint", str(TINY_CLIP),
               "--device", "cuda", "--out", str(tmp_path / "out"))
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2, run.stderr
    assert len(lines) == 1 and lines[0].startswith("error: Device cuda was asked for"), run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "out").exists()


def test_cli_explicit_cpu_device_gives_the_same_result_as_auto_here(tmp_path):
    common = [str(ROOT / "assets" / "rocket.jpg"), "--labels", "rocket, sky", "--clip-checkpoint", str(TINY_CLIP),
              "--no-sam", "--resolution", "224"]
    auto = _cli(*common, "--out", str(tmp_path / "auto"))
    cpu = _cli(*common, "--device", "cpu", "--out", str(tmp_path / "cpu"))
    assert auto.returncode == cpu.returncode == 0, auto.stderr + cpu.stderr
    if not torch.cuda.is_available():  # auto is the CPU here: the two runs are the same computation
        assert (tmp_path / "auto/rocket/result.json").read_text() == (tmp_path / "cpu/rocket/result.json").read_text()
    bad = _cli(*common, "--device", "tpu", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "Device must be auto, cpu, cuda or cuda:N" in bad.stderr
