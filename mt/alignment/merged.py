"""Word links of given pairs from the model and eflomal together (scripts/align.py's `eflomal` key).

The model's alignment head was taught by eflomal's links of the training pairs, but it reads a new pair with what
it learned, where eflomal aligns the pairs themselves: on captions no setting was chosen on, eflomal makes fewer
wrong links (docs/alignment.md). Each word pair here scores

    merge_weight * the model's weight on it + (1 - merge_weight) * the share of eflomal runs that link it

and the pairs that score at least merge_threshold are the links. The model's weight is its attention over the
source words (each target word's row sums to 1), scaled by the share the head does not send to the source's end
(NULL). eflomal aligns the given pairs together with a corpus (by default the checkpoint's training data), on the
words and on their SentencePiece pieces, in a separate process (mt/alignment/eflomal.py: GPL, never imported).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Optional

from torch import Tensor

from mt.alignment.eflomal import INSTALL, eflomal_command, eflomal_link_counts
from mt.alignment.gold import read_corpus
from mt.alignment.links import Link
from mt.alignment.model_links import Direction, ForcedAligner, LinkSettings, Words
from mt.data import DataConfig, language_file
from mt.files import InputError
from mt.schema import bounded
from mt.tokenizer import Tokenizer

log = logging.getLogger(__name__)


class EflomalUse(str, Enum):
    # merge the trained head's forward links of whitespace words where eflomal is installed and its corpus is
    # here (else, one warning saying why, the model's links alone); links read in another way stand alone
    auto = "auto"
    merge = "merge"  # merge, or one line saying why it cannot
    off = "off"  # the model's links alone (translate.py's links exactly)


@dataclass
class MergeSettings:
    eflomal: EflomalUse = EflomalUse.auto
    # PREFIX of PREFIX.SRC and PREFIX.TGT (the model's languages), aligned with the given pairs; null: the
    # checkpoint's training data
    eflomal_corpus: Optional[str] = None
    # eflomal samples, so it runs this many times on the words and as many on their SentencePiece pieces; a link's
    # eflomal score is the share of all those runs that found it. This and the two below were chosen on the gold
    # dev half (docs/alignment.md)
    eflomal_runs: int = bounded(2, low=1)
    merge_weight: float = bounded(0.7, low=0, high=1)  # the model's part of a link's score; eflomal's is the rest
    merge_threshold: float = bounded(0.4, low=0, high=1)


def merged_links(weights: list[Optional[tuple[Tensor, Optional[Tensor]]]], counts: list[Counter], runs: int,
                 weight: float, threshold: float) -> list[set[Link]]:
    """Per pair, the word links whose merged score reaches `threshold`. `weights`: per pair the model's
    (target words, source words) attention and each target word's weight on the source's end (None: no null),
    or None for a pair with an empty side; `counts`: per pair, how many of eflomal's `runs` runs found each link."""
    merged = []
    for pair, found in zip(weights, counts, strict=True):
        if pair is None:
            merged.append(set())
            continue
        matrix, on_end = pair
        scores = weight * matrix.double()
        if on_end is not None:
            scores *= 1 - on_end.double()[:, None]  # what the head sends to the source's end counts against a link
        for (i, j), count in found.items():
            if j < scores.shape[0] and i < scores.shape[1]:
                scores[j, i] += (1 - weight) * count / runs
        merged.append({(int(i), int(j)) for j, i in (scores >= threshold - 1e-9).nonzero().tolist()})
    return merged


def why_not_merged(settings: LinkSettings) -> Optional[str]:
    """Why links read with `settings` cannot be merged with eflomal's (None: they can)."""
    if settings.direction != Direction.forward:
        return f"direction={settings.direction.value}: the merge reads the checkpoint's own direction (forward)"
    if settings.words != Words.whitespace:
        return "words=subwords: eflomal links whitespace words"
    return None


def eflomal_corpus(settings: MergeSettings, about: dict, why_not: Optional[str], from_trained_head: bool
                   ) -> Optional[tuple[str, list[str]]]:
    """The corpus eflomal aligns the given pairs with, as its prefix and the two languages, or None where the
    model's links stand alone (eflomal=off; or auto where `why_not` or another reason forbids a merge: one
    warning). `about`: what the checkpoint says of its run; `from_trained_head`: whether the model's links come
    from its trained alignment head."""
    if settings.eflomal == EflomalUse.off:
        return None
    if settings.eflomal == EflomalUse.auto and (why_not is not None or not from_trained_head):
        return None  # links asked for in another way than the default's are read as asked
    data = (about.get("config") or {}).get("data") or {}
    languages = [data.get("src_lang", DataConfig.src_lang), data.get("tgt_lang", DataConfig.tgt_lang)]
    reason, prefix = why_not, settings.eflomal_corpus
    if reason is None and prefix is not None:
        for lang in languages:
            if not Path(language_file(prefix, lang)).is_file():
                raise InputError(f"eflomal_corpus: {language_file(prefix, lang)} does not exist")
    if reason is None and eflomal_command() is None:
        reason = f"eflomal is not installed: {INSTALL}"
    if reason is None and prefix is None:
        prefix = data.get("train") if data.get("source", "files") == "files" else None
        if prefix is None:
            reason = "the checkpoint names no training corpus on disk for eflomal (give eflomal_corpus=PREFIX)"
        elif not all(Path(language_file(prefix, lang)).exists() for lang in languages):
            reason = (f"the checkpoint's training data {prefix}.{{{','.join(languages)}}} is not here (give "
                      "eflomal_corpus=PREFIX)")
    if reason is None:
        return prefix, languages
    if settings.eflomal == EflomalUse.merge:
        raise InputError(f"eflomal=merge: {reason}")
    log.warning("links from the model alone, without eflomal: %s", reason)
    return None


def eflomal_counts(sources: list[str], targets: list[str], prefix: str, languages: list[str], runs: int,
                   tokenizer: Tokenizer) -> list[Counter]:
    """How many eflomal runs found each word link of the given pairs, aligned together with the corpus `prefix`
    (the given pairs first): `runs` runs on the words and as many on their SentencePiece pieces (`tokenizer`'s),
    two views that disagree where a compound or a rare word is split."""
    corpus = read_corpus(prefix, languages)
    log.info("eflomal: aligning the %d given pairs with %s (%d pairs), %d run(s) on words and %d on pieces",
             len(sources), prefix, len(corpus[0]), runs, runs)
    counts = [Counter() for _ in sources]
    for pieces in (None, tokenizer):
        found = eflomal_link_counts(sources + corpus[0], targets + corpus[1], tokenizer=pieces, runs=runs)
        for pair, more in zip(counts, found):
            pair.update(more)
    return counts


def merged_alignment(aligner: ForcedAligner, sources: list[str], targets: list[str], corpus: tuple[str, list[str]],
                     settings: MergeSettings, name: Optional[str] = None) -> list[set[Link]]:
    """The merged links of the given pairs: `aligner`'s weights and eflomal's runs on them with `corpus` (its
    prefix and languages, as eflomal_corpus gives them). `name` names the sources in warnings."""
    counts = eflomal_counts(sources, targets, *corpus, settings.eflomal_runs, aligner.tokenizer)
    weights = [aligner.weights(item) if item is not None else None
               for item in aligner.attention(sources, targets, name=name)]
    return merged_links(weights, counts, 2 * settings.eflomal_runs, settings.merge_weight, settings.merge_threshold)
