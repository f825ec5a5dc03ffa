"""Data-parallel training under torchrun: which process this is, and the few collectives the trainer needs.

torchrun (or any launcher that sets RANK, LOCAL_RANK and WORLD_SIZE) starts one process per device; without it
there is one process and every function here is a no-op. Gradients are averaged by DistributedDataParallel.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def launched_as_main() -> bool:
    """Whether this process is rank 0 as the launcher started it (before joining: no process group needed)."""
    return os.environ.get("RANK", "0") == "0"


def launched_processes() -> int:
    """How many processes the launcher started (1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join(device: torch.device) -> tuple[World, torch.device]:
    """Join torchrun's process group when launched by it; returns the world and this process's device."""
    size = launched_processes()
    if size == 1:
        return World(), device
    world = World(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), size)
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, device


def replicate(model: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    """The model wrapped for data-parallel training. Its only buffer is the fixed position table, which need not
    travel with every forward pass: torch 2.13 says so with `forward_sync_buffers` and warns on the older
    `broadcast_buffers`, which older releases need."""
    keyword = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else "broadcast_buffers")
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None, **{keyword: False})


def leave(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def end_launched_process() -> None:
    """Under torchrun, end this process now that its run is done, without the interpreter's teardown: gloo's
    threads can abort a process while Python finalizes (docs/testing.md), and torchrun then reports a finished run
    as failed. Everything is written and flushed first; a process not launched by torchrun just returns."""
    if launched_processes() == 1:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def wait_for_all(world: World) -> None:
    """Every rank here before any goes on: rank 0 scores the test sets while the others are done, and a rank that
    tears gloo down while a peer still uses it can abort."""
    if world.active:
        dist.barrier()


def sum_over_ranks(world: World, values: list[float], device: torch.device) -> list[float]:
    if not world.active:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_rank(world: World, flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on any: ranks must take the same branch or collectives hang."""
    if not world.active:
        return flag
    tensor = torch.tensor([int(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def from_main(world: World, value):
    """Rank 0's `value` on every rank (any picklable object: these are our own processes)."""
    if not world.active:
        return value
    box = [value if world.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def main_first(world: World):
    """Rank 0 runs the block first (filling shared caches); the others run it after."""
    if world.active and not world.is_main:
        dist.barrier()
    yield
    if world.active and world.is_main:
        dist.barrier()
