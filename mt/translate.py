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
from mt.force_align import ForcedAligner, LinkSettings
from mt.search import Hypothesis, beam_search, greedy_search, length_penalty
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
        if not 1 <= cfg.nbest <= cfg.beam_size:
            raise InputError(f"nbest={cfg.nbest} must be between 1 and beam_size={cfg.beam_size}")

    def best(self, lines: list[str]) -> list[str]:
        """The best translation of each line, as text."""
        return self.tokenizer.decode([hyps[0].tokens for hyps in self.translate(lines)])

    def translate(self, lines: list[str], source_name: str = "input") -> list[list[Hypothesis]]:
        """The n-best hypotheses of each line (best first), in input order; an empty line gets one empty one."""
        ids = self.tokenizer.encode(lines)
        limit = self.model.cfg.max_positions - 1  # room for EOS
        too_long = [i for i, row in enumerate(ids) if len(row) > limit]
        if too_long:
            log.warning("%s: %d line(s) longer than %d subwords were translated from their first %d (first: line %d)",
                        source_name, len(too_long), limit, limit, too_long[0] + 1)
        ids = [row[:limit] for row in ids]
        results = [[Hypothesis([], 0.0, 0.0)] for _ in lines]
        todo = [i for i, line in enumerate(lines) if line.strip()]
        lengths = np.array([len(ids[i]) + 1 for i in todo], dtype=np.int64)
        for batch in TokenBatches(lengths, lengths, self.cfg.batch_tokens, shuffle=False).epoch(0):
            rows = [todo[b] for b in batch]
            self._translate_batch(rows, [ids[i] for i in rows], results)
        return results

    @torch.no_grad()
    def _translate_batch(self, rows: list[int], ids: list[list[int]], results: list[list[Hypothesis]]) -> None:
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
        for row, hyps in zip(rows, nbests):
            results[row] = hyps


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


def write_results(cfg: TranslateConfig, tokenizer: Tokenizer, translations: list[list[Hypothesis]], best: list[str],
                  attention: Optional[list], links: Optional[list]) -> None:
    """Write the translations (or n-best lists), and the alignments and attention dump if asked for."""
    with ExitStack() as stack:
        out, links_out, dump = (_open(stack, name) for name in (cfg.output, cfg.alignments, cfg.attention_dump))
        for i, (hypotheses, text) in enumerate(zip(translations, best)):
            if cfg.nbest > 1:
                texts = tokenizer.decode([h.tokens for h in hypotheses])
                for hyp, hyp_text in zip(hypotheses, texts):
                    out.write(f"{i} ||| {hyp_text} ||| {hyp.score:.4f}\n")
            else:
                out.write(text + "\n")
            if links_out:
                links_out.write(align.to_pharaoh(links[i]) + "\n")
            if dump:
                src_pieces, tgt_pieces, weights = attention[i] or ([], [], None)
                matrix = [] if weights is None else align.select_heads(weights, cfg.align_layer, cfg.align_head)
                dump.write(json.dumps({
                    "line": i, "layer": cfg.align_layer, "head": cfg.align_head,
                    "source_tokens": src_pieces + ["</s>"] if src_pieces else [],
                    "target_tokens": tgt_pieces + ["</s>"] if tgt_pieces else [],
                    "attention": [[round(w, 5) for w in row] for row in matrix.tolist()] if src_pieces else [],
                }, ensure_ascii=False) + "\n")
            out.flush()


def write_heatmaps(cfg: TranslateConfig, attention: list) -> None:
    from torch.utils.tensorboard import SummaryWriter  # only when asked for: it is slow to import

    from mt.heatmap import attention_figure

    with SummaryWriter(cfg.tensorboard) as writer:
        shown = [(i, item) for i, item in enumerate(attention) if item is not None][:cfg.tensorboard_sentences]
        for i, (src_pieces, tgt_pieces, weights) in shown:
            panels = [align.select_heads(weights, layer, cfg.align_head) for layer in range(weights.size(0))]
            fig = attention_figure(panels, src_pieces + ["</s>"], tgt_pieces + ["</s>"], title=f"line {i}")
            writer.add_figure(f"attention/line_{i}", fig, 0)


def run(cfg: TranslateConfig) -> None:
    _check_outputs(cfg)
    device = select_device(cfg.device)
    model, tokenizer = load_translator(cfg.checkpoint, device)
    translator = Translator(model, tokenizer, cfg, device)
    lines = list(read_lines(cfg.input))
    references = list(read_lines(cfg.reference)) if cfg.reference else None
    if references is not None and len(references) != len(lines):
        raise InputError(f"{cfg.reference} has {len(references)} lines but {cfg.input} has {len(lines)}")
    translations = translator.translate(lines, "<stdin>" if cfg.input == "-" else cfg.input)
    best = tokenizer.decode([hyps[0].tokens for hyps in translations])
    attention = links = None
    if cfg.alignments or cfg.attention_dump or cfg.tensorboard:
        # The output as the model reads it back: scripts/align.py on (input, output) gives the same links.
        aligner = ForcedAligner(model, tokenizer, LinkSettings(cfg.align_layer, cfg.align_head), cfg.batch_tokens,
                                device, cfg.precision)
        attention = aligner.attention(lines, best)
        links = aligner.links_of(attention)
    write_results(cfg, tokenizer, translations, best, attention, links)
    if cfg.tensorboard:
        write_heatmaps(cfg, attention)
    if references is not None:
        print(f"{os.path.basename(cfg.reference)}: {score(best, references)}", file=sys.stderr)
