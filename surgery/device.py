"""Where models run: the one `device` setting (`auto`, `cpu`, `cuda`, `cuda:N`) made into a torch device.

`auto` means CUDA when this process can use it, else the CPU. Asking for CUDA
where there is none is an `InputError` with one line to act on, never a
traceback. Resolving a CUDA device also makes float32 exact there (no TF32), so
fp32 maps on a GPU agree with the CPU's; bf16/fp16 are separate, explicit
precisions (see `surgery.precision`).
"""

from __future__ import annotations

import re

import torch

from .errors import InputError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_CUDA = re.compile(r"cuda(?::(\d{1,3}))?")


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_device(setting: str | torch.device | None = "auto") -> torch.device:
    """The torch device a setting names; `InputError` for an unknown setting or a GPU this machine lacks."""
    if isinstance(setting, torch.device):
        setting = str(setting)
    text = "auto" if setting is None else str(setting).strip().lower()
    if text == "auto":
        text = "cuda" if cuda_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    match = _CUDA.fullmatch(text)
    if match is None:
        raise InputError(f"Device must be {DEVICE_CHOICES}; got {str(setting)[:40]!r}.")
    if not cuda_available():
        raise InputError(f"Device {text} was asked for, but this machine has no usable CUDA GPU "
                         "(torch.cuda.is_available() is False); use device cpu or auto "
                         "(--device, or DEVICE for the app).")
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise InputError(f"Device {text} was asked for, but this machine has {count} CUDA GPU(s) "
                         f"(cuda:0..cuda:{count - 1}).")
    exact_float32_on_cuda()
    return torch.device("cuda", index)


def exact_float32_on_cuda() -> None:
    """float32 matmuls and convolutions in full float32 (TF32 off), so fp32 parity holds on a GPU.

    Process-wide on purpose: TF32 would change fp32 results by ~1e-3, and the
    fast precisions (bf16, fp16) go through autocast rather than through TF32.
    """
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def runs_on_gpu(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"
