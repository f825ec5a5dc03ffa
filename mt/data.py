"""Parallel corpora through Hugging Face `datasets`: load, encode into the Arrow cache, filter, batch by tokens.

Every split is a Dataset with columns `src` and `tgt` (raw text); encoding adds `src_ids`, `tgt_ids` and their
lengths (counting the end-of-sentence token). Nothing here holds the corpus as Python objects: text streams
from files into Arrow, and batches read rows from Arrow by index.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from mt.files import InputError, read_parallel
from mt.schema import bounded
from mt.tokenizer import OURS, PAD_ID, SpecialIds, Tokenizer, TokenizerConfig

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)


class Source(str, Enum):
    files = "files"  # line-parallel text files, given by prefix
    hub = "hub"  # a Hugging Face Hub dataset


@dataclass
class DataConfig:
    source: Source = Source.files
    src_lang: str = "de"
    tgt_lang: str = "en"
    # For source=files: path prefixes, read as PREFIX.LANG or PREFIX.LANG.gz (data/multi30k/train -> train.de.gz)
    train: Optional[str] = None
    dev: Optional[str] = None
    test: dict[str, str] = field(default_factory=dict)  # test-set name -> prefix; ~data.test.NAME drops one
    # For source=hub: a dataset with a `translation` column of {lang: text}
    hub_name: Optional[str] = None
    hub_config: Optional[str] = None
    hub_splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "dev": "validation", "test": "test"})
    train_limit: Optional[int] = bounded(None, low=1)  # use only the first N training pairs
    # subword tokens per side, end-of-sentence included; longer training pairs are dropped
    max_len: int = bounded(128, low=2)
    # drop training pairs whose longer side is more than this times the shorter
    max_len_ratio: float = bounded(3.0, low=1)
    batch_tokens: int = bounded(4096, low=1)  # padded tokens per batch (longer side; R-Drop's two passes share it)
    # Above 0, training text is segmented afresh each time it is read, sampled from the unigram model with
    # SentencePiece's alpha (subword regularization, Kudo 2018); 0 reads the one best segmentation.
    sampling_alpha: float = bounded(0.0, low=0, high=1)
    # The targets' own alpha (as Marian's per-vocabulary --sentencepiece-alphas): None samples them as the sources,
    # 0 keeps their one best segmentation, the one the decoder writes at inference.
    target_sampling_alpha: Optional[float] = bounded(None, low=0, high=1)
    # Word dropout: above 0, each piece of a training batch's sources (EOS and padding aside), or of its decoder
    # inputs (BOS and padding aside; the labels stay), is replaced by <unk> with this probability, drawn per batch.
    source_word_dropout: float = bounded(0.0, low=0, below=1)
    target_word_dropout: float = bounded(0.0, low=0, below=1)
    # Bidirectional training (Ding et al. 2021): the first N optimizer steps read every training pair both ways,
    # as given and turned round (target -> source, the same model and vocabulary), then the asked direction alone
    # from a new epoch (epochs both ways are twice as long; N at or above the run's steps: both ways throughout).
    bidirectional_steps: int = bounded(0, low=0)
    cache_dir: str = ".cache"  # SentencePiece models and the Arrow cache of encoded splits
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    @property
    def sampling_alphas(self) -> tuple[float, float]:
        """The sources' and the targets' sampling alpha (0: the one best segmentation)."""
        target = self.sampling_alpha if self.target_sampling_alpha is None else self.target_sampling_alpha
        return self.sampling_alpha, target

    @property
    def samples_segmentations(self) -> bool:
        """Whether either side of the training text is segmented by sampling."""
        return max(self.sampling_alphas) > 0


# ---------------------------------------------------------------- loading

def load_corpus(cfg: DataConfig) -> datasets.DatasetDict:
    """Splits `train`, `dev` and one per test set (`test` for the Hub), each with `src` and `tgt` text."""
    corpus = _load_hub(cfg) if cfg.source == Source.hub else _load_files(cfg)
    if cfg.train_limit is not None:
        corpus["train"] = corpus["train"].select(range(min(cfg.train_limit, len(corpus["train"]))))
    for name, split in corpus.items():
        log.info("corpus %s: %d pairs", name, len(split))
    return corpus


def _load_files(cfg: DataConfig) -> datasets.DatasetDict:
    import datasets  # here: commands that never load a corpus start faster
    prefixes = {"train": cfg.train, "dev": cfg.dev, **cfg.test}
    missing = [name for name in ("train", "dev") if not prefixes[name]]
    if missing:
        name = missing[0]
        raise InputError(f"data.{name} is not set: give a path prefix, e.g. data.{name}=corpus/{name} "
                         f"for corpus/{name}.{cfg.src_lang} and corpus/{name}.{cfg.tgt_lang}")
    return datasets.DatasetDict({
        name: _load_file_pair(language_file(prefix, cfg.src_lang), language_file(prefix, cfg.tgt_lang), cfg.cache_dir)
        for name, prefix in prefixes.items()
    })


def language_file(prefix: str, lang: str) -> str:
    """PREFIX.LANG, or PREFIX.LANG.gz where only that exists."""
    plain = f"{prefix}.{lang}"
    return plain if Path(plain).exists() or not Path(plain + ".gz").exists() else plain + ".gz"


def _pairs(src_path: str, tgt_path: str) -> Iterator[dict]:
    for src, tgt in read_parallel(src_path, tgt_path):
        yield {"src": src, "tgt": tgt}


def _load_file_pair(src_path: str, tgt_path: str, cache_dir: str) -> datasets.Dataset:
    import datasets  # here: commands that never load a corpus start faster
    for path in (src_path, tgt_path):
        if not Path(path).is_file():
            raise InputError(f"{path}: no such file")
    # The Arrow cache is keyed on the files' identity, so an edited file is read again.
    stamp = [(os.path.abspath(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in (src_path, tgt_path)]
    try:
        return datasets.Dataset.from_generator(
            _pairs, gen_kwargs={"src_path": src_path, "tgt_path": tgt_path},
            cache_dir=str(Path(cache_dir) / "datasets"), fingerprint=_hash(stamp),
        )
    except datasets.exceptions.DatasetGenerationError as e:
        if isinstance(e.__cause__, InputError):
            raise e.__cause__ from None
        raise


def _load_hub(cfg: DataConfig) -> datasets.DatasetDict:
    import datasets  # here: commands that never load a corpus start faster
    if not cfg.hub_name:
        raise InputError("data.hub_name is not set: give a Hub dataset, e.g. data.hub_name=iwslt2017 "
                         "data.hub_config=iwslt2017-de-en")
    try:
        hub = datasets.load_dataset(cfg.hub_name, cfg.hub_config)
    except (ConnectionError, OSError, datasets.exceptions.DatasetsError) as e:
        offline = datasets.config.HF_HUB_OFFLINE or isinstance(e, ConnectionError)
        reason = "is not in the local cache and the Hub cannot be reached" if offline else f"could not be loaded ({e})"
        raise InputError(f"Hub dataset '{cfg.hub_name}' ({cfg.hub_config}) {reason}; to train on local files use "
                         "data=files data.train=PREFIX data.dev=PREFIX (files PREFIX.LANG)") from None
    corpus = {}
    for name, split in cfg.hub_splits.items():
        if split not in hub:
            raise InputError(f"Hub dataset '{cfg.hub_name}' has no split '{split}' (it has {', '.join(hub)}); "
                             f"set data.hub_splits.{name}")
        corpus[name] = hub[split].map(
            _translation_columns, batched=True, remove_columns=hub[split].column_names,
            fn_kwargs={"src_lang": cfg.src_lang, "tgt_lang": cfg.tgt_lang},
        )
    return datasets.DatasetDict(corpus)


def _translation_columns(batch: dict, src_lang: str, tgt_lang: str) -> dict:
    pairs = batch["translation"]
    return {"src": [p[src_lang] for p in pairs], "tgt": [p[tgt_lang] for p in pairs]}


def _hash(value) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


def texts(split: datasets.Dataset) -> Iterator[str]:
    """Source and target of each pair in turn, read from Arrow a block at a time (never the whole split)."""
    for block in split.iter(batch_size=10_000):
        for src, tgt in zip(block["src"], block["tgt"]):
            yield src
            yield tgt


def corpus_fingerprint(split: datasets.Dataset) -> str:
    """Identifies a split's contents (its Arrow fingerprint follows its source and every transform)."""
    return split._fingerprint


# ---------------------------------------------------------------- encoding and filtering

def _encode_batch(batch: dict, tokenizer: Tokenizer) -> dict:
    src_ids, tgt_ids = tokenizer.encode(batch["src"]), tokenizer.encode_target(batch["tgt"])
    return {
        "src_ids": src_ids, "tgt_ids": tgt_ids,
        "src_len": [len(ids) + 1 for ids in src_ids], "tgt_len": [len(ids) + 1 for ids in tgt_ids],
    }


def encode(split: datasets.Dataset, tokenizer: Tokenizer, keep_text: bool) -> datasets.Dataset:
    """Add ids and lengths; the result is cached in Arrow under (split, tokenizer)."""
    import datasets  # here: commands that never load a corpus start faster
    features = datasets.Features({
        **({"src": datasets.Value("string"), "tgt": datasets.Value("string")} if keep_text else {}),
        "src_ids": datasets.Sequence(datasets.Value("int32")), "tgt_ids": datasets.Sequence(datasets.Value("int32")),
        "src_len": datasets.Value("int32"), "tgt_len": datasets.Value("int32"),
    })
    return split.map(
        _encode_batch, batched=True, fn_kwargs={"tokenizer": tokenizer},
        remove_columns=None if keep_text else ["src", "tgt"], features=features,
        new_fingerprint=_hash((split._fingerprint, tokenizer.digest, keep_text)),
        desc="encoding",
    )


def column(split: datasets.Dataset, name: str) -> np.ndarray:
    """A numeric column as one array, straight from Arrow (the numpy format is far slower: docs/memory.md)."""
    return split.with_format("arrow")[name].to_numpy()


def filter_pairs(split: datasets.Dataset, max_len: int, max_ratio: float) -> datasets.Dataset:
    """Drop pairs with an empty side, a side over max_len tokens, or a length ratio over max_ratio; log counts."""
    src_len, tgt_len = column(split, "src_len"), column(split, "tgt_len")
    empty = (src_len <= 1) | (tgt_len <= 1)
    too_long = ~empty & ((src_len > max_len) | (tgt_len > max_len))
    ratio = np.maximum(src_len, tgt_len) / np.maximum(np.minimum(src_len, tgt_len), 1)
    bad_ratio = ~empty & ~too_long & (ratio > max_ratio)
    keep = ~(empty | too_long | bad_ratio)
    log.info("training pairs: kept %d of %d (dropped %d with an empty side, %d over %d tokens, %d with ratio > %g)",
             keep.sum(), len(keep), empty.sum(), too_long.sum(), max_len, bad_ratio.sum(), max_ratio)
    if not keep.any():
        raise InputError(f"no training pairs are left after filtering (of {len(keep)}): check data.train "
                         f"and data.max_len={max_len}")
    return split if keep.all() else split.select(np.flatnonzero(keep))


# ---------------------------------------------------------------- batching

@dataclass
class Batch:
    src: torch.Tensor  # (B, S) ids + eos, padded
    tgt_in: torch.Tensor  # (B, T) bos + ids
    tgt_out: torch.Tensor  # (B, T) ids + eos
    alignment: Optional[torch.Tensor] = None  # (B, T, S) gold links per decoder step, when an aligning head trains
    pad_id: int = PAD_ID

    @property
    def target_tokens(self) -> int:
        return int(self.tgt_out.ne(self.pad_id).sum())

    def to(self, device: torch.device) -> Batch:
        alignment = self.alignment.to(device) if self.alignment is not None else None
        return Batch(self.src.to(device), self.tgt_in.to(device), self.tgt_out.to(device), alignment, self.pad_id)

    def twice(self) -> Batch:
        """The batch stacked on itself (2B rows), for two dropout passes in one forward."""
        alignment = self.alignment.repeat(2, 1, 1) if self.alignment is not None else None
        return Batch(self.src.repeat(2, 1), self.tgt_in.repeat(2, 1), self.tgt_out.repeat(2, 1), alignment,
                     self.pad_id)


def pad_rows(rows: list[list[int]], prefix: list[int], suffix: list[int], max_len: int | None = None,
             pad_id: int = PAD_ID) -> torch.Tensor:
    """prefix + row + suffix for each row (the row cut to fit max_len), padded into one (rows, longest) tensor."""
    rows = [prefix + (r[:max_len - len(prefix) - len(suffix)] if max_len else r) + suffix for r in rows]
    out = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def pad_sources(rows: list[list[int]], special: SpecialIds = OURS, max_len: int | None = None) -> torch.Tensor:
    """Sources as the encoder reads them: ids + EOS, padded."""
    return pad_rows(rows, [], [special.eos], max_len, special.pad)


def make_batch(src_ids: list[list[int]], tgt_ids: list[list[int]], max_len: int | None = None,
               special: SpecialIds = OURS) -> Batch:
    """Sources + EOS, BOS + targets, targets + EOS, padded; `max_len` truncates them (for decoding)."""
    return Batch(
        src=pad_sources(src_ids, special, max_len),
        tgt_in=pad_rows(tgt_ids, [special.bos], [], max_len, special.pad),
        tgt_out=pad_rows(tgt_ids, [], [special.eos], max_len, special.pad),
        pad_id=special.pad,
    )


def collate(split: datasets.Dataset, indices: list[int], max_len: int | None = None,
            special: SpecialIds = OURS) -> Batch:
    """Read rows `indices` and pad them; `max_len` truncates sources (and targets) for decoding."""
    rows = split.select_columns(["src_ids", "tgt_ids"])[indices]
    return make_batch(rows["src_ids"], rows["tgt_ids"], max_len, special)


def decoding_batches(src_ids: list[list[int]], max_tokens: int,
                     tgt_ids: list[list[int]] | None = None) -> list[list[int]]:
    """The rows to decode (a source, and a target where given, that is not empty) as batches of row numbers, at
    most max_tokens padded tokens each (EOS counted), similar lengths together."""
    todo = [i for i, row in enumerate(src_ids) if row and (tgt_ids is None or tgt_ids[i])]
    src_len = np.array([len(src_ids[i]) + 1 for i in todo], dtype=np.int64)
    tgt_len = src_len if tgt_ids is None else np.array([len(tgt_ids[i]) + 1 for i in todo], dtype=np.int64)
    return [[todo[b] for b in batch] for batch in TokenBatches(src_len, tgt_len, max_tokens, shuffle=False).epoch(0)]


class TokenBatches:
    """Batches of at most `max_tokens` padded tokens, of similar lengths.

    Each epoch: shuffle (seeded by seed and epoch), sort by target then source length (so equal lengths keep
    the random order), cut into batches, shuffle the batches, and give rank r every world_size-th batch.
    """

    def __init__(self, src_len: np.ndarray, tgt_len: np.ndarray, max_tokens: int, shuffle: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.src_len, self.tgt_len = np.asarray(src_len), np.asarray(tgt_len)
        self.max_tokens, self.shuffle, self.seed = max_tokens, shuffle, seed
        self.rank, self.world_size = rank, world_size

    @classmethod
    def for_split(cls, split: datasets.Dataset, max_tokens: int, shuffle: bool, seed: int = 0,
                  **shard) -> TokenBatches:
        return cls(column(split, "src_len"), column(split, "tgt_len"), max_tokens, shuffle, seed, **shard)

    def with_lengths(self, src_len: np.ndarray, tgt_len: np.ndarray) -> TokenBatches:
        """The same budget, seed and shard over other lengths of the same pairs (a sampled segmentation's)."""
        return TokenBatches(src_len, tgt_len, self.max_tokens, self.shuffle, self.seed, self.rank, self.world_size)

    def epoch(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.src_len)) if self.shuffle else np.arange(len(self.src_len))
        order = order[np.lexsort((self.src_len[order], self.tgt_len[order]))]
        batches = self._cut(order)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        per_rank = len(batches) // self.world_size if self.world_size > 1 else len(batches)
        return batches[self.rank::self.world_size][:per_rank]

    def _cut(self, order: np.ndarray) -> list[list[int]]:
        longest = np.maximum(self.src_len, self.tgt_len)[order]
        batches, start, widest = [], 0, 0
        for i, length in enumerate(longest.tolist()):
            widest_with = max(widest, length)
            if i > start and widest_with * (i - start + 1) > self.max_tokens:
                batches.append(order[start:i].tolist())
                start, widest_with = i, length
            widest = widest_with
        if start < len(order):
            batches.append(order[start:].tolist())
        return batches
