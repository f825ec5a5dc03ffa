"""Weight averaging: an exponential moving average of the weights during training, and the mean of saved
checkpoints' weights afterwards (as fairseq's average_checkpoints.py, OpenNMT-py's average_models, Marian's
--exponential-smoothing)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class ExponentialMovingAverage:
    """ema = d * ema + (1 - d) * weights after every optimizer step, in float32.

    The decay warms up as min(decay, (1 + step) / (10 + step)): early on, when the weights move fast, the average
    follows them closely, so it is worth evaluating within a few thousand steps instead of remembering the random
    initialization for 1 / (1 - decay) steps.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.names = [name for name, _ in model.named_parameters()]  # tied weights appear once
        self.weights = [p.detach().float().clone() for _, p in model.named_parameters()]

    def decay_at(self, step: int) -> float:
        """The decay of the update that follows optimizer step `step` (counted from 1)."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        current = [p.detach().float() for _, p in model.named_parameters()]
        torch._foreach_lerp_(self.weights, current, 1.0 - self.decay_at(step))

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module):
        """The model holds the averaged weights inside the block, its own again after it."""
        parameters = [p for _, p in model.named_parameters()]
        own = [p.detach().clone() for p in parameters]
        with torch.no_grad():
            for p, w in zip(parameters, self.weights):
                p.copy_(w)
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, w in zip(parameters, own):
                    p.copy_(w)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "weights": dict(zip(self.names, self.weights))}

    def load_state_dict(self, state: dict) -> None:
        self.weights = [state["weights"][name].float().clone() for name in self.names]


def mean_of_weights(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of model state dicts with the same keys and shapes (summed in float64)."""
    first = states[0]
    for i, state in enumerate(states[1:], start=2):
        if state.keys() != first.keys() or any(state[k].shape != first[k].shape for k in first):
            raise ValueError(f"weights {i} do not have the keys and shapes of weights 1")
    mean = {}
    for key, tensor in first.items():
        if tensor.is_floating_point():
            total = sum(state[key].double() for state in states)
            mean[key] = (total / len(states)).to(tensor.dtype)
        else:
            mean[key] = tensor.clone()
    return mean
