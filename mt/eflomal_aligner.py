"""eflomal (Östling and Tiedemann 2016), the statistical word aligner, run as a program of its own.

eflomal is GPL-3.0 and this project MIT: it is an optional extra (`pip install '.[align]'`), and this toolkit only
runs its `eflomal-align` command in a separate process; nothing here imports it. Both directions are aligned and
symmetrized with mt/align.py, as for attention links.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from mt import align
from mt.files import InputError

log = logging.getLogger(__name__)

INSTALL = "pip install '.[align]' (eflomal, GPL-3.0, runs as a separate program)"


def eflomal_command() -> Optional[str]:
    """The eflomal-align program beside this Python (a virtual environment's bin/), or on the PATH."""
    beside = Path(sys.executable).parent / "eflomal-align"
    return str(beside) if beside.is_file() else shutil.which("eflomal-align")


def _tokens_of_words(line: str, tokenize: Tokenizer13a) -> tuple[list[str], list[int]]:
    """The 13a tokens of each whitespace word (punctuation split off, as the gold standard has it), and the word
    each token comes from."""
    tokens, words = [], []
    for number, word in enumerate(line.split()):
        pieces = tokenize(word).split() or [word]
        tokens += pieces
        words += [number] * len(pieces)
    return tokens, words


def eflomal_links(sources: list[str], targets: list[str], symmetrize: str = "grow-diag-final"
                  ) -> list[set[align.Link]]:
    """Links between the whitespace words of each pair, found by eflomal in both directions and symmetrized.

    eflomal reads each word split as sacrebleu's 13a tokenizer splits it (punctuation as tokens of its own, so
    "Büsche." and "Büsche" count as one word type); its token links are mapped back to the words. eflomal seeds
    its sampler from /dev/urandom: two runs differ a little.
    """
    command = eflomal_command()
    if command is None:
        raise InputError(f"eflomal is not installed: {INSTALL}")
    tokenize = Tokenizer13a()
    split_sources = [_tokens_of_words(line, tokenize) for line in sources]
    split_targets = [_tokens_of_words(line, tokenize) for line in targets]
    with tempfile.TemporaryDirectory(prefix="eflomal-") as folder:
        work = Path(folder)
        for name, split in (("source", split_sources), ("target", split_targets)):
            (work / name).write_text("".join(" ".join(tokens) + "\n" for tokens, _ in split), encoding="utf-8")
        log.info("eflomal: aligning %d pairs in both directions", len(sources))
        done = subprocess.run([command, "-s", str(work / "source"), "-t", str(work / "target"), "-f",
                               str(work / "forward"), "-r", str(work / "reverse"), "--overwrite"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise InputError(f"eflomal-align failed (exit {done.returncode}): {reason}")
        directions = [[align.read_pharaoh(line)[1] for line in (work / name).read_text().splitlines()]
                      for name in ("forward", "reverse")]
    combine = align.SYMMETRIZE[symmetrize]
    links = []
    for (_, src_words), (_, tgt_words), forward, reverse in zip(split_sources, split_targets, *directions):
        links.append({(src_words[i], tgt_words[j]) for i, j in combine(forward, reverse)})
    return links
