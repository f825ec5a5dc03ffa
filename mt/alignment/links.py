"""Word alignments from attention: subword pieces merged to words, hard links, Pharaoh I/O, and AER.

Words are whitespace-separated words: a SentencePiece piece that starts with "▁" starts a new word, so word i
here is word i of `line.split()`, and a gold file over pre-tokenized text lines up index for index.
"""

from __future__ import annotations

import random
import re
from enum import Enum

import torch
from torch import Tensor

WORD_START = "\u2581"  # SentencePiece's marker of a preceding space

Link = tuple[int, int]  # (source word, target word)


def word_index(pieces: list[str]) -> list[int]:
    """For each piece, the number of the whitespace word it belongs to (-1: none, in a sentence of no words).

    A bare "▁" piece is only a space: it joins the word after it, or the one before it at the end of a sentence.
    """
    index, word, at_space = [], -1, True
    for piece in pieces:
        at_space = at_space or piece.startswith(WORD_START)
        if piece.lstrip(WORD_START):
            if at_space or word < 0:
                word += 1
            at_space = False
            index.append(word)
        else:
            index.append(None)
    for i in reversed(range(len(index))):  # bare spaces take the word that follows them...
        if index[i] is None and i + 1 < len(index) and index[i + 1] is not None:
            index[i] = index[i + 1]
    return [w if w is not None else max(word, -1) for w in index]  # ...or, at the end, the last word


def last_word(pieces: list[str]) -> str:
    """The text of the last whitespace word of a sentence in pieces ("" if it has none)."""
    index = word_index(pieces)
    if not pieces or index[-1] < 0:
        return ""
    return "".join(piece for piece, word in zip(pieces, index) if word == index[-1]).replace(WORD_START, "")


def renormalized(matrix: Tensor) -> Tensor:
    """Rows scaled to sum to 1 (in float64); a row of zeros stays zero."""
    matrix = matrix.double()
    return matrix / matrix.sum(dim=1, keepdim=True).clamp_min(1e-12)


def merge_to_words(attention: Tensor, src_pieces: list[str], tgt_pieces: list[str]) -> Tensor:
    """(target pieces [+ EOS], source pieces [+ EOS]) attention -> (target words, source words).

    The EOS row and column are dropped and each row renormalized (attention parked on EOS says nothing about
    which word aligns); a source word gets the sum of its pieces' weights (the mass on that word), a target word
    the mean of its pieces' rows.
    """
    matrix = renormalized(attention[: len(tgt_pieces), : len(src_pieces)])
    src_words, tgt_words = word_index(src_pieces), word_index(tgt_pieces)
    n_src, n_tgt = max(src_words, default=-1) + 1, max(tgt_words, default=-1) + 1
    to_src = torch.zeros(len(src_pieces), n_src, dtype=torch.float64)
    to_tgt = torch.zeros(n_tgt, len(tgt_pieces), dtype=torch.float64)
    for piece, word in enumerate(src_words):
        if word >= 0:
            to_src[piece, word] = 1.0
    for piece, word in enumerate(tgt_words):
        if word >= 0:
            to_tgt[word, piece] = 1.0
    to_tgt = to_tgt / to_tgt.sum(dim=1, keepdim=True).clamp_min(1.0)
    return to_tgt @ matrix @ to_src


def mean_per_word(values: Tensor, pieces: list[str]) -> Tensor:
    """Per whitespace word, the mean of its pieces' values."""
    words = torch.tensor(word_index(pieces))
    n_words = int(words.max()) + 1 if len(pieces) else 0
    sums = torch.zeros(n_words, dtype=values.dtype).index_add_(0, words.clamp_min(0), values * (words >= 0))
    counts = torch.zeros(n_words, dtype=values.dtype).index_add_(0, words.clamp_min(0), (words >= 0).to(values.dtype))
    return sums / counts.clamp_min(1.0)


def hard_links(word_attention: Tensor) -> list[Link]:
    """Each target word links to the source word it attends to most."""
    if word_attention.numel() == 0:
        return []
    return [(int(i), j) for j, i in enumerate(word_attention.argmax(dim=1).tolist())]


def threshold_links(word_attention: Tensor, threshold: float) -> list[Link]:
    """Every (source, target) word pair with at least `threshold` attention."""
    return [(int(i), int(j)) for j, i in (word_attention >= threshold).nonzero().tolist()]


def diagonal_links(n_src: int, n_tgt: int) -> set[Link]:
    """The monotone baseline: target word j links to the source word at the same relative position."""
    if n_src == 0:
        return set()
    return {(min(int((j + 0.5) * n_src / n_tgt), n_src - 1), j) for j in range(n_tgt)}


_NEIGHBOURS = [(-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)]


def grow_diag_final(forward: set[Link], reverse: set[Link]) -> set[Link]:
    """Koehn et al. (2003), as Moses does it: start from the intersection; grow into union links next to (also
    diagonally) an alignment point that cover a word not yet aligned, scanning (i, j) in order until nothing is
    added; then add forward links, then reverse links, that cover a word not yet aligned."""
    union, links = forward | reverse, forward & reverse
    src_aligned, tgt_aligned = {i for i, _ in links}, {j for _, j in links}

    def add(link: Link) -> None:
        links.add(link)
        src_aligned.add(link[0])
        tgt_aligned.add(link[1])

    n_src = max((i for i, _ in union), default=-1) + 1
    n_tgt = max((j for _, j in union), default=-1) + 1
    grown = True
    while grown:
        grown = False
        for i in range(n_src):
            for j in range(n_tgt):
                if (i, j) not in links:
                    continue
                for di, dj in _NEIGHBOURS:
                    new = (i + di, j + dj)
                    if new in union and new not in links and (new[0] not in src_aligned or new[1] not in tgt_aligned):
                        add(new)
                        grown = True
    for direction in (forward, reverse):
        for link in sorted(direction):
            if link not in links and (link[0] not in src_aligned or link[1] not in tgt_aligned):
                add(link)
    return links


SYMMETRIZE = {
    "intersection": lambda forward, reverse: forward & reverse,
    "union": lambda forward, reverse: forward | reverse,
    "grow-diag-final": grow_diag_final,
}
# A choice in the configuration schema. The functional form admits the field's hyphenated name.
Symmetrize = Enum("Symmetrize", {name: name for name in SYMMETRIZE}, type=str)


def select_heads(attention: Tensor, layer: int, head: int | None) -> Tensor:
    """(layers, heads, T, S) -> (T, S): one decoder layer, one head or the mean of all heads."""
    weights = attention[layer]
    return weights.mean(dim=0) if head is None else weights[head]


def flipped(links: list[set[Link]]) -> list[set[Link]]:
    """Links of a target -> source model (or pair) as (source word, target word), and back."""
    return [{(i, j) for j, i in pair} for pair in links]


def to_pharaoh(links: list[Link]) -> str:
    return " ".join(f"{i}-{j}" for i, j in sorted(links))


_LINK = re.compile(r"^(\d+)([-?])(\d+)([SsPp]?)$")


def read_pharaoh(line: str, where: str = "") -> tuple[set[Link], set[Link]]:
    """Sure and possible links of one line. Read forms: `i-j` (sure), `i-jS` (sure), `i?j`, `i-jP`, `i-jp`
    (possible). Every sure link is also possible, as AER assumes."""
    sure, possible = set(), set()
    for item in line.split():
        match = _LINK.match(item)
        if not match:
            raise ValueError(f"{where}: '{item}' is not a link (i-j, i?j, i-jp)")
        link = (int(match[1]), int(match[3]))
        possible.add(link)
        if match[2] == "-" and match[4] in ("", "S", "s"):
            sure.add(link)
    return sure, possible


def alignment_error_rate(gold: list[tuple[set[Link], set[Link]]], predicted: list[set[Link]]) -> dict:
    """Och and Ney (2003): AER = 1 - (|A & S| + |A & P|) / (|A| + |S|), summed over the corpus."""
    return _scores(_pair_counts(gold, predicted))


def _pair_counts(gold: list[tuple[set[Link], set[Link]]], predicted: list[set[Link]]) -> list[tuple[int, ...]]:
    """Per sentence pair: |A & S|, |A & P|, |A|, |S|."""
    return [(len(links & sure), len(links & possible), len(links), len(sure))
            for (sure, possible), links in zip(gold, predicted, strict=True)]


def _scores(counts) -> dict:
    """AER, precision, recall and link count of the summed per-pair counts."""
    a_and_s, a_and_p, size_a, size_s = (sum(column) for column in zip((0, 0, 0, 0), *counts))
    return {
        "aer": 1.0 - (a_and_s + a_and_p) / max(size_a + size_s, 1),
        "precision": a_and_p / max(size_a, 1),
        "recall": a_and_s / max(size_s, 1),
        "links": size_a,
    }


def bootstrap_aer(gold: list[tuple[set[Link], set[Link]]], predicted: dict[str, list[set[Link]]],
                  reference: str | None = None, samples: int = 1000, seed: int = 0) -> dict[str, dict]:
    """How far each AER can be trusted on this many sentence pairs: paired bootstrap resampling (Koehn 2004) of
    the pairs, every aligner scored on the same `samples` resamples. Per aligner, the 95% interval of its AER
    and, beside `reference`, of its AER minus the reference's, and the share of resamples it scores lower."""
    rng = random.Random(seed)
    draws = [[rng.randrange(len(gold)) for _ in gold] for _ in range(samples)]
    aers = {}
    for name, links in predicted.items():
        counts = _pair_counts(gold, links)
        aers[name] = [_scores(counts[i] for i in draw)["aer"] for draw in draws]
    result = {}
    for name, values in aers.items():
        result[name] = {"aer_interval": _interval(values)}
        if reference is not None and name != reference:
            differences = [a - r for a, r in zip(values, aers[reference])]
            result[name]["difference_interval"] = _interval(differences)
            result[name]["lower_share"] = sum(d < 0 for d in differences) / samples
    return result


def _interval(values: list[float]) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles (nearest rank)."""
    ordered = sorted(values)
    return ordered[int(0.025 * (len(ordered) - 1))], ordered[int(round(0.975 * (len(ordered) - 1)))]
