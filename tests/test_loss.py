"""The fused label-smoothed loss against torch's cross_entropy in float64."""

import pytest
import torch
import torch.nn.functional as F

from mt.loss import ROWS_PER_BLOCK, label_smoothed_cross_entropy

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
