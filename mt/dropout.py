"""Dropout whose random mask is cheap on CPU, and the ramp of its rate that curriculum dropout trains with.

torch's CPU dropout draws its mask with bernoulli_, one float at a time: 8.7 ms for a 4,096 x 256 activation on
2 cores, a fifth of a training step of the small model with its 17 dropouts. Here one 64-bit random word gives
four 16-bit draws, and an element is dropped where its draw falls below round(p * 65,536) / 65,536 of their
range: the same function (p to within 2^-16) for 1.7 ms. Other devices keep torch's own kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mt.files import InputError

DRAW_LEVELS = 1 << 16  # the draws are int16, uniform over [-32768, 32767]


def drop_threshold(p: float) -> int:
    """Draws below this int16 value are dropped: a share round(p * 65,536) / 65,536 of them."""
    return -(DRAW_LEVELS // 2) + round(p * DRAW_LEVELS)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1 / (1 - p), in training; x itself otherwise."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not 0.0 < p < 1.0:
        return F.dropout(x, p, training=True)
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)  # all 64 bits random
    draws = words.view(torch.int16)[:x.numel()].view(x.shape)
    mask = (draws >= drop_threshold(p)).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * mask


class Dropout(nn.Module):
    """nn.Dropout on `dropout` above."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def set_rate(model: nn.Module, p: float) -> None:
    """Every Dropout in `model` (the residual and embedding dropouts) drops at rate p from now on; attention and
    activation dropout keep their own rates."""
    for module in model.modules():
        if isinstance(module, Dropout):
            module.p = p


def check_dropout_ramp(initial: float | None, steps: int) -> None:
    """trainer.initial_dropout needs the steps of its ramp (trainer.dropout_ramp_steps)."""
    if initial is not None and steps < 1:
        raise InputError(f"trainer.initial_dropout={initial} needs trainer.dropout_ramp_steps above 0: the steps "
                         "over which dropout goes from it to model.dropout")


class DropoutRamp:
    """Curriculum dropout (Morerio et al. 2017): a model that is young underfits and an old one overfits, so the
    residual and embedding dropout rises linearly from `initial` at step 0 to `final` (model.dropout) at step
    `steps`, and stays there. With `initial` None the rate never moves. The rate follows from the step alone, so a
    resumed run drops as the uninterrupted one did."""

    def __init__(self, model: nn.Module, final: float, initial: float | None, steps: int):
        self.model, self.final, self.initial, self.steps = model, final, initial, steps

    def rate(self, step: int) -> float:
        """The rate of optimizer step `step` + 1."""
        if self.initial is None or step >= self.steps:
            return self.final
        return self.initial + (self.final - self.initial) * step / self.steps

    def __call__(self, step: int) -> None:
        if self.initial is not None and step <= self.steps:  # past its end the rate is already final
            set_rate(self.model, self.rate(step))
