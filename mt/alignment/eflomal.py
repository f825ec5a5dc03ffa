"""eflomal (Östling and Tiedemann 2016), the statistical word aligner, run as a program of its own.

eflomal is GPL-3.0 and this project MIT: it is an optional extra (`pip install '.[align]'`), and this toolkit only
runs its `eflomal-align` command in a separate process; nothing here imports it. Both directions are aligned and
symmetrized with mt/alignment/links.py, as for attention links.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Optional

from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from mt.alignment.links import SYMMETRIZE, Link, read_pharaoh
from mt.files import InputError
from mt.tokenizer import Tokenizer

log = logging.getLogger(__name__)

INSTALL = "pip install '.[align]' (eflomal, GPL-3.0, runs as a separate program)"


def eflomal_command() -> Optional[str]:
    """The eflomal-align program beside this Python (a virtual environment's bin/), or on the PATH."""
    beside = Path(sys.executable).parent / "eflomal-align"
    return str(beside) if beside.is_file() else shutil.which("eflomal-align")


def _tokens_of_words(line: str, tokenize: Tokenizer13a, split: Optional[_PieceSplitter] = None
                     ) -> tuple[list[str], list[int]]:
    """The 13a tokens of each whitespace word (punctuation split off, as the gold standard has it), each cut
    into SentencePiece pieces by `split` where one is given, and the word each token comes from."""
    tokens, words = [], []
    for number, word in enumerate(line.split()):
        pieces = tokenize(word).split() or [word]
        if split is not None:
            pieces = [piece for token in pieces for piece in split(token)]
        tokens += pieces
        words += [number] * len(pieces)
    return tokens, words


def eflomal_links(sources: list[str], targets: list[str], symmetrize: str = "grow-diag-final",
                  tokenizer: Optional[Tokenizer] = None, runs: int = 1, votes: int = 1) -> list[set[Link]]:
    """Links between the whitespace words of each pair, found by eflomal in both directions and symmetrized.

    eflomal reads each word split as sacrebleu's 13a tokenizer splits it (punctuation as tokens of its own, so
    "Büsche." and "Büsche" count as one word type), and with `tokenizer` each token cut further into its
    SentencePiece pieces (a German compound's pieces can then link to the several English words it stands for);
    links of tokens or pieces are mapped back to the words. eflomal seeds its sampler from /dev/urandom, so two
    runs differ: with `runs` > 1 it runs that many times and keeps the links at least `votes` runs found.
    """
    if not 1 <= votes <= runs:
        raise InputError(f"eflomal: keeping links found by {votes} of {runs} runs is impossible (need 1 <= votes "
                         "<= runs)")
    found = eflomal_link_counts(sources, targets, symmetrize, tokenizer, runs)
    return [{link for link, count in pair.items() if count >= votes} for pair in found]


def eflomal_link_counts(sources: list[str], targets: list[str], symmetrize: str = "grow-diag-final",
                        tokenizer: Optional[Tokenizer] = None, runs: int = 1) -> list[Counter]:
    """Per pair, each word link eflomal found (as eflomal_links finds them) and in how many of `runs` runs."""
    command = eflomal_command()
    if command is None:
        raise InputError(f"eflomal is not installed: {INSTALL}")
    tokenize = Tokenizer13a()
    split_source = _PieceSplitter(tokenizer, target=False) if tokenizer is not None else None
    split_target = _PieceSplitter(tokenizer, target=True) if tokenizer is not None else None
    split_sources = [_tokens_of_words(line, tokenize, split_source) for line in sources]
    split_targets = [_tokens_of_words(line, tokenize, split_target) for line in targets]
    found: list[Counter] = [Counter() for _ in sources]
    combine = SYMMETRIZE[symmetrize]
    for run in range(runs):
        log.info("eflomal: aligning %d pairs in both directions%s", len(sources),
                 f" (run {run + 1} of {runs})" if runs > 1 else "")
        directions = _align_once(command, [tokens for tokens, _ in split_sources],
                                 [tokens for tokens, _ in split_targets])
        for pair, (_, src_words), (_, tgt_words), forward, reverse in zip(
                found, split_sources, split_targets, *directions):
            pair.update({(src_words[i], tgt_words[j]) for i, j in combine(forward, reverse)})
    return found


class _PieceSplitter:
    """A 13a token's SentencePiece pieces (the source's or the target's model), each token type encoded once."""

    def __init__(self, tokenizer: Tokenizer, target: bool):
        self.encode = tokenizer.encode_target if target else tokenizer.encode
        self.tokenizer, self.known = tokenizer, {}

    def __call__(self, token: str) -> list[str]:
        if token not in self.known:
            self.known[token] = self.tokenizer.pieces(self.encode([token])[0]) or [token]
        return self.known[token]


def _align_once(command: str, sources: list[list[str]], targets: list[list[str]]
                ) -> tuple[list[set[Link]], list[set[Link]]]:
    """One eflomal run: the forward and reverse token links of each pair."""
    with tempfile.TemporaryDirectory(prefix="eflomal-") as folder:
        work = Path(folder)
        for name, lines in (("source", sources), ("target", targets)):
            (work / name).write_text("".join(" ".join(tokens) + "\n" for tokens in lines), encoding="utf-8")
        done = subprocess.run([command, "-s", str(work / "source"), "-t", str(work / "target"), "-f",
                               str(work / "forward"), "-r", str(work / "reverse"), "--overwrite"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise InputError(f"eflomal-align failed (exit {done.returncode}): {reason}")
        forward, reverse = ([read_pharaoh(line)[1] for line in (work / name).read_text().splitlines()]
                            for name in ("forward", "reverse"))
    return forward, reverse
