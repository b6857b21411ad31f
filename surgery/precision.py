"""Numeric precision of the image encoders: the choices, the default per device, and where each runs.

Text features are always float32 (each label is encoded once and cached), so a
precision only ever applies to the CLIP and SAM image encoders. fp32 is exact
everywhere (TF32 is off on CUDA, see `surgery.device`); bf16 is the GPU
default; fp16 runs on GPUs only.
"""

from __future__ import annotations

import contextlib

import torch

from .device import runs_on_gpu
from .errors import InputError
from .method.options import PRECISIONS

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def default_precision(device: torch.device | str) -> str:
    """bf16 for the image encoders on a GPU that runs it natively, else fp32."""
    return "bf16" if runs_on_gpu(device) and bf16_supported(device) else "fp32"


def bf16_supported(device: torch.device | str) -> bool:
    """Whether `device` runs bfloat16 natively, so bf16 is a speed-up rather than a slow emulation.

    On CPUs that means AVX512-BF16 or AMX-BF16 (x86) or the BF16 extension
    (ARM); oneDNN would emulate bf16 elsewhere, slower than fp32.
    """
    device = torch.device(device)
    if device.type == "cuda":  # native bf16 from Ampere (compute capability 8) on
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return any(bool(capabilities.get(name)) for name in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))
    return False


def _unusable(precision: str, device: torch.device | str) -> str | None:
    """Why `device` cannot run `precision` natively, or None when it can."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        return f"Precision must be one of {', '.join(PRECISIONS)}; got {str(precision)[:40]!r} (unknown precision)."
    if precision == "bf16" and not bf16_supported(device):
        return f"bf16 is not supported on this {'GPU' if runs_on_gpu(device) else 'CPU'}; use fp32."
    if precision == "fp16" and not runs_on_gpu(device):
        return "fp16 runs on a GPU only; use fp32 (or bf16 where the CPU supports it)."
    return None


def resolve_precision(precision: object, device: torch.device | str = "cpu") -> str:
    """The precision a request runs in on `device`: `default_precision(device)` when none is named
    (None or ""), else `precision` when it is a known choice that `device` runs natively; else an
    `InputError` saying what to use. The one place a precision meets a device (`surgery.request`)."""
    if precision is None or precision == "":
        return default_precision(device)
    problem = _unusable(precision, device)
    if problem:
        raise InputError(problem)
    return str(precision)


def precisions_for(device: torch.device | str) -> list[str]:
    """The precisions `device` runs natively (what `resolve_precision` accepts there), fp32 first."""
    return [precision for precision in PRECISIONS if _unusable(precision, device) is None]


def autocast(precision: str, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager:
    """fp32: nothing; bf16/fp16: autocast on `device` (a precision `resolve_precision` accepted there)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision])
