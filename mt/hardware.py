"""Where and in what precision to run: the device, and autocast for bf16/fp16."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from mt.files import InputError


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device=cuda but no CUDA device is visible; use device=cpu")
    return torch.device(name)


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def select_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if _cpu_has_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise InputError("precision=fp16 needs CUDA; on CPU use bf16 or fp32")
    if name not in ("fp32", "bf16", "fp16"):
        raise InputError(f"precision={name}: choose auto, fp32, bf16 or fp16")
    return name


def autocast_for(precision: str, device: torch.device):
    """A context-manager factory: autocast in the chosen precision, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)
