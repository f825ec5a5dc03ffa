"""Label-smoothed cross-entropy with a hand-written gradient, computed beside the loss.

The gradient with respect to the logits is softmax(x) - (1 - eps) * onehot(target) - eps / V. The forward pass
computes it, a block of rows at a time while those rows are in cache, and keeps it in the logits' precision for
the backward pass, which only scales it: one pass over the (tokens x vocabulary) matrix instead of the ten that
autograd through log_softmax, gather and mean made, and no float32 copy of the matrix kept between the passes.
Checked against torch's own loss in float64 in the tests.
"""

from __future__ import annotations

import torch
from torch import Tensor

ROWS_PER_BLOCK = 256  # 256 x 8,000 float32 logits: 8 MB, the block size that ran fastest on 2-core CPUs


def _at_least_float32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


class _LabelSmoothedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, epsilon: float, pad_id: int):
        vocab = logits.size(-1)
        loss = _at_least_float32(logits.new_zeros(()))  # on the logits' device: a CPU sum would not take CUDA blocks
        nll_sum = loss.clone()
        grad = torch.empty_like(logits) if ctx.needs_input_grad[0] else None
        for start in range(0, logits.size(0), ROWS_PER_BLOCK):
            rows = slice(start, start + ROWS_PER_BLOCK)
            log_probs = torch.log_softmax(_at_least_float32(logits[rows]), dim=-1)
            target_rows = target[rows, None]
            keep = target_rows.ne(pad_id)
            nll = -log_probs.gather(-1, target_rows)
            uniform = -log_probs.mean(dim=-1, keepdim=True)  # cross-entropy against the uniform distribution
            loss += ((1.0 - epsilon) * nll + epsilon * uniform).masked_fill(~keep, 0.0).sum()
            nll_sum += nll.masked_fill(~keep, 0.0).sum()
            if grad is not None:
                block = log_probs.exp_().sub_(epsilon / vocab)
                block.scatter_add_(-1, target_rows, torch.full_like(nll, epsilon - 1.0))
                grad[rows] = block.mul_(keep)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(nll_sum)
        return loss, nll_sum

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_nll: Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_loss, None, None, None  # a 0-dim float32 factor: the product keeps grad's dtype


def label_smoothed_cross_entropy(logits: Tensor, target: Tensor, epsilon: float, pad_id: int) -> tuple[Tensor, Tensor]:
    """logits (..., V), target (...). Returns the smoothed loss and the plain NLL (no gradient), both summed over
    non-pad targets. Equals torch's cross_entropy(label_smoothing=epsilon, reduction='sum', ignore_index=pad_id)."""
    return _LabelSmoothedCrossEntropy.apply(logits.reshape(-1, logits.size(-1)), target.reshape(-1), epsilon, pad_id)


def alignment_loss(attention: Tensor, gold: Tensor) -> Tensor:
    """Cross-entropy of attention weights against gold alignment distributions (Garg et al. 2019), summed.

    attention (..., S): a head's weights over source positions; gold (..., S): per decoder step, the gold links of
    its target piece spread evenly over the linked source pieces, or a row of zeros where the piece has no link
    (those rows add nothing). Computed in float32 at least; the weights are clamped away from 0 so a blocked
    position never yields -inf.
    """
    attention = _at_least_float32(attention)
    return -(gold.to(attention.dtype) * attention.clamp_min(1e-9).log()).sum()
