"""mt.attention against a float64 reference written straight from the formula."""

import math

import pytest
import torch

from mt.attention import KVCache, MultiHeadAttention


def reference(attn: MultiHeadAttention, query, key, value, key_padding_mask=None, causal=False):
    """softmax(QK^T / sqrt(d_k)) V per head in float64, with blocked positions given zero weight."""
    def heads(x, proj):
        y = x.double() @ proj.weight.double().T + proj.bias.double()
        return y.view(x.size(0), x.size(1), attn.n_heads, attn.head_dim).transpose(1, 2)

    q, k, v = heads(query, attn.q_proj), heads(key, attn.k_proj), heads(value, attn.v_proj)
    scores = q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim)
    t, s = q.size(2), k.size(2)
    allowed = torch.ones(query.size(0), 1, t, s, dtype=torch.bool)
    if key_padding_mask is not None:
        allowed &= ~key_padding_mask[:, None, None, :]
    if causal:
        allowed &= torch.ones(t, s, dtype=torch.bool).tril(s - t)
    weights = torch.where(allowed, scores.exp(), torch.zeros(())) if True else None
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-300)
    out = (weights @ v).transpose(1, 2).reshape(query.size(0), t, -1)
    out = out @ attn.out_proj.weight.double().T + attn.out_proj.bias.double()
    return out, weights


def random_padding(batch, length, generator, fully_padded_row=True):
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    if fully_padded_row:
        lengths[0] = 0
    return torch.arange(length)[None, :] >= lengths[:, None]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("causal", [False, True])
def test_matches_float64_reference_on_random_shapes(seed, causal):
    g = torch.Generator().manual_seed(seed)
    batch, heads = int(torch.randint(1, 5, (1,), generator=g)), int(torch.randint(1, 4, (1,), generator=g))
    d_model = heads * int(torch.randint(2, 9, (1,), generator=g))
    t = int(torch.randint(1, 9, (1,), generator=g))
    s = t if causal else int(torch.randint(1, 9, (1,), generator=g))
    torch.manual_seed(seed)
    attn = MultiHeadAttention(d_model, heads).eval()
    query, key, value = (torch.randn(batch, n, d_model, generator=g) for n in (t, s, s))
    pad = random_padding(batch, s, g)

    expected_out, expected_w = reference(attn, query, key, value, pad, causal)
    out, weights = attn(query, key, value, key_padding_mask=pad, causal=causal, need_weights=True)
    fused, no_weights = attn(query, key, value, key_padding_mask=pad, causal=causal)

    assert no_weights is None
    torch.testing.assert_close(weights.double(), expected_w, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.double(), expected_out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fused, out, atol=1e-5, rtol=1e-4)


def test_blocked_positions_get_exactly_zero_weight_and_empty_rows_output_zero():
    torch.manual_seed(0)
    attn = MultiHeadAttention(8, 2).eval()
    x = torch.randn(3, 5, 8)
    pad = torch.tensor([[True] * 5, [False, False, True, True, True], [False] * 5])
    _, weights = attn(x, x, x, key_padding_mask=pad, causal=True, need_weights=True)
    blocked = pad[:, None, None, :] | torch.ones(5, 5, dtype=torch.bool).triu(1)
    assert torch.all(weights[blocked.expand_as(weights)] == 0)
    assert torch.all(weights[0] == 0)  # a row with nothing to attend to has no weight at all
    sums = weights[1:].sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums))
    for need_weights in (True, False):
        out, _ = attn(x, x, x, key_padding_mask=pad, need_weights=need_weights)
        torch.testing.assert_close(out[0], attn.out_proj.bias.expand(5, 8))  # zero context -> bias only


def test_bfloat16_explicit_path_stays_close_to_float32():
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 7, 16)
    exact, _ = attn(x, x, x, causal=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = attn(x, x, x, causal=True)
    torch.testing.assert_close(low.float(), exact, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("need_weights", [False, True])
def test_cached_step_by_step_decoding_equals_full_computation(need_weights):
    torch.manual_seed(1)
    self_attn, cross_attn = MultiHeadAttention(12, 3).eval(), MultiHeadAttention(12, 3).eval()
    x, memory = torch.randn(2, 6, 12), torch.randn(2, 4, 12)
    memory_pad = torch.tensor([[False, False, True, True], [False] * 4])

    full_self, full_self_w = self_attn(x, x, x, causal=True, need_weights=True)
    full_cross, full_cross_w = cross_attn(x, memory, memory, key_padding_mask=memory_pad, need_weights=True)

    self_cache, cross_cache = KVCache(), KVCache(static=True)
    for step in range(6):
        token = x[:, step:step + 1]
        out, w = self_attn(token, token, token, causal=True, cache=self_cache, need_weights=need_weights)
        torch.testing.assert_close(out, full_self[:, step:step + 1], atol=1e-6, rtol=1e-5)
        if need_weights:
            torch.testing.assert_close(w[..., 0, :], full_self_w[..., step, :step + 1], atol=1e-6, rtol=1e-5)
        out, _ = cross_attn(token, memory, memory, key_padding_mask=memory_pad, cache=cross_cache)
        torch.testing.assert_close(out, full_cross[:, step:step + 1], atol=1e-6, rtol=1e-5)
    assert self_cache.key.shape == (2, 3, 6, 4)
    assert cross_cache.key.shape == (2, 3, 4, 4)  # projected once, not grown


def test_cache_reorder_selects_batch_rows():
    cache = KVCache(key=torch.arange(3.0).view(3, 1, 1, 1), value=torch.arange(3.0).view(3, 1, 1, 1))
    cache.reorder(torch.tensor([2, 2, 0]))
    assert cache.key.flatten().tolist() == [2.0, 2.0, 0.0]


def test_reorder_then_append_equals_gathering_then_concatenating():
    torch.manual_seed(3)
    steps = [torch.randn(4, 2, 1, 3) for _ in range(4)]
    cache = KVCache()
    for step in steps[:3]:
        cache.append(step, -step)
    index = torch.tensor([3, 0, 0])  # fewer rows, one twice
    expected = torch.cat(steps[:3], dim=2)[index]
    cache.reorder(index)
    assert torch.equal(cache.key, expected) and torch.equal(cache.value, -expected)
    cache.append(steps[3][:3], -steps[3][:3])
    expected = torch.cat([expected, steps[3][:3]], dim=2)
    assert torch.equal(cache.key, expected) and torch.equal(cache.value, -expected)
    cache.reorder(torch.tensor([1, 2]))
    cache.reorder(torch.tensor([1]))  # twice before the next step
    assert torch.equal(cache.key, expected[[2]])


@pytest.mark.parametrize("need_weights", [False, True])
def test_queries_sharing_key_rows_equal_queries_with_their_own_copies(need_weights):
    torch.manual_seed(4)
    attn = MultiHeadAttention(12, 3).eval()
    group, memory = 3, torch.randn(2, 5, 12)
    memory_pad = torch.tensor([[False, False, False, True, True], [False] * 5])
    query = torch.randn(2 * group, 2, 12)  # rows 0-2 read memory row 0, rows 3-5 row 1
    copied, copied_w = attn(query, memory.repeat_interleave(group, 0), memory.repeat_interleave(group, 0),
                            key_padding_mask=memory_pad.repeat_interleave(group, 0), need_weights=True)
    cache = KVCache(static=True)
    for _ in range(2):  # projecting the memory, then from the cache
        shared, shared_w = attn(query, memory, memory, key_padding_mask=memory_pad, cache=cache,
                                need_weights=need_weights)
        torch.testing.assert_close(shared, copied, atol=1e-6, rtol=1e-5)
        if need_weights:
            torch.testing.assert_close(shared_w, copied_w, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError):
        attn(query, memory, memory, causal=True)
    with pytest.raises(ValueError):
        attn(query[:4], memory[:1].expand(3, -1, -1), memory[:1].expand(3, -1, -1))


@pytest.mark.parametrize("need_weights", [False, True])
def test_gradcheck_in_float64(need_weights):
    torch.manual_seed(2)
    attn = MultiHeadAttention(6, 2).double().eval()
    q = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    kv = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    pad = torch.tensor([[False, False, False, True], [False] * 4])
    assert torch.autograd.gradcheck(
        lambda a, b: attn(a, b, b, key_padding_mask=pad, need_weights=need_weights)[0], (q, kv))
