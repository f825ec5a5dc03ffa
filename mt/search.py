"""Decoding with the key/value cache: greedy search over a batch of sentences."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from mt.model import Transformer
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Hypotheses:
    tokens: list[list[int]]  # per sentence, without BOS/EOS
    scores: list[float]  # sum of the tokens' log-probabilities, EOS included
    # per sentence and decoder layer: (heads, output length incl. EOS, source length), when asked for
    attention: list[list[Tensor]] = field(default_factory=list)


def max_output_lengths(src: Tensor, a: float, b: int, limit: int) -> Tensor:
    """Per sentence, the most tokens to generate (EOS included): a * source length + b, within the model limit."""
    src_len = src.ne(PAD_ID).sum(dim=1)
    return (src_len.float() * a + b).floor().long().clamp(min=1, max=limit - 1)


@torch.no_grad()
def greedy_search(
    model: Transformer, src: Tensor, max_len_a: float = 1.5, max_len_b: int = 10, need_attention: bool = False
) -> Hypotheses:
    batch = src.size(0)
    max_len = max_output_lengths(src, max_len_a, max_len_b, model.cfg.max_positions)
    state = model.start_decoding(src)
    tokens = torch.full((batch, 1), BOS_ID, dtype=torch.long, device=src.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
    scores = torch.zeros(batch, device=src.device)
    outputs, attention = [], []
    for step in range(int(max_len.max())):
        out = model.decode_step(tokens, state, need_attention)
        log_probs = out.logits[:, -1].float().log_softmax(dim=-1)
        best = log_probs.argmax(dim=-1)
        best = torch.where(step + 1 >= max_len, torch.full_like(best, EOS_ID), best)  # out of room: end here
        best = best.masked_fill(finished, PAD_ID)
        scores += log_probs.gather(1, best[:, None]).squeeze(1).masked_fill(finished, 0.0)
        outputs.append(best)
        if need_attention:
            attention.append(torch.stack([w[:, :, -1] for w in out.cross_attention], dim=1))  # (B, L, H, S)
        finished |= best.eq(EOS_ID)
        if finished.all():
            break
        tokens = best[:, None]

    generated = torch.stack(outputs, dim=1).tolist()
    hyps = Hypotheses([_strip(row) for row in generated], scores.tolist())
    if need_attention:
        weights = torch.stack(attention, dim=3).float().cpu()  # (B, layers, H, T, S)
        src_len = src.ne(PAD_ID).sum(dim=1).tolist()
        for i, row in enumerate(hyps.tokens):
            steps = len(row) + 1  # EOS has its attention too
            hyps.attention.append(list(weights[i, :, :, :steps, :src_len[i]].unbind(0)))
    return hyps


def _strip(row: list[int]) -> list[int]:
    return row[:row.index(EOS_ID)] if EOS_ID in row else row
