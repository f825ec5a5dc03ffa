"""Corpus-level scores with sacrebleu: BLEU (cased, and lowercased as most Multi30k papers report it) and chrF,
each with its signature."""

from __future__ import annotations

from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF


@dataclass
class Scores:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    bleu_lowercase: float
    bleu_lowercase_signature: str

    def __str__(self) -> str:
        return (f"BLEU {self.bleu:.2f} ({self.bleu_signature}) chrF {self.chrf:.2f} ({self.chrf_signature}) "
                f"lowercased BLEU {self.bleu_lowercase:.2f} ({self.bleu_lowercase_signature})")


def score(hypotheses: list[str], references: list[str]) -> Scores:
    bleu, chrf, lowercased = BLEU(), CHRF(), BLEU(lowercase=True)
    return Scores(
        bleu=bleu.corpus_score(hypotheses, [references]).score,
        chrf=chrf.corpus_score(hypotheses, [references]).score,
        bleu_signature=str(bleu.get_signature()),
        chrf_signature=str(chrf.get_signature()),
        bleu_lowercase=lowercased.corpus_score(hypotheses, [references]).score,
        bleu_lowercase_signature=str(lowercased.get_signature()),
    )
