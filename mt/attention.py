"""Multi-head scaled dot-product attention: softmax(Q K^T / sqrt(d_k)) V.

Two paths compute the same function:
- the explicit path forms the weights, so they can be returned (alignments, heatmaps);
- the fused path calls torch's scaled_dot_product_attention, used whenever weights are not asked for.
Masks are boolean with True meaning "may not attend".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mt.dropout import dropout as apply_dropout


@dataclass
class KVCache:
    """Projected keys and values kept between decoding steps.

    Self-attention appends the new step's key/value; cross-attention (`static=True`) projects the
    encoder memory once on the first step and reuses it.
    """

    static: bool = False
    key: Tensor | None = None  # (batch, heads, length, head_dim)
    value: Tensor | None = None

    def append(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Self-attention: add this step's keys/values (batch, heads, new steps, head_dim); returns all so far."""
        if self.key is not None:
            key, value = torch.cat([self.key, key], dim=2), torch.cat([self.value, value], dim=2)
        self.key, self.value = key, value
        return key, value

    def reorder(self, index: Tensor) -> None:
        """Keep only the batch rows in `index`, in that order (beam search pruning)."""
        if self.key is not None:
            self.key = self.key.index_select(0, index)
            self.value = self.value.index_select(0, index)


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)

    def _keys_values(self, key: Tensor, value: Tensor, cache: KVCache | None) -> tuple[Tensor, Tensor]:
        if cache is not None and cache.static and cache.key is not None:
            return cache.key, cache.value
        k = self._split_heads(self.k_proj(key))
        v = self._split_heads(self.v_proj(value))
        if cache is not None and cache.static:  # contiguous once, not copied again by each step's matmul
            k, v = k.contiguous(), v.contiguous()
            cache.key, cache.value = k, v
        elif cache is not None:
            k, v = cache.append(k, v)
        return k, v

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """query (B, T, D), key/value (B, S, D), key_padding_mask (B, S) True at padding.

        With `causal`, query i (counted after any cached steps) sees keys 0..i only.
        Key/value (and the mask) may instead have B / g rows, each shared by g consecutive query rows (the
        beams of one sentence in beam search): each group's queries then attend together as g * T queries.
        Returns the output (B, T, D) and, if `need_weights`, the weights (B, H, T, S_total).
        """
        batch, length, _ = query.shape
        q = self._split_heads(self.q_proj(query))
        k, v = self._keys_values(key, value, cache)
        group = batch // k.size(0)
        if group * k.size(0) != batch or (group > 1 and causal):
            raise ValueError(f"{batch} query rows cannot share {k.size(0)} key rows" + " causally" * causal)
        if group > 1:  # (B, H, T, hd) -> (B / g, H, g * T, hd)
            q = q.unflatten(0, (-1, group)).transpose(1, 2).flatten(2, 3)
        mask = _blocked_positions(key_padding_mask, causal, q.size(2), k.size(2), q.device)
        dropout = self.dropout if self.training else 0.0

        if need_weights or not _fused_is_faster(q):
            out, weights = _attention_with_weights(q, k, v, mask, dropout)
        else:
            # A single cached query may see every key, so the causal mask is only needed when T > 1;
            # without padding it is the kernel's own is_causal, which lets it pick its fastest path.
            fused_causal = causal and key_padding_mask is None and q.size(2) == k.size(2) > 1
            out = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=None if (mask is None or fused_causal) else ~mask,
                dropout_p=dropout,
                is_causal=fused_causal,
            )
            weights = None
        if need_weights and group > 1:
            weights = weights.unflatten(2, (group, length)).transpose(1, 2).flatten(0, 1)
        weights = weights if need_weights else None
        # (B / g, H, g * T, hd) -> (B, T, H * hd)
        out = out.unflatten(2, (group, length)).permute(0, 2, 3, 1, 4).reshape(batch, length, -1)
        return self.out_proj(out), weights


def _fused_is_faster(q: Tensor) -> bool:
    # The fused CPU kernel is slower than the explicit path in bfloat16, not in float32 (docs/benchmark.md);
    # on CUDA the fused kernels win.
    return not (q.device.type == "cpu" and q.dtype == torch.bfloat16)


def _blocked_positions(
    key_padding_mask: Tensor | None, causal: bool, q_len: int, k_len: int, device: torch.device
) -> Tensor | None:
    """Boolean (B or 1, 1, T, S) mask, True where attention is not allowed, or None if nothing is."""
    mask = None
    if key_padding_mask is not None:
        mask = key_padding_mask[:, None, None, :]
    if causal and q_len > 1:
        offset = k_len - q_len  # keys already in the cache come before the first query
        future = torch.ones(q_len, k_len, dtype=torch.bool, device=device).triu(offset + 1)
        mask = future[None, None] if mask is None else mask | future
    return mask


def _attention_with_weights(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout: float
) -> tuple[Tensor, Tensor]:
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        # A finite fill keeps a row with no allowed key from producing NaN; the multiply makes
        # every blocked weight exactly zero, so such a row outputs zeros (as the fused kernel does).
        scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)
    if mask is not None:
        weights = weights.masked_fill(mask, 0.0)
    out = apply_dropout(weights, dropout) @ v if dropout else weights @ v
    return out, weights
