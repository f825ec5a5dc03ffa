"""Decoding with the key/value cache: greedy and beam search over a batch of sentences, and teacher-forced
scoring of given outputs (their log-probabilities and cross-attention, for rescoring and alignments)."""

from __future__ import annotations

from dataclasses import dataclass

import math

import torch
from torch import Tensor

from mt.model import Transformer
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Hypotheses:
    tokens: list[list[int]]  # per sentence, without BOS/EOS
    scores: list[float]  # sum of the tokens' log-probabilities, EOS included


def max_output_lengths(src: Tensor, a: float, b: int, limit: int) -> Tensor:
    """Per sentence, the most tokens to generate (EOS included): a * source length + b, within the model limit."""
    src_len = src.ne(PAD_ID).sum(dim=1)
    return (src_len.float() * a + b).floor().long().clamp(min=1, max=limit - 1)


@torch.no_grad()
def greedy_search(model: Transformer, src: Tensor, max_len_a: float = 1.5, max_len_b: int = 10) -> Hypotheses:
    batch = src.size(0)
    max_len = max_output_lengths(src, max_len_a, max_len_b, model.cfg.max_positions)
    state = model.start_decoding(src)
    tokens = torch.full((batch, 1), BOS_ID, dtype=torch.long, device=src.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
    scores = torch.zeros(batch, device=src.device)
    outputs = []
    for step in range(int(max_len.max())):
        log_probs = _never_padding_or_bos(model.decode_step(tokens, state).logits[:, -1].float().log_softmax(dim=-1))
        best = log_probs.argmax(dim=-1)
        best = torch.where(step + 1 >= max_len, torch.full_like(best, EOS_ID), best)  # out of room: end here
        best = best.masked_fill(finished, PAD_ID)
        scores += log_probs.gather(1, best[:, None]).squeeze(1).masked_fill(finished, 0.0)
        outputs.append(best)
        finished |= best.eq(EOS_ID)
        if finished.all():
            break
        tokens = best[:, None]
    generated = torch.stack(outputs, dim=1).tolist()
    return Hypotheses([_strip(row) for row in generated], scores.tolist())


def _never_padding_or_bos(log_probs: Tensor) -> Tensor:
    """Outputs may not contain PAD or BOS; their probability is not spread over the rest, so scores stay the
    model's own log-probabilities."""
    log_probs[:, PAD_ID] = -math.inf
    log_probs[:, BOS_ID] = -math.inf
    return log_probs


def _strip(row: list[int]) -> list[int]:
    return row[:row.index(EOS_ID)] if EOS_ID in row else row


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS/EOS
    log_prob: float  # sum of the tokens' log-probabilities, EOS included
    score: float  # log_prob / length_penalty(len(tokens) + 1)


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's ((5 + length) / 6) ** alpha (Wu et al. 2016); alpha 0 ranks by total log-probability."""
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam_search(
    model: Transformer, src: Tensor, beam_size: int = 5, nbest: int = 1, alpha: float = 0.6,
    max_len_a: float = 1.5, max_len_b: int = 10, use_cache: bool = True,
) -> list[list[Hypothesis]]:
    """The `nbest` best hypotheses per sentence, best first.

    All sentences and beams of the batch decode together as rows of one tensor. A hypothesis is finished when
    it ends in EOS; a sentence stops once no open beam can still beat its nbest-th finished hypothesis, and its
    rows leave the batch. Pruned beams take their cache rows along (reordered, not recomputed).
    """
    if nbest > beam_size:
        raise ValueError(f"nbest={nbest} cannot exceed beam_size={beam_size}")
    batch, k = src.size(0), beam_size
    max_len = max_output_lengths(src, max_len_a, max_len_b, model.cfg.max_positions).tolist()
    state = model.start_decoding(src)
    state.reorder(torch.arange(batch, device=src.device).repeat_interleave(k))
    active = list(range(batch))  # sentence of each group of k rows
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    scores = torch.full((batch, k), -math.inf, device=src.device)
    scores[:, 0] = 0.0  # all beams start equal: expand only the first
    history = torch.full((batch * k, 1), BOS_ID, dtype=torch.long, device=src.device)

    for step in range(max(max_len)):
        if use_cache:
            logits = model.decode_step(history[:, -1:], state).logits[:, -1]
        else:
            logits = model.decode(history, state.memory, state.src_pad).logits[:, -1]
        log_probs = _never_padding_or_bos(logits.float().log_softmax(dim=-1)).view(len(active), k, -1)
        vocab = log_probs.size(-1)
        at_limit = torch.tensor([step + 1 >= max_len[s] for s in active], device=src.device)
        if at_limit.any():  # out of room: these sentences may only end
            eos_only = torch.full((vocab,), -math.inf, device=src.device)
            eos_only[EOS_ID] = 0.0
            log_probs[at_limit] += eos_only
        candidates = (scores[:, :, None] + log_probs).view(len(active), k * vocab)
        top_scores, top_ids = candidates.topk(2 * k, dim=1)  # k of them are not EOS, whatever happens
        top_beams, top_tokens = top_ids // vocab, top_ids % vocab
        is_eos = top_tokens.eq(EOS_ID)

        # Hypotheses that end here, if they rank among the k best candidates of their sentence.
        for row, rank in is_eos[:, :k].nonzero().tolist():
            if top_scores[row, rank] == -math.inf:
                continue
            tokens = history[row * k + top_beams[row, rank], 1:].tolist()
            log_prob = float(top_scores[row, rank])
            normalized = log_prob / length_penalty(len(tokens) + 1, alpha)
            finished[active[row]].append(Hypothesis(tokens, log_prob, normalized))

        # The k best candidates that go on.
        open_scores, picked = top_scores.masked_fill(is_eos, -math.inf).topk(k, dim=1)
        open_beams, open_tokens = top_beams.gather(1, picked), top_tokens.gather(1, picked)

        keep = [row for row, sentence in enumerate(active)
                if not at_limit[row] and not _is_decided(finished[sentence], float(open_scores[row, 0]), nbest, alpha,
                                                          step + 2, max_len[sentence])]
        if not keep:
            break
        keep_rows = torch.tensor(keep, device=src.device)
        rows = (keep_rows[:, None] * k + open_beams[keep_rows]).view(-1)
        state.reorder(rows)
        history = torch.cat([history.index_select(0, rows), open_tokens[keep_rows].view(-1, 1)], dim=1)
        scores = open_scores[keep_rows]
        active = [active[row] for row in keep]

    return [sorted(hyps, key=lambda h: -h.score)[:nbest] for hyps in finished]


def _is_decided(finished: list[Hypothesis], best_open: float, nbest: int, alpha: float, next_len: int,
                max_len: int) -> bool:
    """True when the nbest-th finished score beats anything the best open beam can still reach.

    An open beam's log-probability only falls as it grows; its normalized score is best at the shortest or the
    longest length it can still end at (which one depends on the sign of alpha).
    """
    if len(finished) < nbest or best_open == -math.inf:
        return len(finished) >= nbest
    threshold = sorted((h.score for h in finished), reverse=True)[nbest - 1]
    reachable = max(best_open / length_penalty(next_len, alpha), best_open / length_penalty(max_len, alpha))
    return threshold >= reachable


@dataclass
class Scored:
    log_probs: list[float]  # per output: sum of its tokens' log-probabilities, EOS included
    # per output: cross-attention (layers, heads, output length + 1 for EOS, source length incl. EOS)
    attention: list[Tensor]


@torch.no_grad()
def score_outputs(model: Transformer, src: Tensor, outputs: list[list[int]], need_attention: bool = False) -> Scored:
    """Teacher-forced pass over given outputs (token ids without BOS/EOS), one per source row."""
    longest = max(len(o) for o in outputs) + 1
    tgt_in = torch.full((len(outputs), longest), PAD_ID, dtype=torch.long, device=src.device)
    tgt_out = torch.full_like(tgt_in, PAD_ID)
    for i, output in enumerate(outputs):
        tgt_in[i, :len(output) + 1] = torch.tensor([BOS_ID] + output)
        tgt_out[i, :len(output) + 1] = torch.tensor(output + [EOS_ID])
    out = model(src, tgt_in, need_attention=need_attention)
    token_log_probs = out.logits.float().log_softmax(dim=-1).gather(-1, tgt_out[..., None]).squeeze(-1)
    log_probs = token_log_probs.masked_fill(tgt_out.eq(PAD_ID), 0.0).sum(dim=1).tolist()
    attention = []
    if need_attention:
        stacked = torch.stack(out.cross_attention, dim=1).float().cpu()  # (B, layers, heads, T, S)
        src_len = src.ne(PAD_ID).sum(dim=1).tolist()
        attention = [stacked[i, :, :, :len(o) + 1, :src_len[i]] for i, o in enumerate(outputs)]
    return Scored(log_probs, attention)
