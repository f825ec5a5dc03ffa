"""Word links of given sentence pairs from a model's cross-attention (forced decoding: the model reads the given
target, teacher-forced), in one direction or both, symmetrized.

scripts/align.py reads given pairs through this, and translate.py its own output, so aligning (input, output) with
scripts/align.py eflomal=off gives translate.py's links exactly (its default merges them with eflomal's:
mt/alignment/merged.py).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from enum import Enum
from typing import Optional

import torch
from torch import Tensor

from mt.alignment.links import (
    SYMMETRIZE,
    Link,
    Symmetrize,
    flipped,
    hard_links,
    last_word,
    mean_per_word,
    merge_to_words,
    renormalized,
    threshold_links,
)
from mt.data import decoding_batches, pad_sources
from mt.files import InputError
from mt.hardware import autocast_for, select_precision
from mt.schema import bounded
from mt.search import score_outputs
from mt.translator import AttentionSource, LoadedModel, encode_for_model, load_model


class Method(str, Enum):
    auto = "auto"  # the head the model was trained to align with, where it has one; else attention
    trained_head = "trained_head"
    attention = "attention"  # the layer, head and step below


class Rule(str, Enum):
    argmax = "argmax"  # each target word to its most attended source word
    threshold = "threshold"  # every word pair with at least `threshold` attention


class Words(str, Enum):
    whitespace = "whitespace"  # the words of line.split()
    subwords = "subwords"  # SentencePiece pieces


class Direction(str, Enum):
    forward = "forward"  # the checkpoint's own direction
    reverse = "reverse"  # reverse_checkpoint (a target -> source model), links flipped
    both = "both"  # both, symmetrized


@dataclass
class LinkSettings:
    """How word links are read from attention; scripts/align.py takes these as its keys, translate.py as align.*."""

    method: Method = Method.auto
    layer: int = -2  # method=attention: the decoder layer (negative counts from the top)
    head: Optional[int] = None  # method=attention: one head, or null for the mean of all heads
    # method=attention: read a target word's attention at the step where it is the decoder's input (shift-att,
    # Chen et al. 2020) instead of the step that outputs it; off by default, chosen on the gold dev half
    # (docs/alignment.md)
    shift: bool = False
    rule: Rule = Rule.argmax
    threshold: float = bounded(0.3, low=0)  # rule=threshold
    words: Words = Words.whitespace
    direction: Direction = Direction.forward
    reverse_checkpoint: Optional[str] = None  # direction=reverse|both: a target -> source model
    symmetrize: Symmetrize = Symmetrize["grow-diag-final"]  # direction=both


@dataclass
class PairAttention:
    src_pieces: list[str]
    tgt_pieces: list[str]
    matrix: Tensor  # the links' attention, one row per decoder step: (target pieces + 1, source pieces + EOS)
    layers: Optional[Tensor] = None  # every layer and head, when asked for: (layers, heads, T + 1, S + 1)


def attention_source(loaded: LoadedModel, settings: LinkSettings) -> AttentionSource:
    """Where `settings` read links in `loaded`: its trained head (method auto or trained_head), else the layer,
    head and step they name."""
    trained = loaded.alignment_head
    if settings.method == Method.trained_head and trained is None:
        raise InputError("method=trained_head, but this model was trained without an alignment head "
                         "(align.weight=0); use method=attention")
    if settings.method != Method.attention and trained is not None:
        return trained
    layers, heads = loaded.model.cfg.decoder_layers, loaded.model.cfg.n_heads
    if not -layers <= settings.layer < layers:
        raise InputError(f"decoder layer {settings.layer} does not exist: the model has {layers} decoder layers")
    if settings.head is not None and not 0 <= settings.head < heads:
        raise InputError(f"attention head {settings.head} does not exist: the model has {heads} heads")
    return AttentionSource(settings.layer % layers, settings.head, settings.shift)


class ForcedAligner:
    def __init__(self, loaded: LoadedModel, settings: LinkSettings, batch_tokens: int, device: torch.device,
                 precision: str = "auto"):
        self.model, self.tokenizer, self.settings = loaded.model, loaded.tokenizer, settings
        self.source = attention_source(loaded, settings)
        self.batch_tokens, self.device = batch_tokens, device
        self.autocast = autocast_for(select_precision(precision, device), device)

    def attention(self, sources: list[str], targets: list[str], all_layers: bool = False,
                  name: Optional[str] = None) -> list[Optional[PairAttention]]:
        """Per pair, its pieces and attention, or None where either side is empty. Sides longer than the model's
        positions are read from their first pieces (one warning, naming `name`, if given)."""
        src_ids = encode_for_model(self.tokenizer, sources, self.model, f"{name} (source)", warn=name is not None)
        tgt_ids = encode_for_model(self.tokenizer, targets, self.model, f"{name} (target)", warn=name is not None,
                                   target=True)
        results: list[Optional[PairAttention]] = [None] * len(sources)
        for rows in decoding_batches(src_ids, self.batch_tokens, tgt_ids):
            src = pad_sources([src_ids[i] for i in rows], self.tokenizer.special).to(self.device)
            with torch.no_grad(), self.autocast():
                scored = score_outputs(self.model, src, [tgt_ids[i] for i in rows], need_attention=True,
                                       full_context_layer=self.source.full_context_layer)
            full_context = scored.full_context_attention or [None] * len(rows)
            for row, layers, own_pass in zip(rows, scored.attention, full_context):
                results[row] = PairAttention(self.tokenizer.pieces(src_ids[row]), self.tokenizer.pieces(tgt_ids[row]),
                                             self.source.select(layers, own_pass), layers if all_layers else None)
        return results

    def links(self, sources: list[str], targets: list[str], name: Optional[str] = None) -> list[set[Link]]:
        """Word links (source word, target word) of each pair."""
        return [self.links_of(item) for item in self.attention(sources, targets, name=name)]

    def links_of(self, item: Optional[PairAttention]) -> set[Link]:
        if item is None:
            return set()
        matrix, on_end = self.weights(item)
        found = hard_links(matrix) if self.settings.rule == Rule.argmax else threshold_links(matrix,
                                                                                            self.settings.threshold)
        if on_end is not None:
            found = [(i, j) for i, j in found if on_end[j] <= 0.5]
        return set(found)

    def weights(self, item: PairAttention) -> tuple[Tensor, Optional[Tensor]]:
        """The links' attention as (target units, source units) in float64, each row summing to 1 (units: words
        or pieces, as settings.words says) and, where the source has a null (a trained head's), each target
        unit's weight on the source's end."""
        steps = item.matrix[1:] if self.source.shift else item.matrix[:-1]  # one row per target piece
        whitespace = self.settings.words == Words.whitespace
        if whitespace:
            matrix = merge_to_words(steps, item.src_pieces, item.tgt_pieces)
            matrix = final_punctuation(matrix, item.src_pieces, item.tgt_pieces)
        else:
            matrix = renormalized(steps[:, :len(item.src_pieces)])
        if not self.source.null:
            return matrix, None
        on_end = steps[:, len(item.src_pieces)].double()  # per target piece: its weight on the source's end
        return matrix, mean_per_word(on_end, item.tgt_pieces) if whitespace else on_end


def _is_punctuation(word: str) -> bool:
    return bool(word) and all(unicodedata.category(c).startswith("P") for c in word)


def final_punctuation(words: Tensor, src_pieces: list[str], tgt_pieces: list[str]) -> Tensor:
    """Sentence-final punctuation links only to sentence-final punctuation (Chen et al. 2020): attention parks on
    the source's final mark, so no other word may link there; a target that ends in a mark links it there."""
    if words.numel() == 0:
        return words
    src_last = last_word(src_pieces)
    if not _is_punctuation(src_last):
        return words
    words = words.clone()
    words[:, -1] = 0.0
    if _is_punctuation(last_word(tgt_pieces)):
        words[-1] = 0.0
        words[-1, -1] = 1.0
    return words


def reverse_aligner(settings: LinkSettings, batch_tokens: int, device: torch.device,
                    precision: str = "auto") -> Optional[ForcedAligner]:
    """The aligner of settings.reverse_checkpoint (a target -> source model) where the direction needs one."""
    if settings.direction == Direction.forward:
        return None
    if not settings.reverse_checkpoint:
        raise InputError(f"direction={settings.direction.value} needs reverse_checkpoint=CKPT (a target -> source "
                         "model)")
    return ForcedAligner(load_model(settings.reverse_checkpoint, device), settings, batch_tokens, device, precision)


def directed_links(settings: LinkSettings, forward: Optional[list[set[Link]]], reverse: Optional[ForcedAligner],
                   sources: list[str], targets: list[str], target_name: Optional[str] = None) -> list[set[Link]]:
    """The links of settings.direction: `forward` (a forward aligner's links of the pairs, or None where the
    direction needs none), the reverse aligner's links of the turned pairs flipped back, or both symmetrized.
    `target_name` names the targets in the reverse aligner's warnings."""
    backward = flipped(reverse.links(targets, sources, target_name)) if reverse is not None else None
    if settings.direction == Direction.both:
        symmetrize = SYMMETRIZE[settings.symmetrize.value]
        return [symmetrize(f, r) for f, r in zip(forward, backward, strict=True)]
    return forward if settings.direction == Direction.forward else backward
