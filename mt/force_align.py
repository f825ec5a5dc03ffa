"""Forced alignment: the cross-attention of given target sentences (teacher-forced) turned into word links.

translate.py aligns its own output through this too, so aligning (input, output) here gives its links exactly.
"""

from __future__ import annotations

import logging
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from mt import align
from mt.data import TokenBatches, pad_rows
from mt.files import InputError, read_lines
from mt.hardware import autocast_for, select_device, select_precision
from mt.model import Transformer
from mt.search import score_outputs
from mt.tokenizer import EOS_ID, Tokenizer

log = logging.getLogger(__name__)


@dataclass
class AlignConfig:
    checkpoint: str = "???"  # a source -> target model
    source: str = "???"
    target: str = "???"
    output: str = "-"  # Pharaoh lines, one per pair; - for stdout
    direction: str = "forward"  # forward | reverse | both (reverse and both need reverse_checkpoint)
    reverse_checkpoint: Optional[str] = None  # a target -> source model
    symmetrize: str = "grow-diag-final"  # with direction=both: intersection | union | grow-diag-final
    layer: int = -2  # decoder layer whose cross-attention aligns (negative counts from the top)
    head: Optional[int] = None  # one head, or null for the mean of all heads
    rule: str = "argmax"  # argmax: each target word to its most attended source word | threshold
    threshold: float = 0.3  # rule=threshold: every word pair with at least this attention
    words: str = "whitespace"  # whitespace: words of line.split() | subwords: SentencePiece pieces
    batch_tokens: int = 4000
    device: str = "auto"
    precision: str = "auto"


@dataclass
class LinkSettings:
    layer: int = -2
    head: Optional[int] = None
    rule: str = "argmax"
    threshold: float = 0.3
    words: str = "whitespace"


class ForcedAligner:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, settings: LinkSettings, batch_tokens: int,
                 device: torch.device, precision: str = "fp32"):
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.batch_tokens, self.device = batch_tokens, device
        self.autocast = autocast_for(select_precision(precision, device), device)
        layers, heads = model.cfg.decoder_layers, model.cfg.n_heads
        if not -layers <= settings.layer < layers:
            raise InputError(f"decoder layer {settings.layer} does not exist: the model has {layers} decoder layers")
        if settings.head is not None and not 0 <= settings.head < heads:
            raise InputError(f"attention head {settings.head} does not exist: the model has {heads} heads")
        if settings.rule not in ("argmax", "threshold") or settings.words not in ("whitespace", "subwords"):
            raise InputError(f"rule={settings.rule}, words={settings.words}: choose rule argmax|threshold and "
                             "words whitespace|subwords")

    def attention(self, sources: list[str], targets: list[str]) -> list[Optional[tuple]]:
        """Per pair: (source pieces, target pieces, attention (layers, heads, target + EOS, source + EOS)), or
        None where either side is empty."""
        limit = self.model.cfg.max_positions - 1
        src_ids = [ids[:limit] for ids in self.tokenizer.encode(sources)]
        tgt_ids = [ids[:limit] for ids in self.tokenizer.encode(targets)]
        results: list[Optional[tuple]] = [None] * len(sources)
        todo = [i for i in range(len(sources)) if src_ids[i] and tgt_ids[i]]
        src_len = np.array([len(src_ids[i]) + 1 for i in todo], dtype=np.int64)
        tgt_len = np.array([len(tgt_ids[i]) + 1 for i in todo], dtype=np.int64)
        for batch in TokenBatches(src_len, tgt_len, self.batch_tokens, shuffle=False).epoch(0):
            rows = [todo[b] for b in batch]
            src = pad_rows([src_ids[i] for i in rows], [], [EOS_ID]).to(self.device)
            with torch.no_grad(), self.autocast():
                weights = score_outputs(self.model, src, [tgt_ids[i] for i in rows], need_attention=True).attention
            for row, w in zip(rows, weights):
                results[row] = (self.tokenizer.pieces(src_ids[row]), self.tokenizer.pieces(tgt_ids[row]), w)
        return results

    def links(self, sources: list[str], targets: list[str]) -> list[set[align.Link]]:
        """Word links (source word, target word) of each pair."""
        return self.links_of(self.attention(sources, targets))

    def links_of(self, attention: list[Optional[tuple]]) -> list[set[align.Link]]:
        s = self.settings
        out = []
        for item in attention:
            if item is None:
                out.append(set())
                continue
            src_pieces, tgt_pieces, weights = item
            matrix = align.select_heads(weights, s.layer, s.head)
            if s.words == "whitespace":
                matrix = align.merge_to_words(matrix, src_pieces, tgt_pieces)
            else:  # pieces as they are, EOS dropped, rows renormalized
                matrix = matrix[:len(tgt_pieces), :len(src_pieces)].double()
                matrix = matrix / matrix.sum(dim=1, keepdim=True).clamp_min(1e-12)
            found = align.hard_links(matrix) if s.rule == "argmax" else align.threshold_links(matrix, s.threshold)
            out.append(set(found))
        return out


def _aligner(checkpoint: str, cfg: AlignConfig, device: torch.device) -> ForcedAligner:
    from mt.translate import load_translator  # the same loading as translate.py

    model, tokenizer = load_translator(checkpoint, device)
    settings = LinkSettings(cfg.layer, cfg.head, cfg.rule, cfg.threshold, cfg.words)
    return ForcedAligner(model, tokenizer, settings, cfg.batch_tokens, device, cfg.precision)


def run(cfg: AlignConfig) -> None:
    if cfg.direction not in ("forward", "reverse", "both"):
        raise InputError(f"direction={cfg.direction}: choose forward, reverse or both")
    if cfg.direction != "forward" and not cfg.reverse_checkpoint:
        raise InputError(f"direction={cfg.direction} needs reverse_checkpoint=CKPT (a target -> source model)")
    if cfg.symmetrize not in align.SYMMETRIZE:
        raise InputError(f"symmetrize={cfg.symmetrize}: choose {', '.join(align.SYMMETRIZE)}")
    sources, targets = list(read_lines(cfg.source)), list(read_lines(cfg.target))
    if len(sources) != len(targets):
        raise InputError(f"{cfg.source} has {len(sources)} lines but {cfg.target} has {len(targets)}")
    device = select_device(cfg.device)
    forward = reverse = None
    if cfg.direction in ("forward", "both"):
        forward = _aligner(cfg.checkpoint, cfg, device).links(sources, targets)
    if cfg.direction in ("reverse", "both"):
        flipped = _aligner(cfg.reverse_checkpoint, cfg, device).links(targets, sources)
        reverse = [{(i, j) for j, i in links} for links in flipped]
    if cfg.direction == "both":
        result = [align.SYMMETRIZE[cfg.symmetrize](f, r) for f, r in zip(forward, reverse)]
    else:
        result = forward if forward is not None else reverse
    with ExitStack() as stack:
        out = sys.stdout if cfg.output == "-" else stack.enter_context(open(cfg.output, "w", encoding="utf-8"))
        for links in result:
            out.write(align.to_pharaoh(links) + "\n")
