"""Numeric precision of the image encoders: the choices, and where bfloat16 really is faster.

Text features are always float32 (each label is encoded once and cached), so a
precision only ever applies to the CLIP and SAM image encoders.
"""

from __future__ import annotations

import contextlib

import torch

from .errors import InputError

PRECISIONS = ("fp32", "bf16")


def bf16_supported(device: torch.device | str) -> bool:
    """Whether `device` runs bfloat16 natively, so bf16 is a speed-up rather than a slow emulation.

    On CPUs that means AVX512-BF16 or AMX-BF16 (x86) or the BF16 extension
    (ARM); oneDNN would emulate bf16 elsewhere, slower than fp32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return any(bool(capabilities.get(name)) for name in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))
    return False


def check_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """`precision` when it is a known choice that `device` runs natively; else an `InputError`."""
    if precision not in PRECISIONS:
        raise InputError(f"Precision must be one of {', '.join(PRECISIONS)}; got {str(precision)[:40]!r} (unknown precision).")
    if precision == "bf16" and not bf16_supported(device):
        what = "GPU" if torch.device(device).type == "cuda" else "CPU"
        raise InputError(f"bf16 is not supported on this {what}; use fp32.")
    return precision


def autocast(precision: str, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager:
    """fp32: nothing; bf16: autocast on `device`, refused with a clear message where it would be emulated."""
    check_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
