"""Translate an encoded split in length-sorted batches and score it with sacrebleu."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import datasets
import torch
from sacrebleu.metrics import BLEU, CHRF

from mt.data import TokenBatches, collate
from mt.model import Transformer
from mt.search import greedy_search
from mt.tokenizer import Tokenizer


@dataclass
class Scores:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str

    def __str__(self) -> str:
        return f"BLEU {self.bleu:.2f} chrF {self.chrf:.2f} ({self.bleu_signature})"


def score(hypotheses: list[str], references: list[str]) -> Scores:
    bleu, chrf = BLEU(), CHRF()
    return Scores(
        bleu=bleu.corpus_score(hypotheses, [references]).score,
        chrf=chrf.corpus_score(hypotheses, [references]).score,
        bleu_signature=str(bleu.get_signature()),
        chrf_signature=str(chrf.get_signature()),
    )


@torch.no_grad()
def translate_split(
    model: Transformer, split: datasets.Dataset, tokenizer: Tokenizer, batch_tokens: int, max_len: int,
    device: torch.device, autocast=contextlib.nullcontext, max_len_a: float = 1.5, max_len_b: int = 10,
) -> list[str]:
    """Greedy translations of every row of `split`, in row order; sources longer than max_len are truncated."""
    was_training = model.training
    model.eval()
    outputs: list[str] = [""] * len(split)
    for indices in TokenBatches.for_split(split, batch_tokens, shuffle=False).epoch(0):
        batch = collate(split, indices, max_len).to(device)
        with autocast():
            hyps = greedy_search(model, batch.src, max_len_a, max_len_b)
        for i, text in zip(batch.indices, tokenizer.decode(hyps.tokens)):
            outputs[i] = text
    model.train(was_training)
    return outputs
