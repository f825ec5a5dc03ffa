"""What training reports while it runs: loss, perplexity, learning rate, gradient norm, speed and memory over the
steps since the last report (summed over all processes), to TensorBoard and the progress bar."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Optional

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from mt import distributed
from mt.config import TrainerConfig
from mt.hardware import resident_memory_mb

SUMS = ("loss_sum", "nll_sum", "alignment_sum", "kl_sum", "tokens")  # summed over the steps between two reports


class TrainingLog:
    def __init__(self, world: distributed.World, device: torch.device, writer: Optional[SummaryWriter], bar: tqdm,
                 trainer: TrainerConfig):
        self.world, self.device, self.writer, self.bar = world, device, writer, bar
        # the divergence a step's loss holds, where one does: distillation's or R-Drop's (never both)
        self.kl_name = "distill_kl" if trainer.distill_weight > 0 else "rdrop_kl"
        self.tokens, self.seconds = 0.0, 0.0  # of the steps reported so far
        self._new_window()

    def _new_window(self) -> None:
        self.window = dict.fromkeys(SUMS, 0.0)
        self.start = time.perf_counter()

    def add(self, stats: dict) -> None:
        """One step's sums (train_step's result)."""
        for key in SUMS:
            self.window[key] += stats[key]
        self.bar.update(1)

    @contextlib.contextmanager
    def clock_paused(self):
        """Time spent in the block (evaluation, saving) does not count as training speed."""
        paused_at = time.perf_counter()
        try:
            yield
        finally:
            self.start += time.perf_counter() - paused_at

    def report(self, stats: dict, step: int, epoch: int, aligning: bool) -> None:
        """Report the steps since the last report; `stats` is the last step's (its lr and gradient norm)."""
        seconds = time.perf_counter() - self.start
        sums = dict(zip(SUMS, distributed.sum_over_ranks(self.world, [self.window[k] for k in SUMS], self.device)))
        tokens = sums["tokens"]
        loss, nll, speed = sums["loss_sum"] / tokens, sums["nll_sum"] / tokens, tokens / seconds
        if self.writer is not None:
            scalars = {"loss": loss, "ppl": math.exp(min(nll, 50)), "lr": stats["lr"], "grad_norm": stats["grad_norm"],
                       "tokens_per_s": speed, "memory_mb": resident_memory_mb()}
            if aligning:
                scalars["alignment_loss"] = sums["alignment_sum"] / tokens
            if sums["kl_sum"]:  # per target token: R-Drop's between its two passes, or KL(moving average || weights)
                scalars[self.kl_name] = sums["kl_sum"] / tokens
            for name, value in scalars.items():
                self.writer.add_scalar(f"train/{name}", value, step)
        self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{speed:,.0f}", epoch=epoch)
        self.tokens, self.seconds = self.tokens + tokens, self.seconds + seconds
        self._new_window()

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)
