"""The fused label-smoothed loss against torch's cross_entropy in float64."""

import pytest
import torch
import torch.nn.functional as F

from mt.loss import ROWS_PER_BLOCK, distilled_cross_entropy, label_smoothed_cross_entropy, rdrop_cross_entropy

PAD = 0


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("seed", range(3))
def test_loss_and_gradient_match_torch_in_float64(epsilon, seed):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(4, 7, 11, generator=g, dtype=torch.float64) * 3).requires_grad_()
    target = torch.randint(0, 11, (4, 7), generator=g)
    target[0, 4:] = PAD
    target[2, 1:] = PAD

    loss, nll = label_smoothed_cross_entropy(logits, target, epsilon, PAD)
    expected = F.cross_entropy(logits.view(-1, 11), target.view(-1), ignore_index=PAD,
                               label_smoothing=epsilon, reduction="sum")
    expected_nll = F.cross_entropy(logits.view(-1, 11), target.view(-1), ignore_index=PAD, reduction="sum")
    torch.testing.assert_close(loss.double(), expected)
    torch.testing.assert_close(nll.double(), expected_nll)

    (grad,) = torch.autograd.grad(loss, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad)
    assert torch.all(grad[target == PAD] == 0)


def test_gradcheck():
    logits = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1, 2, PAD, 5, 3])
    assert torch.autograd.gradcheck(lambda x: label_smoothed_cross_entropy(x, target, 0.1, PAD)[0], (logits,))


def test_bfloat16_logits_give_a_float32_loss_close_to_exact():
    logits = torch.randn(8, 50)
    target = torch.randint(1, 50, (8,))
    loss, _ = label_smoothed_cross_entropy(logits.bfloat16(), target, 0.1, PAD)
    expected = F.cross_entropy(logits.bfloat16().float(), target, label_smoothing=0.1, reduction="sum")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_many_blocks_of_rows_and_a_scaled_loss_match_torch_in_float64(dtype):
    """More rows than one block holds (ROWS_PER_BLOCK), the last block partial, and the loss scaled as training
    scales it (divided by the batch's tokens) before backward."""
    g = torch.Generator().manual_seed(7)
    rows, vocab = 2 * ROWS_PER_BLOCK + 37, 13
    exact = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * 3
    target = torch.randint(1, vocab, (rows,), generator=g)
    target[::5] = PAD
    logits = exact.to(dtype).requires_grad_()
    loss, nll = label_smoothed_cross_entropy(logits, target, 0.1, PAD)
    (loss / 3719).backward()

    reference = exact.to(dtype).double().requires_grad_()  # the same inputs, rounded alike
    expected = F.cross_entropy(reference, target, ignore_index=PAD, label_smoothing=0.1, reduction="sum")
    (expected / 3719).backward()
    tolerance = {} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-3}
    torch.testing.assert_close(loss.double(), expected.detach(), **tolerance)
    assert logits.grad.dtype == dtype
    grad_tolerance = {} if dtype == torch.float64 else {"rtol": 1e-2, "atol": 1e-6}
    torch.testing.assert_close(logits.grad.double(), reference.grad, **grad_tolerance)


def rdrop_reference(logits: torch.Tensor, target: torch.Tensor, epsilon: float, weight: float):
    """R-Drop written out with torch's ops, in the logits' dtype: both passes' smoothed cross-entropy plus weight
    times the symmetric KL of the two passes' distributions, per non-pad target."""
    half = logits.size(0) // 2
    flat, flat_target = logits.reshape(-1, logits.size(-1)), target.reshape(-1)
    cross_entropy = F.cross_entropy(flat, flat_target, ignore_index=PAD, label_smoothing=epsilon, reduction="sum")
    nll = F.cross_entropy(flat, flat_target, ignore_index=PAD, reduction="sum")
    p, q = F.log_softmax(logits[:half], dim=-1), F.log_softmax(logits[half:], dim=-1)
    kl_pq = F.kl_div(q, p, log_target=True, reduction="none").sum(-1)  # KL(p || q)
    kl_qp = F.kl_div(p, q, log_target=True, reduction="none").sum(-1)
    kl = ((kl_pq + kl_qp) / 2).masked_fill(target[:half] == PAD, 0.0).sum()
    return cross_entropy + weight * kl, nll, kl


@pytest.mark.parametrize("weight", [0.0, 1.0, 5.0])
@pytest.mark.parametrize("seed", range(3))
def test_rdrop_loss_and_gradient_match_autograd_in_float64(weight, seed):
    """Two passes over a batch of 3 (rows 0-2 and 3-5) with different logits and the same targets, over more rows
    than a block holds, the last block partial."""
    g = torch.Generator().manual_seed(seed)
    batch, length, vocab = 3, ROWS_PER_BLOCK // 2 + 5, 11
    logits = (torch.randn(2 * batch, length, vocab, generator=g, dtype=torch.float64) * 3).requires_grad_()
    once = torch.randint(1, vocab, (batch, length), generator=g)
    once[0, 4:] = PAD
    once[2, 100:] = PAD
    target = once.repeat(2, 1)

    loss, nll, kl = rdrop_cross_entropy(logits, target, 0.1, PAD, weight)
    expected, expected_nll, expected_kl = rdrop_reference(logits, target, 0.1, weight)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(nll, expected_nll)
    torch.testing.assert_close(kl, expected_kl)
    assert kl > 0

    (grad,) = torch.autograd.grad(loss / 1000, logits)
    (expected_grad,) = torch.autograd.grad(expected / 1000, logits)
    torch.testing.assert_close(grad, expected_grad)
    assert torch.all(grad[target == PAD] == 0)


def test_rdrop_of_two_equal_passes_is_the_plain_loss_twice():
    g = torch.Generator().manual_seed(3)
    once = torch.randn(2, 5, 9, generator=g, dtype=torch.float64)
    target = torch.randint(1, 9, (2, 5), generator=g)
    loss, nll, kl = rdrop_cross_entropy(once.repeat(2, 1, 1), target.repeat(2, 1), 0.1, PAD, 5.0)
    plain, plain_nll = label_smoothed_cross_entropy(once, target, 0.1, PAD)
    assert kl == 0
    torch.testing.assert_close(loss, 2 * plain)
    torch.testing.assert_close(nll, 2 * plain_nll)


def test_rdrop_gradcheck():
    logits = torch.randn(4, 3, 6, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[1, 2, PAD], [5, 3, 4]]).repeat(2, 1)
    assert torch.autograd.gradcheck(lambda x: rdrop_cross_entropy(x, target, 0.1, PAD, 2.0)[0], (logits,))


def distillation_reference(logits, target, teacher_logits, epsilon, weight):
    """(1 - weight) * torch's smoothed cross-entropy + weight * torch's KL(teacher || model), pad rows dropped."""
    keep = target.ne(PAD)
    smoothed = F.cross_entropy(logits, target, ignore_index=PAD, label_smoothing=epsilon, reduction="sum")
    kl = F.kl_div(F.log_softmax(logits[keep], -1), F.log_softmax(teacher_logits[keep], -1), log_target=True,
                  reduction="sum")
    return (1 - weight) * smoothed + weight * kl, kl


@pytest.mark.parametrize("weight", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("seed", range(2))
def test_distillation_loss_and_gradient_match_torch_in_float64(weight, seed):
    g = torch.Generator().manual_seed(seed)
    rows, vocab = ROWS_PER_BLOCK + 29, 17  # two blocks, the second partial
    logits = (torch.randn(rows, vocab, generator=g, dtype=torch.float64) * 3).requires_grad_()
    teacher = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * 3
    target = torch.randint(1, vocab, (rows,), generator=g)
    target[::4] = PAD

    loss, nll, kl = distilled_cross_entropy(logits, target, teacher, 0.2, PAD, weight)
    expected, expected_kl = distillation_reference(logits, target, teacher, 0.2, weight)
    expected_nll = F.cross_entropy(logits, target, ignore_index=PAD, reduction="sum")
    torch.testing.assert_close(loss.double(), expected)
    torch.testing.assert_close(nll.double(), expected_nll)
    torch.testing.assert_close(kl.double(), expected_kl)

    (grad,) = torch.autograd.grad(loss, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad)
    assert torch.all(grad[target == PAD] == 0)


def test_distilling_from_the_model_itself_adds_no_divergence():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 9, generator=g, dtype=torch.float64)
    target = torch.randint(1, 9, (6,), generator=g)
    loss, _, kl = distilled_cross_entropy(logits, target, logits.clone(), 0.1, PAD, 0.5)
    plain, _ = label_smoothed_cross_entropy(logits, target, 0.1, PAD)
    assert float(kl) == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(loss.double(), 0.5 * plain.double())
