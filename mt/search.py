"""Decoding with the key/value cache: greedy and beam search over a batch of sentences, and teacher-forced
scoring of given outputs (their log-probabilities and cross-attention, for rescoring and alignments)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mt.model import Transformer


@dataclass
class Hypotheses:
    tokens: list[list[int]]  # per sentence, without BOS/EOS
    scores: list[float]  # sum of the tokens' log-probabilities, EOS included


def max_output_lengths(src: Tensor, a: float, b: int, limit: int, pad_id: int) -> Tensor:
    """Per sentence, the most tokens to generate (EOS included): a * source length + b, within the model limit."""
    src_len = src.ne(pad_id).sum(dim=1)
    return (src_len.float() * a + b).floor().long().clamp(min=1, max=limit - 1)


@torch.no_grad()
def greedy_search(model: Transformer, src: Tensor, max_len_a: float, max_len_b: int) -> Hypotheses:
    batch = src.size(0)
    cfg = model.cfg
    max_len = max_output_lengths(src, max_len_a, max_len_b, cfg.max_positions, cfg.pad_id)
    state = model.start_decoding(src)
    tokens = torch.full((batch, 1), cfg.bos_id, dtype=torch.long, device=src.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
    scores = torch.zeros(batch, device=src.device)
    outputs = []
    for step in range(int(max_len.max())):
        logits = model.decode_step(tokens, state).logits[:, -1]
        log_probs = _never_padding_or_bos(torch.log_softmax(logits, dim=-1, dtype=torch.float32), cfg)
        best = log_probs.argmax(dim=-1)
        best = torch.where(step + 1 >= max_len, torch.full_like(best, cfg.eos_id), best)  # out of room: end here
        best = best.masked_fill(finished, cfg.pad_id)
        scores += log_probs.gather(1, best[:, None]).squeeze(1).masked_fill(finished, 0.0)
        outputs.append(best)
        finished |= best.eq(cfg.eos_id)
        if finished.all():
            break
        tokens = best[:, None]
    generated = torch.stack(outputs, dim=1).tolist()
    return Hypotheses([_strip(row, cfg.eos_id) for row in generated], scores.tolist())


def _never_padding_or_bos(log_probs: Tensor, cfg) -> Tensor:
    """Outputs may not contain PAD or BOS; their probability is not spread over the rest, so scores stay the
    model's own log-probabilities."""
    log_probs[:, cfg.pad_id] = -math.inf
    log_probs[:, cfg.bos_id] = -math.inf
    return log_probs


def _strip(row: list[int], eos_id: int) -> list[int]:
    return row[:row.index(eos_id)] if eos_id in row else row


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS/EOS
    log_prob: float  # sum of the tokens' log-probabilities, EOS included
    score: float  # log_prob / length_penalty(len(tokens) + 1)


def length_penalty(length, alpha: float):
    """GNMT's ((5 + length) / 6) ** alpha (Wu et al. 2016); alpha 0 ranks by total log-probability. `length` is
    a number or a tensor of them."""
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam_search(
    model: Transformer, src: Tensor, beam_size: int, nbest: int, alpha: float, max_len_a: float, max_len_b: int,
    use_cache: bool = True,
) -> list[list[Hypothesis]]:
    """The `nbest` best hypotheses per sentence, best first.

    All sentences and beams of the batch decode together as rows of one tensor, the k beams of a sentence
    sharing its encoder memory. A hypothesis is finished when it ends in EOS; a sentence stops once no open
    beam can still beat its nbest-th finished hypothesis, and its rows leave the batch. Pruned beams take
    their cache rows along (reordered, not recomputed).
    """
    if nbest > beam_size:
        raise ValueError(f"nbest={nbest} cannot exceed beam_size={beam_size}")
    batch, k, device = src.size(0), beam_size, src.device
    cfg = model.cfg
    max_len = max_output_lengths(src, max_len_a, max_len_b, cfg.max_positions, cfg.pad_id)
    state = model.start_decoding(src)
    active = torch.arange(batch, device=device)  # the sentence of each group of rows
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]  # the nbest best so far, best first
    threshold = torch.full((batch,), -math.inf, dtype=torch.float64, device=device)  # the nbest-th's score
    scores = torch.zeros(batch, 1, device=device)  # per sentence and open beam: one at first (all k are equal)
    history = torch.full((batch, 1), cfg.bos_id, dtype=torch.long, device=device)

    for step in range(int(max_len.max())):
        if use_cache:
            logits = model.decode_step(history[:, -1:], state).logits[:, -1]
        else:
            logits = model.decode(history, state.memory, state.src_pad, last_position_only=True).logits[:, -1]
        sentences, beams = scores.shape
        at_limit = max_len[active] <= step + 1  # out of room: these sentences may only end

        # A sentence's k best candidates, and its k best that do not end, are among the k + 1 best tokens of
        # their own beam; of these, the 2k best hold k that do not end, whatever happens.
        width = min(k + 1, logits.size(-1))
        beam_log_probs, beam_tokens = _best_tokens(logits, width, at_limit.repeat_interleave(beams), cfg)
        candidates = (scores.view(-1, 1) + beam_log_probs).view(sentences, beams * width)
        top_scores, top_ids = candidates.topk(min(2 * k, beams * width), dim=1)
        top_beams, top_tokens = top_ids // width, beam_tokens.view(sentences, beams * width).gather(1, top_ids)
        is_eos = top_tokens.eq(cfg.eos_id)

        # Hypotheses that end here, if they rank among the k best candidates of their sentence.
        ends = is_eos[:, :k] & top_scores[:, :k].isfinite()
        if ends.any():
            row, rank = ends.nonzero(as_tuple=True)
            outputs = history.view(sentences, beams, -1)[row, top_beams[row, rank], 1:].tolist()
            penalty = length_penalty(step + 1, alpha)  # each output has `step` tokens, then EOS
            for sentence, tokens, log_prob in zip(active[row].tolist(), outputs, top_scores[row, rank].tolist()):
                finished[sentence].append(Hypothesis(tokens, log_prob, log_prob / penalty))
            for sentence in set(active[row].tolist()):
                finished[sentence] = sorted(finished[sentence], key=lambda h: -h.score)[:nbest]
                if len(finished[sentence]) == nbest:
                    threshold[sentence] = finished[sentence][-1].score

        # The k best candidates that go on, in sentences not yet decided (see _is_decided).
        open_scores, picked = top_scores.masked_fill(is_eos, -math.inf).topk(min(k, top_scores.size(1)), dim=1)
        open_beams, open_tokens = top_beams.gather(1, picked), top_tokens.gather(1, picked)
        decided = _is_decided(threshold[active], open_scores[:, 0], alpha, step + 2, max_len[active])
        going_on = (~at_limit & ~decided).nonzero().squeeze(1)
        if len(going_on) == 0:
            break
        rows = (going_on[:, None] * beams + open_beams[going_on]).view(-1)
        state.reorder(rows, going_on if len(going_on) < sentences else None)
        history = torch.cat([history.index_select(0, rows), open_tokens[going_on].view(-1, 1)], dim=1)
        scores = open_scores[going_on]
        active = active[going_on]

    return finished


def _best_tokens(logits: Tensor, width: int, ending: Tensor, cfg) -> tuple[Tensor, Tensor]:
    """Each row's `width` most likely next tokens, best first, with their log-probabilities in float32: never
    PAD or BOS, and on `ending` rows EOS alone."""
    # On CPU a few rows at a time, which stay in cache from log_softmax to topk: over the whole (rows, vocabulary)
    # matrix at once, these two took longer than the output layer that made it.
    rows = 64 if logits.device.type == "cpu" else len(logits)
    best = [_never_padding_or_bos(torch.log_softmax(block, dim=-1, dtype=torch.float32), cfg).topk(width, dim=1)
            for block in logits.split(rows)]
    log_probs, tokens = torch.cat([b.values for b in best]), torch.cat([b.indices for b in best])
    if ending.any():
        log_probs[ending] = -math.inf
        log_probs[ending, 0] = torch.log_softmax(logits[ending], dim=-1, dtype=torch.float32)[:, cfg.eos_id]
        tokens[ending, 0] = cfg.eos_id
    return log_probs, tokens


def _is_decided(threshold: Tensor, best_open: Tensor, alpha: float, next_len: int, max_len: Tensor) -> Tensor:
    """Per sentence, True when its nbest-th finished score (`threshold`, -inf while it has fewer) beats
    anything its best open beam can still reach.

    An open beam's log-probability only falls as it grows; its normalized score is best at the shortest or the
    longest length it can still end at (which one depends on the sign of alpha).
    """
    best_open = best_open.double()
    reachable = torch.maximum(best_open / length_penalty(next_len, alpha),
                              best_open / length_penalty(max_len.double(), alpha))
    return threshold.isfinite() & (best_open.eq(-math.inf) | (threshold >= reachable))


@dataclass
class Scored:
    log_probs: list[float]  # per output: sum of its tokens' log-probabilities, EOS included
    # per output: cross-attention (layers, heads, output length + 1 for EOS, source length incl. EOS)
    attention: list[Tensor]
    # per output, with full_context_layer: that layer's full-context cross-attention (heads, length + 1, source)
    full_context_attention: list[Tensor] = field(default_factory=list)


@torch.no_grad()
def score_outputs(model: Transformer, src: Tensor, outputs: list[list[int]], need_attention: bool = False,
                  full_context_layer: int | None = None) -> Scored:
    """Teacher-forced pass over given outputs (token ids without BOS/EOS), one per source row."""
    longest, cfg = max(len(o) for o in outputs) + 1, model.cfg
    tgt_in = torch.full((len(outputs), longest), cfg.pad_id, dtype=torch.long, device=src.device)
    tgt_out = torch.full_like(tgt_in, cfg.pad_id)
    for i, output in enumerate(outputs):
        tgt_in[i, :len(output) + 1] = torch.tensor([cfg.bos_id] + output)
        tgt_out[i, :len(output) + 1] = torch.tensor(output + [cfg.eos_id])
    out = model(src, tgt_in, need_attention=need_attention, full_context_layer=full_context_layer)
    token_log_probs = out.logits.float().log_softmax(dim=-1).gather(-1, tgt_out[..., None]).squeeze(-1)
    log_probs = token_log_probs.masked_fill(tgt_out.eq(cfg.pad_id), 0.0).sum(dim=1).tolist()
    src_len = src.ne(cfg.pad_id).sum(dim=1).tolist()
    attention, full_context = [], []
    if need_attention:
        stacked = torch.stack(out.cross_attention, dim=1).float().cpu()  # (B, layers, heads, T, S)
        attention = [stacked[i, :, :, :len(o) + 1, :src_len[i]] for i, o in enumerate(outputs)]
    if full_context_layer is not None:
        weights = out.full_context_attention.float().cpu()  # (B, heads, T, S)
        full_context = [weights[i, :, :len(o) + 1, :src_len[i]] for i, o in enumerate(outputs)]
    return Scored(log_probs, attention, full_context)
