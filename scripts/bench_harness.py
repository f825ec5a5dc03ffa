"""Timing contestants side by side, each in a process of its own, in turns: the harness of scripts/bench.py.

A contestant's process is a benchmark script (the one racing, or bench_fairseq.py under fairseq's interpreter),
started with `--serve KEY`: it sets up once, answers "ready", then times one pass per "run" line on its stdin and
answers with the seconds, its result and its peak memory. The parent starts them one after another, warms each
up with a pass, then runs the timed passes interleaved (A, B, C, A, B, C, ...), one process working at a time.
Separate processes keep contestants from slowing each other: in one process, a live CTranslate2 translator slows
our decoding, and the heap left by one search slows the next (docs/benchmark.md).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ANSWER = "BENCH "  # marks the lines a contestant's process answers with (libraries may print too)


def peak_rss_mib() -> float:
    """This process's peak resident memory. Linux's VmHWM, not ru_maxrss: that keeps the parent's peak across
    fork and exec, so a child would report the bench's own."""
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else []:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def peak_memory_mib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else peak_rss_mib()


def timed(run: Callable[[], object], device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def serve(run: Callable[[], object], device: torch.device) -> None:
    """In a contestant's process, once it is set up: answer "ready", then time one pass of `run` per request."""
    print(ANSWER + json.dumps({"memory": peak_memory_mib(device)}), flush=True)
    for request in sys.stdin:
        if request.strip() == "run":
            seconds, result = timed(run, device)
            print(ANSWER + json.dumps({"seconds": seconds, "result": result, "memory": peak_memory_mib(device)}),
                  flush=True)


class Contestant:
    """A contestant's own process: `command` + ["--serve", key], set up at once, then one pass per request."""

    def __init__(self, key: str, command: list[str], workdir: Path):
        self.key, self.name = key, key.split(":", 1)[1]
        self.log = workdir / f"{key.replace(':', '_').replace(' ', '_')}.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [*command, "--serve", key], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                env={**os.environ, "PYTHONWARNINGS": "ignore"})
        self.set_up_memory = self.peak_memory = self._answer()["memory"]

    def run(self) -> dict:
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        answer = self._answer()
        self.peak_memory = answer["memory"]
        return answer

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()

    def _answer(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(ANSWER):
                return json.loads(line[len(ANSWER):])
        self.process.wait()
        sys.exit(f"bench: the {self.key} process failed (exit {self.process.returncode}):\n"
                 + self.log.read_text()[-3000:])


@dataclass
class RaceResult:
    seconds: dict[str, float]  # median per contestant
    results: dict[str, object]  # each one's result of its warm-up pass
    memory: dict[str, dict[str, float]]  # each one's peak after set-up ("before") and in all ("peak"), MiB


def race(commands: dict[str, list[str]], reps: int, workdir: Path) -> RaceResult:
    """Start a process per contestant (key -> its command; set up one after another), warm each up with one pass,
    then time `reps` interleaved passes, one process working at a time; the others wait on their input."""
    contestants = [Contestant(key, command, workdir) for key, command in commands.items()]
    results = {c.name: c.run()["result"] for c in contestants}
    seconds = {c.name: [] for c in contestants}
    for _ in range(reps):
        for c in contestants:
            seconds[c.name].append(c.run()["seconds"])
    for c in contestants:
        c.close()
    memory = {c.key: {"before": c.set_up_memory, "peak": c.peak_memory} for c in contestants}
    return RaceResult({name: statistics.median(s) for name, s in seconds.items()}, results, memory)
