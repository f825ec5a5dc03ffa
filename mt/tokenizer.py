"""Subword ids for source and target lines: one joint SentencePiece model, trained once and cached by a hash of its
inputs, or, for a model from elsewhere (MarianMT), a source and a target SentencePiece model whose pieces one shared
vocabulary numbers."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
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


@dataclass(frozen=True)
class SpecialIds:
    pad: int = 0
    unk: int = 1
    bos: int = 2  # the decoder's first input (MarianMT starts from pad: the two may be one id)
    eos: int = 3


# The ids of every SentencePiece model trained here.
OURS = SpecialIds()
PAD_ID, UNK_ID, BOS_ID, EOS_ID = OURS.pad, OURS.unk, OURS.bos, OURS.eos
# What a checkpoint stores of a tokenizer (Tokenizer.checkpoint_fields); the last three only for a vocabulary's.
CHECKPOINT_KEYS = ("spm_model", "spm_target_model", "vocabulary", "special_pieces")


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
    """One SentencePiece model whose ids are the model's, for both sides; or, given `vocabulary` (the piece of each
    id) and `special_pieces` (pad, unk, bos, eos), a source model (`model_bytes`) and a target model whose pieces
    the vocabulary numbers, a piece it lacks becoming unk (MarianMT's source.spm, target.spm and vocab.json)."""

    def __init__(self, model_bytes: bytes, target_model_bytes: bytes | None = None,
                 vocabulary: list[str] | None = None, special_pieces: dict[str, str] | None = None):
        self.model_bytes = model_bytes
        self.sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        self.target_model_bytes, self.vocabulary, self.special_pieces = target_model_bytes, vocabulary, special_pieces
        if vocabulary is None:
            self.target_sp, self.special = self.sp, OURS
            if (self.sp.pad_id(), self.sp.bos_id(), self.sp.eos_id()) != (PAD_ID, BOS_ID, EOS_ID):
                raise ValueError("the SentencePiece model does not use this toolkit's special ids "
                                 "(pad 0, bos 2, eos 3)")
            return
        self.target_sp = spm.SentencePieceProcessor(model_proto=target_model_bytes or model_bytes)
        self.ids = {piece: i for i, piece in enumerate(vocabulary)}
        missing = [piece for piece in special_pieces.values() if piece not in self.ids]
        if missing:
            raise ValueError(f"the vocabulary has no {missing[0]!r}")
        self.special = SpecialIds(**{name: self.ids[piece] for name, piece in special_pieces.items()})

    @classmethod
    def from_checkpoint(cls, content: dict) -> Tokenizer:
        return cls(content["spm_model"], content.get("spm_target_model"), content.get("vocabulary"),
                   content.get("special_pieces"))

    def checkpoint_fields(self) -> dict:
        fields = {"spm_model": self.model_bytes}
        if self.vocabulary is not None:
            fields.update(spm_target_model=self.target_model_bytes, vocabulary=self.vocabulary,
                          special_pieces=self.special_pieces)
        return fields

    @property
    def digest(self) -> str:
        """Identifies the segmentation and the ids (for caches)."""
        return hashlib.sha256(json.dumps([self.model_bytes.hex(), (self.target_model_bytes or b"").hex(),
                                          self.vocabulary, self.special_pieces]).encode()).hexdigest()

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size() if self.vocabulary is None else len(self.vocabulary)

    def encode(self, lines: list[str]) -> list[list[int]]:
        """Source lines -> ids."""
        return self._numbered(self.sp, lines)

    def encode_target(self, lines: list[str]) -> list[list[int]]:
        return self._numbered(self.target_sp, lines)

    def encode_sampled(self, lines: list[str], alpha: float, seed: int, target: bool = False) -> list[list[int]]:
        """A segmentation of each line sampled from the unigram model (subword regularization, Kudo 2018), with
        probability proportional to p ** alpha over all segmentations; the same seed gives the same sample."""
        spm.set_random_generator_seed(seed)
        # One thread: SentencePiece seeds each new thread's generator from the seed above, in this thread alone.
        return self._numbered(self.target_sp if target else self.sp, lines, enable_sampling=True, alpha=alpha,
                              nbest_size=-1, num_threads=1)

    def _numbered(self, sp: spm.SentencePieceProcessor, lines: list[str], **options) -> list[list[int]]:
        if self.vocabulary is None:
            return sp.encode(lines, **options)
        unk = self.special.unk
        return [[self.ids.get(piece, unk) for piece in row] for row in sp.encode(lines, out_type=str, **options)]

    def decode(self, ids: list[list[int]]) -> list[str]:
        """Target ids -> lines, without spaces at either end (a lone word boundary piece "▁" last decodes to one);
        the vocabulary's special tokens are left out, as transformers' MarianTokenizer leaves them."""
        if self.vocabulary is None:
            return [line.strip() for line in self.sp.decode(ids)]
        # As MarianTokenizer decodes with one vocabulary for both sides: by the source model, which leaves a piece
        # it lacks as it is, "▁" and all.
        special = set(dataclasses.astuple(self.special))
        return [self.sp.decode_pieces([self.vocabulary[i] for i in row if i not in special]).replace("▁", " ").strip()
                for row in ids]

    def pieces(self, ids: list[int]) -> list[str]:
        if self.vocabulary is None:
            return self.sp.id_to_piece(list(ids))  # one call for the row: a call per id was a tenth of a batch's making
        return [self.vocabulary[i] for i in ids]

    def save(self, folder: str | os.PathLike) -> list[Path]:
        """Write the SentencePiece model as spm.model in `folder`; a vocabulary's tokenizer writes source.spm,
        target.spm and vocab.json (MarianMT's files) instead."""
        folder = Path(folder)
        if self.vocabulary is None:
            written = {"spm.model": self.model_bytes}
        else:
            numbered = {piece: i for i, piece in enumerate(self.vocabulary)}
            written = {"source.spm": self.model_bytes, "target.spm": self.target_model_bytes or self.model_bytes,
                       "vocab.json": json.dumps(numbered, ensure_ascii=False, indent=1).encode()}
        for name, content in written.items():
            write_atomically(folder / name, lambda f, content=content: f.write(content))
        return [folder / name for name in written]


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
    write_atomically(path, lambda f: f.write(tokenizer.model_bytes))
    return tokenizer


def _nonempty(texts: Iterable[str]) -> Iterator[str]:
    return (t for t in texts if t.strip())

