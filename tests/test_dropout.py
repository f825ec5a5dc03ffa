"""Dropout on CPU: its mask drops a share p of the elements, independently of their place, scales the rest by
1 / (1 - p) exactly as a float64 reference does, carries its gradient, and follows torch's seed."""

import math

import pytest
import torch

from mt.dropout import DRAW_LEVELS, Dropout, dropout
from mt.model import ModelConfig, Transformer


def dropped_share_bound(p: float, n: int) -> float:
    return 6 * math.sqrt(p * (1 - p) / n) + 1 / DRAW_LEVELS  # six standard deviations, plus the draw's grain


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_a_share_p_is_dropped_at_every_place_and_the_rest_scaled_as_in_float64(p):
    torch.manual_seed(1)
    x = torch.rand(512, 1024, dtype=torch.float64) + 0.5  # never 0, so a zero is a drop
    out = dropout(x, p)
    dropped = out == 0
    n = x.numel()
    assert abs(dropped.double().mean().item() - p) < dropped_share_bound(p, n)
    # the four draws of one random word, and rows and columns, each drop the same share
    for lane in range(4):
        lane_share = dropped.view(-1, 4)[:, lane].double().mean().item()
        assert abs(lane_share - p) < dropped_share_bound(p, n // 4), lane
    assert dropped.double().mean(dim=0).std().item() < 6 * math.sqrt(p * (1 - p) / 512)
    # neighbours are independent: dropping one says nothing of the next
    both = (dropped[:, 1:] & dropped[:, :-1]).double().mean().item()
    assert abs(both - p * p) < dropped_share_bound(p * p, n)
    kept = ~dropped
    torch.testing.assert_close(out[kept], x[kept] / (1 - p), rtol=1e-15, atol=0)


def test_the_gradient_is_the_mask_and_scale_the_forward_pass_used():
    torch.manual_seed(2)
    x = torch.randn(64, 33, dtype=torch.float64, requires_grad=True)  # not a multiple of 4 elements
    out = dropout(x, 0.3)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    expected = torch.where(out != 0, upstream / 0.7, torch.zeros_like(upstream))
    torch.testing.assert_close(x.grad, expected, rtol=1e-15, atol=0)


def test_the_mask_follows_torchs_seed_and_bf16_is_dropped_alike():
    x = torch.ones(4096, 256)
    torch.manual_seed(3)
    first = dropout(x, 0.3)
    torch.manual_seed(3)
    again = dropout(x.bfloat16(), 0.3)
    assert torch.equal(first == 0, again == 0)
    assert not torch.equal(first == 0, dropout(x, 0.3) == 0)  # the stream moved on


def test_in_evaluation_and_at_zero_it_is_the_identity_and_the_model_uses_it():
    x = torch.randn(8, 8)
    assert dropout(x, 0.3, training=False) is x and dropout(x, 0.0) is x
    layer = Dropout(0.3).eval()
    assert layer(x) is x
    model = Transformer(ModelConfig(vocab_size=20, d_model=8, n_heads=2, encoder_layers=1, decoder_layers=1,
                                    ffn_dim=16, dropout=0.2))
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    assert sum(isinstance(m, Dropout) and m.p == 0.2 for m in model.modules()) == 1 + 2 + 3  # embeddings, layers
