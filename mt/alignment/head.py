"""Training one cross-attention head to align, in the same run as translation (guided alignment: Garg et al. 2019,
as fairseq's joint alignment-translation, Marian's --guided-alignment and OpenNMT-py's lambda_align).

The head's weights at the step where a target piece is the decoder's input are pulled toward the gold links of
that piece: its word's linked source words, spread evenly over their pieces. The links of the training pairs come
from a Pharaoh file or from eflomal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from mt.alignment.eflomal import eflomal_links
from mt.alignment.links import read_pharaoh, to_pharaoh, word_index
from mt.files import InputError, read_lines
from mt.schema import bounded
from mt.tokenizer import Tokenizer
from mt.translator import AttentionSource

log = logging.getLogger(__name__)


class LinkSource(str, Enum):
    eflomal = "eflomal"  # eflomal on the training pairs, both directions symmetrized (pip install '.[align]')
    file = "file"  # align.links_file: Pharaoh lines, one per training pair


@dataclass
class AlignmentTrainingConfig:
    # of the alignment loss beside the translation loss (per target token); 0: no head
    weight: float = bounded(0.05, low=0)
    layer: int = -2  # the decoder layer of the head (negative counts from the top)
    head: int = 0
    # Target words without a link attend to the source's end (EOS, a NULL word) and stay unaligned when read
    null: bool = True
    # The head's layer runs a second time without the causal mask, so the head reads each target word knowing
    # the words after it (Garg et al. 2019's full-context alignment; only that one layer runs again). Off: it
    # lost on the gold dev half (docs/alignment.md)
    full_context: bool = False
    links: LinkSource = LinkSource.eflomal
    # links=eflomal: eflomal reads the words cut into the model's SentencePiece pieces (a compound's pieces link to
    # the English words they stand for), runs eflomal_runs times and keeps the links at least eflomal_votes runs
    # found; all three chosen on the gold dev half (docs/alignment.md)
    eflomal_pieces: bool = True
    eflomal_runs: int = bounded(8, low=1)
    eflomal_votes: int = bounded(6, low=1)
    links_file: Optional[str] = None  # links=file


def trained_head(cfg: AlignmentTrainingConfig, decoder_layers: int, n_heads: int) -> AttentionSource:
    if not -decoder_layers <= cfg.layer < decoder_layers:
        raise InputError(f"align.layer={cfg.layer} does not exist: the model has {decoder_layers} decoder layers")
    if not 0 <= cfg.head < n_heads:
        raise InputError(f"align.head={cfg.head} does not exist: the model has {n_heads} heads")
    return AttentionSource(layer=cfg.layer % decoder_layers, head=cfg.head, shift=True, null=cfg.null,
                         full_context=cfg.full_context)


def links_from_file(path: str, pairs: int, limited: bool = False) -> list[str]:
    """The Pharaoh lines of a file with one line per training pair, each checked. `limited`: the training data
    is the first `pairs` pairs of the corpus the file covers (data.train_limit), so its first lines are theirs."""
    lines = list(read_lines(path))
    if limited and len(lines) > pairs:
        lines = lines[:pairs]
    if len(lines) != pairs:
        raise InputError(f"{path} has {len(lines)} lines but the training data has {pairs} pairs (links of other "
                         f"data? align.links=eflomal aligns the training data itself)")
    for number, line in enumerate(lines, start=1):
        try:
            read_pharaoh(line, f"{path}:{number}")
        except ValueError as e:
            raise InputError(str(e)) from None
    return lines


def links_from_eflomal(cfg: AlignmentTrainingConfig, sources: list[str], targets: list[str], tokenizer: Tokenizer,
                       cache_dir: Path, fingerprint: str) -> list[str]:
    """eflomal's symmetrized links of the pairs as `cfg` asks for them, kept under `cache_dir` (eflomal samples:
    a rerun would differ)."""
    units = f"pieces-{tokenizer.digest[:12]}" if cfg.eflomal_pieces else "words"
    cache = cache_dir / f"eflomal-{fingerprint}-{units}-{cfg.eflomal_votes}of{cfg.eflomal_runs}.txt"
    if cache.is_file():
        log.info("alignment links: reusing %s", cache)
        return cache.read_text(encoding="utf-8").splitlines()
    lines = [to_pharaoh(links) for links in eflomal_links(
        sources, targets, tokenizer=tokenizer if cfg.eflomal_pieces else None, runs=cfg.eflomal_runs,
        votes=cfg.eflomal_votes)]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return lines


def gold_distributions(src_ids: list[list[int]], tgt_ids: list[list[int]], links: list[str],
                       tokenizer: Tokenizer, src_len: int, tgt_len: int, null: bool = False) -> Tensor:
    """(pairs, tgt_len, src_len): row t + 1 is the gold distribution of target piece t over the source pieces
    (the step where piece t is the decoder's input: shift-att), evenly spread over the pieces of the source words
    linked to its word. A piece whose word has no link gets the source's EOS with `null`, else a row of zeros (no
    loss), as do BOS's row, padding, and pairs without any link."""
    gold = np.zeros((len(links), tgt_len, src_len), dtype=np.float32)
    for row, (src, tgt, line) in enumerate(zip(src_ids, tgt_ids, links)):
        pairs = read_pharaoh(line)[1]
        if not pairs or not src or not tgt:
            continue
        src_words = np.array(word_index(tokenizer.pieces(src)))
        tgt_words = np.array(word_index(tokenizer.pieces(tgt)))
        n_src, n_tgt = max(src_words.max() + 1, 1), max(tgt_words.max() + 1, 1)
        i, j = np.array(list(pairs)).T
        inside = (i < n_src) & (j < n_tgt)  # a pair cut to the model's positions loses its last words
        linked = np.zeros((n_tgt, n_src), dtype=np.float32)
        linked[j[inside], i[inside]] = 1.0
        counts = linked[np.ix_(tgt_words.clip(0), src_words.clip(0))]  # (target pieces, source pieces)
        counts[tgt_words < 0] = 0.0
        counts[:, src_words < 0] = 0.0
        rows = counts / counts.sum(axis=1, keepdims=True).clip(1.0)
        t, s = min(len(tgt), tgt_len - 1), min(len(src), src_len - 1)
        gold[row, 1:t + 1, :s] = rows[:t, :s]
        if null:
            unlinked = np.flatnonzero(rows[:t].sum(axis=1) == 0)
            gold[row, unlinked + 1, s] = 1.0  # the source's EOS, right after its pieces
    return torch.from_numpy(gold)
