"""One joint SentencePiece model for source and target, trained once and cached by a hash of its inputs."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import sentencepiece as spm

from mt.files import write_atomically
from mt.schema import bounded

log = logging.getLogger(__name__)

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


@dataclass
class TokenizerConfig:
    vocab_size: int = bounded(8000, low=4)
    model_type: str = "unigram"
    character_coverage: float = bounded(1.0, above=0, high=1)
    # SentencePiece trains on this many sentences, sampled: plenty for a vocabulary of 8k-32k, and its memory stays
    # near training's (docs/memory.md).
    input_sentence_size: int = bounded(500_000, low=1)
    seed: int = 1


class Tokenizer:
    def __init__(self, model_bytes: bytes):
        self.model_bytes = model_bytes
        self.sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        if (self.sp.pad_id(), self.sp.bos_id(), self.sp.eos_id()) != (PAD_ID, BOS_ID, EOS_ID):
            raise ValueError("the SentencePiece model does not use this toolkit's special ids (pad 0, bos 2, eos 3)")

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, lines: list[str]) -> list[list[int]]:
        return self.sp.encode(lines)

    def encode_sampled(self, lines: list[str], alpha: float, seed: int) -> list[list[int]]:
        """A segmentation of each line sampled from the unigram model (subword regularization, Kudo 2018), with
        probability proportional to p ** alpha over all segmentations; the same seed gives the same sample."""
        spm.set_random_generator_seed(seed)
        # One thread: SentencePiece seeds each new thread's generator from the seed above, in this thread alone.
        return self.sp.encode(lines, enable_sampling=True, alpha=alpha, nbest_size=-1, num_threads=1)

    def decode(self, ids: list[list[int]]) -> list[str]:
        return self.sp.decode(ids)

    def pieces(self, ids: list[int]) -> list[str]:
        return [self.sp.id_to_piece(i) for i in ids]

    def save(self, path: str | os.PathLike) -> None:
        write_atomically(path, lambda f: f.write(self.model_bytes))


def train_or_load(
    texts: Iterable[str], fingerprint: str, cfg: TokenizerConfig, cache_dir: str | os.PathLike
) -> Tokenizer:
    """Load the cached model for (fingerprint of the data, settings) or train it on `texts`.

    `texts` is read only when training; `fingerprint` must change whenever the data does.
    """
    key = hashlib.sha256(f"{fingerprint}|{sorted(asdict(cfg).items())}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"spm-{key}.model"
    if path.exists():
        log.info("SentencePiece model: reusing %s", path)
        return Tokenizer(path.read_bytes())
    log.info("SentencePiece model: training %s %d on the training split", cfg.model_type, cfg.vocab_size)
    model, started = io.BytesIO(), time.perf_counter()
    spm.set_random_generator_seed(cfg.seed)  # sentence sampling, so the same data gives the same model
    spm.SentencePieceTrainer.train(
        sentence_iterator=_nonempty(texts),
        model_writer=model,
        vocab_size=cfg.vocab_size,
        model_type=cfg.model_type,
        character_coverage=cfg.character_coverage,
        input_sentence_size=cfg.input_sentence_size,
        shuffle_input_sentence=True,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        hard_vocab_limit=False,  # a tiny corpus gets a smaller vocabulary instead of an error
        minloglevel=2,
    )
    tokenizer = Tokenizer(model.getvalue())
    log.info("SentencePiece model: trained in %.1f s", time.perf_counter() - started)
    tokenizer.save(path)
    return tokenizer


def _nonempty(texts: Iterable[str]) -> Iterator[str]:
    return (t for t in texts if t.strip())

