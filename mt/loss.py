"""Label-smoothed cross-entropy with a hand-written gradient, computed beside the loss; and R-Drop's variant.

The gradient with respect to the logits is softmax(x) - (1 - eps) * onehot(target) - eps / V. The forward pass
computes it, a block of rows at a time while those rows are in cache, and keeps it in the logits' precision for
the backward pass, which only scales it: one pass over the (tokens x vocabulary) matrix instead of the ten that
autograd through log_softmax, gather and mean made, and no float32 copy of the matrix kept between the passes.
Checked against torch's own loss (and R-Drop's against autograd) in float64 in the tests.
"""

from __future__ import annotations

import torch
from torch import Tensor

ROWS_PER_BLOCK = 256  # 256 x 8,000 float32 logits: 8 MB, the block size that ran fastest on 2-core CPUs


def _at_least_float32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


class _SmoothedBlock:
    """One block of rows: their log-probabilities, smoothed loss, NLL and loss gradient (pad rows add nothing).
    With `keep_log_probs` the probabilities are kept too; without, the gradient is written over the
    log-probabilities, saving a block-sized copy."""

    def __init__(self, logits: Tensor, target: Tensor, epsilon: float, pad_id: int, with_grad: bool,
                 keep_log_probs: bool = False):
        vocab = logits.size(-1)
        self.log_probs = torch.log_softmax(_at_least_float32(logits), dim=-1)
        target = target[:, None]
        self.keep = target.ne(pad_id)
        nll = -self.log_probs.gather(-1, target)
        uniform = -self.log_probs.mean(dim=-1, keepdim=True)  # cross-entropy against the uniform distribution
        self.loss = ((1.0 - epsilon) * nll + epsilon * uniform).masked_fill(~self.keep, 0.0).sum()
        self.nll = nll.masked_fill(~self.keep, 0.0).sum()
        self.probs = self.log_probs.exp() if keep_log_probs else None
        self.grad = None
        if with_grad:
            shift = epsilon / vocab
            self.grad = self.probs - shift if keep_log_probs else self.log_probs.exp_().sub_(shift)
            self.grad.scatter_add_(-1, target, torch.full_like(nll, epsilon - 1.0))


def _zero_sum(logits: Tensor) -> Tensor:
    return _at_least_float32(logits.new_zeros(()))  # on the logits' device: a CPU sum would not take CUDA blocks


class _GradientFromForward(torch.autograd.Function):
    """The forward pass saves the loss's gradient with respect to the logits; the backward pass only scales it (by
    a 0-dim float32 factor: the product keeps the gradient's dtype). No other input gets a gradient."""

    @staticmethod
    def backward(ctx, grad_loss: Tensor, *_grad_statistics: Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_loss, *[None] * (len(ctx.needs_input_grad) - 1)


class _LabelSmoothedCrossEntropy(_GradientFromForward):
    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, epsilon: float, pad_id: int):
        loss, nll_sum = _zero_sum(logits), _zero_sum(logits)
        grad = torch.empty_like(logits) if ctx.needs_input_grad[0] else None
        for start in range(0, logits.size(0), ROWS_PER_BLOCK):
            rows = slice(start, start + ROWS_PER_BLOCK)
            block = _SmoothedBlock(logits[rows], target[rows], epsilon, pad_id, grad is not None)
            loss += block.loss
            nll_sum += block.nll
            if grad is not None:
                grad[rows] = block.grad.mul_(block.keep)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(nll_sum)
        return loss, nll_sum


class _RDropCrossEntropy(_GradientFromForward):
    """Rows [0, n) and [n, 2n) are two dropout passes over the same targets. The loss is both passes' smoothed
    cross-entropy plus `weight` times their symmetric KL divergence, (KL(p||q) + KL(q||p)) / 2 per target; with
    d = log p - log q, that KL's gradient is (p * (d - E_p[d]) + p - q) / 2 for p's logits, and the same with
    p and q swapped (d negated) for q's."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, epsilon: float, pad_id: int, weight: float):
        half = logits.size(0) // 2
        loss, nll_sum, kl_sum = _zero_sum(logits), _zero_sum(logits), _zero_sum(logits)
        grad = torch.empty_like(logits) if ctx.needs_input_grad[0] else None
        for start in range(0, half, ROWS_PER_BLOCK):
            first = slice(start, min(start + ROWS_PER_BLOCK, half))
            second = slice(first.start + half, first.stop + half)
            p = _SmoothedBlock(logits[first], target[first], epsilon, pad_id, grad is not None, keep_log_probs=True)
            q = _SmoothedBlock(logits[second], target[second], epsilon, pad_id, grad is not None, keep_log_probs=True)
            p_probs, q_probs = p.probs, q.probs
            difference = p.log_probs - q.log_probs
            kl_sum += (0.5 * ((p_probs - q_probs) * difference).sum(-1, keepdim=True)).masked_fill(~p.keep, 0.0).sum()
            loss += p.loss + q.loss
            nll_sum += p.nll + q.nll
            if grad is not None:
                p_mean = (p_probs * difference).sum(-1, keepdim=True)
                q_mean = (q_probs * difference).sum(-1, keepdim=True)
                scale = 0.5 * weight
                grad[first] = p.grad.add_(scale * (p_probs * (difference - p_mean) + p_probs - q_probs)).mul_(p.keep)
                grad[second] = q.grad.add_(scale * (q_probs * (q_mean - difference) + q_probs - p_probs)).mul_(q.keep)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(nll_sum, kl_sum)
        return loss + weight * kl_sum, nll_sum, kl_sum


class _DistilledCrossEntropy(_GradientFromForward):
    """(1 - weight) times the smoothed cross-entropy plus `weight` times KL(teacher || model) per target, the
    teacher's distribution coming from its logits; the KL's gradient is softmax(x) - teacher."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, teacher_logits: Tensor, epsilon: float, pad_id: int,
                weight: float):
        loss, nll_sum, kl_sum = _zero_sum(logits), _zero_sum(logits), _zero_sum(logits)
        grad = torch.empty_like(logits) if ctx.needs_input_grad[0] else None
        for start in range(0, logits.size(0), ROWS_PER_BLOCK):
            rows = slice(start, start + ROWS_PER_BLOCK)
            block = _SmoothedBlock(logits[rows], target[rows], epsilon, pad_id, grad is not None, keep_log_probs=True)
            teacher_log_probs = torch.log_softmax(_at_least_float32(teacher_logits[rows]), dim=-1)
            teacher_probs = teacher_log_probs.exp()
            kl = (teacher_probs * (teacher_log_probs - block.log_probs)).sum(-1, keepdim=True)
            kl_sum += kl.masked_fill(~block.keep, 0.0).sum()
            loss += (1.0 - weight) * block.loss
            nll_sum += block.nll
            if grad is not None:
                grad[rows] = block.grad.mul_(1.0 - weight).add_(weight * (block.probs - teacher_probs)).mul_(block.keep)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(nll_sum, kl_sum)
        return loss + weight * kl_sum, nll_sum, kl_sum


def label_smoothed_cross_entropy(logits: Tensor, target: Tensor, epsilon: float, pad_id: int) -> tuple[Tensor, Tensor]:
    """logits (..., V), target (...). Returns the smoothed loss and the plain NLL (no gradient), both summed over
    non-pad targets. Equals torch's cross_entropy(label_smoothing=epsilon, reduction='sum', ignore_index=pad_id)."""
    return _LabelSmoothedCrossEntropy.apply(logits.reshape(-1, logits.size(-1)), target.reshape(-1), epsilon, pad_id)


def rdrop_cross_entropy(logits: Tensor, target: Tensor, epsilon: float, pad_id: int,
                        weight: float) -> tuple[Tensor, Tensor, Tensor]:
    """R-Drop (Liang et al. 2021). logits (2B, T, V): the first B rows and the last B are two passes over the same
    batch, whose targets (2B, T) are the same twice. Returns both passes' smoothed loss plus `weight` times their
    symmetric KL, the NLL of both passes and the KL (no gradient to either), all summed over non-pad targets."""
    if logits.size(0) % 2:
        raise ValueError(f"R-Drop needs an even number of rows (two passes), got {logits.size(0)}")
    # Flattened batch-major, the first B * T rows are the first pass.
    return _RDropCrossEntropy.apply(logits.reshape(-1, logits.size(-1)), target.reshape(-1), epsilon, pad_id, weight)


def distilled_cross_entropy(logits: Tensor, target: Tensor, teacher_logits: Tensor, epsilon: float, pad_id: int,
                            weight: float) -> tuple[Tensor, Tensor, Tensor]:
    """Word-level distillation (Hinton et al. 2015; Kim and Rush 2016): logits and teacher_logits (..., V) over
    the same targets (...). Returns (1 - weight) * the smoothed loss + weight * KL(teacher || model), the NLL and
    the KL (no gradient to either), all summed over non-pad targets. The teacher gets no gradient."""
    vocab = logits.size(-1)
    return _DistilledCrossEntropy.apply(logits.reshape(-1, vocab), target.reshape(-1),
                                        teacher_logits.detach().reshape(-1, vocab), epsilon, pad_id, weight)


def translation_loss(logits: Tensor, target: Tensor, epsilon: float, pad_id: int, rdrop_weight: float,
                     teacher_logits: Tensor | None = None,
                     distill_weight: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Training's loss: R-Drop's when `rdrop_weight` > 0 (logits and targets hold the batch twice), distillation's
    when `teacher_logits` are given, else the smoothed cross-entropy alone. Returns the loss, the NLL and the KL
    (R-Drop's between its passes, or the teacher's; 0 without either), summed."""
    if rdrop_weight > 0:
        return rdrop_cross_entropy(logits, target, epsilon, pad_id, rdrop_weight)
    if teacher_logits is not None:
        return distilled_cross_entropy(logits, target, teacher_logits, epsilon, pad_id, distill_weight)
    loss, nll = label_smoothed_cross_entropy(logits, target, epsilon, pad_id)
    return loss, nll, torch.zeros_like(nll)


def alignment_loss(attention: Tensor, gold: Tensor) -> Tensor:
    """Cross-entropy of attention weights against gold alignment distributions (Garg et al. 2019), summed.

    attention (..., S): a head's weights over source positions; gold (..., S): per decoder step, the gold links of
    its target piece spread evenly over the linked source pieces, or a row of zeros where the piece has no link
    (those rows add nothing). Computed in float32 at least; the weights are clamped away from 0 so a blocked
    position never yields -inf.
    """
    attention = _at_least_float32(attention)
    return -(gold.to(attention.dtype) * attention.clamp_min(1e-9).log()).sum()
