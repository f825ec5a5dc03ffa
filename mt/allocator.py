"""The process's malloc, the one training runs under, and the cap on oneDNN's kernel cache.

glibc's malloc keeps what batches of ever-changing shapes free, in pieces it cannot reuse: a training run's memory
grows by gigabytes and its steps slow down (docs/memory.md has the measurements). The project installs mimalloc
(the cmeel-mimalloc wheel, MIT), and train.py restarts itself under it at once, with LD_PRELOAD, as PyTorch's CPU
launcher (torch.backends.xeon.run_cpu) does with tcmalloc or jemalloc. Nothing needs root or a system package.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Optional

# Chosen by measurement (docs/memory.md). By default mimalloc hands freed memory back to the system after a delay,
# and maps objects over its arena limit (the logits of a batch) afresh each time; both cost page faults
# on every step. Never purging, and serving objects up to 1 GiB from its arenas, it reuses what it keeps: memory
# stays flat and training runs at tcmalloc's speed.
MIMALLOC_OPTIONS = {"MIMALLOC_PURGE_DELAY": "-1", "MIMALLOC_ARENA_MAX_OBJECT_SIZE": "1GiB"}
# oneDNN keeps the compiled kernel of every shape it has seen, up to 1,024; batches come in hundreds of shapes, and
# on the bf16 path those kernels held ~0.4-0.5 GiB of a run's peak. A smaller cache frees most of it for a few percent
# of speed (docs/memory.md). A user's own value is kept.
KERNEL_CACHE_VARIABLE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
KERNEL_CACHE_CAPACITY = 256
# "system" keeps the allocator the process was started with; train.py sets "preloaded" when it restarts itself.
SWITCH = "MT_ALLOCATOR"


def _glibc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _glibc()


@functools.cache
def allocator() -> str:
    """Who serves this process's malloc: "mimalloc", "tcmalloc" or "jemalloc" when preloaded, else "glibc" (or
    "other" on a system without glibc)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    for name in ("mimalloc", "tcmalloc", "jemalloc"):
        if f"lib{name}" in maps:
            return name
    return "glibc" if _LIBC is not None and hasattr(_LIBC, "malloc_trim") else "other"


def bundled_mimalloc() -> Optional[Path]:
    """The shared library of the cmeel-mimalloc wheel, where it is installed."""
    try:
        files = metadata.distribution("cmeel-mimalloc").files or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name.startswith("libmimalloc.so."):
            path = Path(file.locate())
            if path.is_file():
                return path
    return None


def why_not_mimalloc() -> Optional[str]:
    """Why this process cannot restart under mimalloc, or None if it can."""
    if os.environ.get(SWITCH) == "system":
        return f"{SWITCH}=system keeps the allocator the process started with"
    if allocator() != "glibc":
        return f"{allocator()} is preloaded already"
    if os.environ.get(SWITCH) == "preloaded":
        return "the restart under mimalloc did not take effect (LD_PRELOAD was ignored)"
    if not sys.platform.startswith("linux"):
        return f"mimalloc is preloaded on Linux only, not on {sys.platform}"
    if bundled_mimalloc() is None:
        return "the cmeel-mimalloc wheel is not installed for this platform (pip install cmeel-mimalloc)"
    return None


def cap_kernel_cache() -> None:
    """Cap oneDNN's kernel cache for this process and the ones it starts, unless the environment sets it already;
    it must run before the first oneDNN call, which reads the variable once."""
    os.environ.setdefault(KERNEL_CACHE_VARIABLE, str(KERNEL_CACHE_CAPACITY))


def kernel_cache_report() -> str:
    """One line for the log: the cap oneDNN's kernel cache runs under."""
    value = os.environ.get(KERNEL_CACHE_VARIABLE)
    return (f"oneDNN kernel cache: {value} kernels ({KERNEL_CACHE_VARIABLE})" if value is not None
            else "oneDNN kernel cache: oneDNN's default (1,024 kernels)")


def restart_under_mimalloc() -> None:
    """Replace this process with the same command under mimalloc, where that applies; otherwise return (the
    trainer's log then says why, in allocator_report)."""
    if why_not_mimalloc() is not None:
        return
    environment = {**os.environ, **MIMALLOC_OPTIONS, SWITCH: "preloaded"}
    environment["LD_PRELOAD"] = " ".join(filter(None, [str(bundled_mimalloc()), os.environ.get("LD_PRELOAD")]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)


def allocator_report() -> str:
    """One line for the log: which malloc serves the process and, where it is glibc's, what that costs."""
    name = allocator()
    if name != "glibc":
        return f"memory allocator: {name}"
    reason = why_not_mimalloc() or "train.py was not the program started"
    return (f"memory allocator: glibc's malloc ({reason}): memory grows by gigabytes over a run and steps are "
            "slower; train.py restarts itself under mimalloc where it can (docs/memory.md)")


def release_free_memory() -> None:
    """Hand glibc's free heap pages back to the system (malloc_trim); other allocators keep their own."""
    if allocator() == "glibc":
        _LIBC.malloc_trim(0)
