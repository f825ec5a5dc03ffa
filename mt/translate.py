"""The translate job: lines in, translations out (in input order), with n-best lists, scores against a reference,
and the attention behind each translation as word alignments, raw matrices and TensorBoard heatmaps."""

from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TextIO

import numpy as np
import torch

from mt import align
from mt.checkpoint import load_checkpoint
from mt.data import TokenBatches, pad_rows
from mt.evaluate import score
from mt.files import InputError, read_lines
from mt.hardware import autocast_for, select_device, select_precision
from mt.model import ModelConfig, Transformer
from mt.search import Hypothesis, beam_search, greedy_search, length_penalty, score_outputs
from mt.tokenizer import EOS_ID, Tokenizer

log = logging.getLogger(__name__)


@dataclass
class TranslateConfig:
    checkpoint: str = "???"
    input: str = "-"  # a file, or - for stdin
    output: str = "-"  # a file, or - for stdout
    beam_size: int = 5  # 1 is greedy search (as training's evaluation decodes)
    nbest: int = 1  # above 1, output lines are `i ||| translation ||| score`, best first
    length_penalty: float = 0.6  # GNMT alpha: scores are log-probabilities / ((5 + length) / 6) ** alpha
    max_len_a: float = 1.5  # at most a * source length + b output tokens
    max_len_b: int = 10
    batch_tokens: int = 4000  # source tokens per batch (sorted by length, written in input order); x beam_size rows
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    use_cache: bool = True  # the decoder's key/value cache (off only to measure what it saves)
    reference: Optional[str] = None  # print sacrebleu BLEU and chrF against this file to stderr
    alignments: Optional[str] = None  # Pharaoh `i-j` word links (source-target), one line per input line
    attention_dump: Optional[str] = None  # JSON lines: subword tokens and the raw attention matrix per sentence
    tensorboard: Optional[str] = None  # a log dir with heatmaps of the first tensorboard_sentences sentences
    tensorboard_sentences: int = 10
    align_layer: int = -2  # decoder layer whose cross-attention aligns (negative counts from the top)
    align_head: Optional[int] = None  # one head, or null for the mean of all heads


@dataclass
class Translation:
    hypotheses: list[Hypothesis]
    src_pieces: list[str]
    tgt_pieces: list[str] = None  # of the best hypothesis, EOS excluded
    attention: Optional[torch.Tensor] = None  # (layers, heads, target pieces + EOS, source pieces + EOS)


def load_translator(path: str, device: torch.device) -> tuple[Transformer, Tokenizer]:
    """The model and tokenizer of a checkpoint (it carries both)."""
    content = load_checkpoint(path, device)
    try:
        model = Transformer(ModelConfig(**content["model_config"]))
        model.load_state_dict(content["model"])
        tokenizer = Tokenizer(content["spm_model"])
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise InputError(f"{path}: does not hold a model this toolkit can build ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), tokenizer


class Translator:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, cfg: TranslateConfig, device: torch.device):
        self.model, self.tokenizer, self.cfg, self.device = model, tokenizer, cfg, device
        self.autocast = autocast_for(select_precision(cfg.precision, device), device)
        self.needs_attention = bool(cfg.alignments or cfg.attention_dump or cfg.tensorboard)
        layers = model.cfg.decoder_layers
        if self.needs_attention and not -layers <= cfg.align_layer < layers:
            raise InputError(f"align_layer={cfg.align_layer}: the model has {layers} decoder layers")
        if self.needs_attention and cfg.align_head is not None and not 0 <= cfg.align_head < model.cfg.n_heads:
            raise InputError(f"align_head={cfg.align_head}: the model has {model.cfg.n_heads} heads")
        if not 1 <= cfg.nbest <= cfg.beam_size:
            raise InputError(f"nbest={cfg.nbest} must be between 1 and beam_size={cfg.beam_size}")

    def best(self, lines: list[str]) -> list[str]:
        """The best translation of each line, as text."""
        return self.tokenizer.decode([t.hypotheses[0].tokens for t in self.translate(lines)])

    def translate(self, lines: list[str], source_name: str = "input") -> list[Translation]:
        """One Translation per line, in order; an empty line gets an empty translation."""
        ids = self.tokenizer.encode(lines)
        limit = self.model.cfg.max_positions - 1  # room for EOS
        too_long = [i for i, row in enumerate(ids) if len(row) > limit]
        if too_long:
            log.warning("%s: %d line(s) longer than %d subwords were translated from their first %d (first: line %d)",
                        source_name, len(too_long), limit, limit, too_long[0] + 1)
        ids = [row[:limit] for row in ids]
        results = [Translation([Hypothesis([], 0.0, 0.0)], []) for _ in lines]
        todo = [i for i, line in enumerate(lines) if line.strip()]
        lengths = np.array([len(ids[i]) + 1 for i in todo], dtype=np.int64)
        for batch in TokenBatches(lengths, lengths, self.cfg.batch_tokens, shuffle=False).epoch(0):
            rows = [todo[b] for b in batch]
            self._translate_batch(rows, [ids[i] for i in rows], results)
        return results

    @torch.no_grad()
    def _translate_batch(self, rows: list[int], ids: list[list[int]], results: list[Translation]) -> None:
        src = pad_rows(ids, [], [EOS_ID]).to(self.device)
        c = self.cfg
        with self.autocast():
            if c.beam_size == 1:
                greedy = greedy_search(self.model, src, c.max_len_a, c.max_len_b)
                nbests = [[Hypothesis(t, lp, lp / length_penalty(len(t) + 1, c.length_penalty))]
                          for t, lp in zip(greedy.tokens, greedy.scores)]
            else:
                nbests = beam_search(self.model, src, c.beam_size, c.nbest, c.length_penalty, c.max_len_a,
                                     c.max_len_b, c.use_cache)
            attention = score_outputs(self.model, src, [h[0].tokens for h in nbests], need_attention=True).attention \
                if self.needs_attention else [None] * len(rows)
        for row, source_ids, hyps, weights in zip(rows, ids, nbests, attention):
            results[row] = Translation(hyps, self.tokenizer.pieces(source_ids + [EOS_ID]),
                                       self.tokenizer.pieces(hyps[0].tokens), weights)


def _read_input(name: str) -> list[str]:
    if name == "-":
        lines = []
        for number, raw in enumerate(sys.stdin.buffer, start=1):
            try:
                lines.append(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError as e:
                raise InputError(f"<stdin>:{number}: not UTF-8 (byte {e.start}); convert the input to UTF-8") from None
        return lines
    return list(read_lines(name))


def _check_outputs(cfg: TranslateConfig) -> None:
    if cfg.input == "-":
        return
    source = Path(cfg.input).resolve()
    for key in ("output", "alignments", "attention_dump"):
        target = getattr(cfg, key)
        if target and target != "-" and Path(target).resolve() == source:
            raise InputError(f"{key}={target} would overwrite the input {cfg.input}; choose another file")


def _open(stack: ExitStack, name: Optional[str]) -> Optional[TextIO]:
    if name is None:
        return None
    if name == "-":
        return sys.stdout
    Path(name).parent.mkdir(parents=True, exist_ok=True)
    return stack.enter_context(open(name, "w", encoding="utf-8"))


def write_results(cfg: TranslateConfig, translator: Translator, translations: list[Translation]) -> list[str]:
    """Write every requested output; return the best translation of each line."""
    best = translator.tokenizer.decode([t.hypotheses[0].tokens for t in translations])
    layer, head = cfg.align_layer, cfg.align_head
    with ExitStack() as stack:
        out, links, dump = (_open(stack, name) for name in (cfg.output, cfg.alignments, cfg.attention_dump))
        for i, (translation, text) in enumerate(zip(translations, best)):
            if cfg.nbest > 1:
                texts = translator.tokenizer.decode([h.tokens for h in translation.hypotheses])
                for hyp, hyp_text in zip(translation.hypotheses, texts):
                    out.write(f"{i} ||| {hyp_text} ||| {hyp.score:.4f}\n")
            else:
                out.write(text + "\n")
            weights = None
            if translation.attention is not None:
                weights = align.select_heads(translation.attention, layer, head)
            if links:
                word_links = [] if weights is None else align.hard_links(
                    align.merge_to_words(weights, translation.src_pieces[:-1], translation.tgt_pieces))
                links.write(align.to_pharaoh(word_links) + "\n")
            if dump:
                dump.write(json.dumps({
                    "line": i, "layer": layer, "head": head,
                    "source_tokens": translation.src_pieces, "target_tokens": (translation.tgt_pieces or []) + ["</s>"],
                    "attention": [] if weights is None else [[round(w, 5) for w in row] for row in weights.tolist()],
                }, ensure_ascii=False) + "\n")
            out.flush()
    return best


def write_heatmaps(cfg: TranslateConfig, translations: list[Translation]) -> None:
    from torch.utils.tensorboard import SummaryWriter  # only when asked for: it is slow to import

    from mt.heatmap import attention_figure

    with SummaryWriter(cfg.tensorboard) as writer:
        shown = [(i, t) for i, t in enumerate(translations) if t.attention is not None][:cfg.tensorboard_sentences]
        for i, t in shown:
            panels = [align.select_heads(t.attention, layer, cfg.align_head) for layer in range(t.attention.size(0))]
            fig = attention_figure(panels, t.src_pieces, t.tgt_pieces + ["</s>"], title=f"line {i}")
            writer.add_figure(f"attention/line_{i}", fig, 0)


def run(cfg: TranslateConfig) -> None:
    _check_outputs(cfg)
    device = select_device(cfg.device)
    model, tokenizer = load_translator(cfg.checkpoint, device)
    translator = Translator(model, tokenizer, cfg, device)
    lines = _read_input(cfg.input)
    references = list(read_lines(cfg.reference)) if cfg.reference else None
    if references is not None and len(references) != len(lines):
        raise InputError(f"{cfg.reference} has {len(references)} lines but {cfg.input} has {len(lines)}")
    translations = translator.translate(lines, "<stdin>" if cfg.input == "-" else cfg.input)
    best = write_results(cfg, translator, translations)
    if cfg.tensorboard:
        write_heatmaps(cfg, translations)
    if references is not None:
        print(f"{os.path.basename(cfg.reference)}: {score(best, references)}", file=sys.stderr)
