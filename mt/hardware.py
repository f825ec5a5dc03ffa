"""Where and in what precision to run (the device, autocast for bf16/fp16), and the process's memory use."""

from __future__ import annotations

import contextlib
import os
import resource
from enum import Enum
from pathlib import Path

import torch

from mt.files import InputError


class Device(str, Enum):
    auto = "auto"  # cuda where a GPU is visible, else cpu
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, Enum):
    auto = "auto"  # bf16 where the hardware has it, else fp16 on CUDA or fp32 on CPU
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device=cuda but no CUDA device is visible; use device=cpu")
    return torch.device(str(Device(name).value))


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes in bf16 natively (its /proc/cpuinfo flags; elsewhere, no)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def select_precision(name: str, device: torch.device) -> str:
    """The precision `name` stands for on `device`: "fp32", "bf16" or "fp16"."""
    name = Precision(name).value
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise InputError("precision=fp16 needs CUDA; on CPU use bf16 or fp32")
    return name


def autocast_for(precision: str, device: torch.device):
    """A context-manager factory: autocast in the chosen precision, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


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
