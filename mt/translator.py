"""A trained model that translates lines in memory: loading it from a checkpoint, the search settings, and the
Translator that translate.py and training's evaluation both decode through."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from mt.alignment.links import select_heads
from mt.checkpoint import load_checkpoint
from mt.data import decoding_batches, pad_sources
from mt.files import InputError
from mt.hardware import autocast_for, select_precision
from mt.model import DecoderOutput, ModelConfig, Transformer
from mt.schema import bounded
from mt.search import Hypothesis, beam_search, greedy_search, length_penalty
from mt.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass
class SearchSettings:
    beam_size: int = bounded(5, low=1)  # 1 is greedy search (as training's evaluation decodes)
    nbest: int = bounded(1, low=1)  # above 1, output lines are `i ||| translation ||| score`, best first
    # GNMT alpha: scores are log-probabilities / ((5 + length) / 6) ** alpha; chosen on Multi30k dev, both ways
    length_penalty: float = bounded(1.5, low=0)
    max_len_a: float = bounded(1.5, low=0)  # at most a * source length + b output tokens
    max_len_b: int = bounded(10, low=0)
    # source tokens per batch (sorted by length, written in input order); x beam_size rows
    batch_tokens: int = bounded(4000, low=1)
    use_cache: bool = True  # the decoder's key/value cache (off only to measure what it saves)


@dataclass
class AttentionSource:
    """Where word links are read in a model's cross-attention: one layer, one head or the mean of all (None), at
    the step where a target word is the decoder's input (shift) or the one that outputs it. The head a model was
    trained to align with is one (training's align.* settings), kept in its checkpoint as `alignment_head`."""

    layer: int  # counted from 0
    head: Optional[int]
    shift: bool
    null: bool = False  # a trained head attends to the source's end (EOS) for target words without a link
    full_context: bool = False  # a trained head read from its layer's second pass over the whole target

    @property
    def full_context_layer(self) -> Optional[int]:
        """The layer whose full-context pass must run (Transformer.decode), if any."""
        return self.layer if self.full_context else None

    def pass_arguments(self) -> dict:
        """What Transformer.forward needs to compute this (trained) head's weights."""
        return {"full_context_layer": self.layer} if self.full_context else {"attention_layer": self.layer}

    def weights(self, out: DecoderOutput) -> Tensor:
        """This (trained) head's weights (B, T, S) in the output of a pass run with pass_arguments()."""
        layer = out.full_context_attention if self.full_context else out.cross_attention[0]
        return layer[:, self.head]

    def select(self, layers: Tensor, full_context: Optional[Tensor] = None) -> Tensor:
        """(layers, heads, T, S), or a full-context head's own pass (heads, T, S) -> (T, S)."""
        if self.full_context:
            return full_context[self.head]
        return select_heads(layers, self.layer, self.head)


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Tokenizer
    alignment_head: Optional[AttentionSource]  # the trained head
    # what else the checkpoint says of the model: its run's configuration, dev scores, step (where it has them)
    about: dict = dataclasses.field(default_factory=dict)


def load_model(path: str, device: torch.device) -> LoadedModel:
    """The model, tokenizer and alignment head of a checkpoint (it carries all three)."""
    content = load_checkpoint(path, device)
    try:
        model = Transformer(ModelConfig(**content["model_config"]))
        model.load_state_dict(content["model"])
        tokenizer = Tokenizer.from_checkpoint(content)
        head = content.get("alignment_head")
        alignment_head = AttentionSource(**head) if head else None
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise InputError(f"{path}: does not hold a model this toolkit can build ({str(e).splitlines()[0]})") from None
    about = {key: content[key] for key in ("config", "dev", "step", "weights") if key in content}
    return LoadedModel(model.to(device).eval(), tokenizer, alignment_head, about)


def encode_for_model(tokenizer: Tokenizer, lines: list[str], model: Transformer, name: str = "input",
                     warn: bool = True, target: bool = False) -> list[list[int]]:
    """Subword ids of each line, cut to the model's positions (room left for EOS); one warning counts the cut
    lines."""
    ids = tokenizer.encode_target(lines) if target else tokenizer.encode(lines)
    limit = model.cfg.max_positions - 1
    too_long = [i for i, row in enumerate(ids) if len(row) > limit]
    if too_long and warn:
        log.warning("%s: %d line(s) longer than %d subwords were read from their first %d (first: line %d)",
                    name, len(too_long), limit, limit, too_long[0] + 1)
    return [row[:limit] for row in ids]


class Translator:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, settings: SearchSettings, device: torch.device,
                 precision: str = "auto"):
        self.model, self.tokenizer, self.settings, self.device = model, tokenizer, settings, device
        self.autocast = autocast_for(select_precision(precision, device), device)
        if not 1 <= settings.nbest <= settings.beam_size:
            raise InputError(f"nbest={settings.nbest} must be between 1 and beam_size={settings.beam_size}")

    def best(self, lines: list[str]) -> list[str]:
        """The best translation of each line, as text."""
        return self.tokenizer.decode([hyps[0].tokens for hyps in self.translate(lines)])

    def translate(self, lines: list[str], source_name: str = "input") -> list[list[Hypothesis]]:
        """The n-best hypotheses of each line (best first), in input order; an empty line gets one empty one."""
        ids = encode_for_model(self.tokenizer, lines, self.model, source_name)
        results = [[Hypothesis([], 0.0, 0.0)] for _ in lines]
        for rows in decoding_batches(ids, self.settings.batch_tokens):
            for row, hyps in zip(rows, self._translate_batch([ids[i] for i in rows])):
                results[row] = hyps
        return results

    @torch.no_grad()
    def _translate_batch(self, ids: list[list[int]]) -> list[list[Hypothesis]]:
        src = pad_sources(ids, self.tokenizer.special).to(self.device)
        s = self.settings
        with self.autocast():
            if s.beam_size > 1:
                return beam_search(self.model, src, s.beam_size, s.nbest, s.length_penalty, s.max_len_a, s.max_len_b,
                                   s.use_cache)
            greedy = greedy_search(self.model, src, s.max_len_a, s.max_len_b)
        return [[Hypothesis(t, lp, lp / length_penalty(len(t) + 1, s.length_penalty))]
                for t, lp in zip(greedy.tokens, greedy.scores)]
