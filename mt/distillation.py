"""Word-level distillation from the run's own moving average of the weights (trainer.distill_weight): a copy of
the model holding the average, run without dropout or gradient, gives each batch's teacher distribution."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from mt.averaging import ExponentialMovingAverage
from mt.config import TrainerConfig
from mt.data import Batch
from mt.files import InputError


def check_distillation(trainer: TrainerConfig) -> None:
    """Distillation's teacher is the moving average, and its loss is not R-Drop's."""
    if trainer.distill_weight > 0 and trainer.ema_decay == 0:
        raise InputError(f"trainer.distill_weight={trainer.distill_weight} distills from the moving average: "
                         "set trainer.ema_decay above 0")
    if trainer.distill_weight > 0 and trainer.rdrop_weight > 0:
        raise InputError("trainer.distill_weight and trainer.rdrop_weight: use one of the two")


class MovingAverageTeacher:
    """Each batch's teacher logits from trainer.distill_start steps on, where trainer.distill_weight is above 0."""

    def __init__(self, model: nn.Module, average: ExponentialMovingAverage | None, autocast: Callable,
                 trainer: TrainerConfig):
        self.model, self.average, self.autocast = model, average, autocast
        self.start = trainer.distill_start if trainer.distill_weight > 0 else None
        self.copy: nn.Module | None = None  # made at the first use: a run that never distills holds no second model
        self.copied_at: int | None = None  # the step whose average the copy holds (accumulated batches share it)

    @torch.no_grad()
    def __call__(self, step: int, batch: Batch) -> Tensor | None:
        """The moving average's logits for the batch after `step` steps, as the average stands; None before."""
        if self.start is None or step < self.start:
            return None
        if self.copy is None:
            self.copy = copy.deepcopy(self.model).eval().requires_grad_(False)
        if self.copied_at != step:
            torch._foreach_copy_([p for _, p in self.copy.named_parameters()], self.average.weights)
            self.copied_at = step
        with self.autocast():
            return self.copy(batch.src, batch.tgt_in).logits
