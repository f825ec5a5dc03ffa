"""Where and in what precision to run (the device, autocast for bf16/fp16), and the process's memory."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import resource
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


def _glibc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _glibc()


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the operating system (glibc's malloc_trim; elsewhere nothing).

    Batches of ever-changing shapes fragment glibc's heap, and it keeps what is freed: a training run's resident
    memory grew by gigabytes over thousands of steps (README, memory). The trainer calls this every log_every
    steps (about 0.2 s): it returns the free pages, though it cannot stop the heap's growth.
    """
    if allocator() == "glibc":
        _LIBC.malloc_trim(0)


@functools.cache
def allocator() -> str:
    """Who serves this process's malloc: "tcmalloc" or "jemalloc" when preloaded, else "glibc" (or "other")."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    for name in ("tcmalloc", "jemalloc"):
        if f"lib{name}" in maps:
            return name
    return "glibc" if _LIBC is not None and hasattr(_LIBC, "malloc_trim") else "other"


def resident_memory_mb() -> float:
    """This process's resident memory now (Linux), else its peak so far."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_memory_mb()


def peak_memory_mb() -> float:
    """The most resident memory this process has had so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
