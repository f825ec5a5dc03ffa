"""The corpus as training reads it: the SentencePiece model, the training pairs encoded, filtered and batched by
length (with the alignment head's links beside them), the dev and test splits, and each batch as tensors; under
subword sampling, each epoch segments the training pairs afresh and batches them on those lengths; under word
dropout, pieces of each batch's inputs are replaced by <unk>; under bidirectional training, the first steps read
the pairs turned round too.

Under torchrun, rank 0 reads the corpus, trains SentencePiece and runs eflomal first, filling the caches the other
processes then read; the SentencePiece model and the links travel to them from rank 0.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import datasets
import numpy as np
import torch

from mt import data as corpus_data
from mt import distributed
from mt.alignment.eflomal import INSTALL as EFLOMAL_INSTALL
from mt.alignment.eflomal import eflomal_command
from mt.alignment.head import LinkSource, gold_distributions, links_from_eflomal, links_from_file
from mt.alignment.links import flipped, read_pharaoh, to_pharaoh
from mt.config import TrainConfig, passes_per_batch
from mt.files import InputError, write_text
from mt.tokenizer import Tokenizer, train_or_load

log = logging.getLogger(__name__)


class TrainingData:
    def __init__(self, cfg: TrainConfig, world: distributed.World, run_dir: Path, aligning: bool,
                 tokenizer: Optional[Tokenizer] = None):
        """`aligning`: an alignment head trains, so the training pairs need links (from a file or eflomal);
        `tokenizer`: the given model's (init.from_hf), else a SentencePiece model trained on the corpus."""
        self.cfg, self.world, self.run_dir = cfg, world, run_dir
        given = tokenizer is not None
        if given and cfg.data.bidirectional_steps > 0 and tokenizer.target_model_bytes not in (None,
                                                                                             tokenizer.model_bytes):
            raise InputError(f"data.bidirectional_steps={cfg.data.bidirectional_steps} turns the pairs round, which "
                             "needs one segmentation for both languages; the imported model has two")
        if not given and cfg.data.samples_segmentations and cfg.data.tokenizer.model_type != "unigram":
            source_alpha, target_alpha = cfg.data.sampling_alphas
            raise InputError(f"data.sampling_alpha={source_alpha} (targets: {target_alpha}) samples segmentations of "
                             f"a unigram model; data.tokenizer.model_type is {cfg.data.tokenizer.model_type}")
        with distributed.main_first(world):
            corpus = corpus_data.load_corpus(cfg.data)
            if world.is_main and not given:
                tokenizer = train_or_load(
                    corpus_data.texts(corpus["train"]), corpus_data.corpus_fingerprint(corpus["train"]),
                    cfg.data.tokenizer, Path(cfg.data.cache_dir) / "spm")
            if world.is_main:
                tokenizer.save(run_dir)
        self.tokenizer = Tokenizer.from_checkpoint(
            distributed.from_main(world, tokenizer.checkpoint_fields() if world.is_main else None))

        # Sampled segmentations are made from the text: the training split keeps it then.
        keep_text = cfg.data.samples_segmentations
        with distributed.main_first(world):
            encoded = {name: corpus_data.encode(split, self.tokenizer, keep_text=name != "train" or keep_text)
                       for name, split in corpus.items()}
        train = encoded.pop("train")
        if aligning:
            # Read before filtering, so each pair keeps its links.
            links = distributed.from_main(world, self._links(corpus["train"]) if world.is_main else None)
            if links is not None:
                train = train.add_column("links", links)
        # A sequence may not outgrow the model's positions: EOS (source) and BOS (target) take one each.
        self.max_len = min(cfg.data.max_len, cfg.model.max_positions)
        self.train = corpus_data.filter_pairs(train, self.max_len, cfg.data.max_len_ratio)
        self.dev = encoded.pop("dev")
        self.tests = encoded
        # data.batch_tokens is what a step's forward holds: R-Drop's two passes share it.
        self.batches = corpus_data.TokenBatches.for_split(
            self.train, max(1, cfg.data.batch_tokens // passes_per_batch(cfg.trainer)), shuffle=True,
            seed=cfg.trainer.seed, rank=world.rank, world_size=world.size)
        # Under bidirectional training, what its first steps read: every pair as given, then turned round.
        self.both_ways = self.both_ways_batches = None
        if cfg.data.bidirectional_steps > 0:
            self.both_ways = datasets.concatenate_datasets([self.train, turned_round(self.train)])
            self.both_ways_batches = corpus_data.TokenBatches.for_split(
                self.both_ways, self.batches.max_tokens, shuffle=True, seed=cfg.trainer.seed, rank=world.rank,
                world_size=world.size)
        self._sampled_epoch: Optional[tuple[tuple[int, bool], list[list[int]], SampledSegmentation]] = None

    @property
    def has_links(self) -> bool:
        return "links" in self.train.column_names

    def stream(self, position):
        """Training batches in order, forever, from `position`'s (epoch, batch_in_epoch), which it moves along (a
        checkpoint saves them: a resumed run goes on with the batch an uninterrupted one would have taken). Under
        bidirectional training, the pairs both ways while `position.step` is below data.bidirectional_steps; the
        asked direction then starts a new epoch."""
        both_ways_until = self.cfg.data.bidirectional_steps
        if 0 < both_ways_until == position.step and position.batch_in_epoch > 0:
            # resumed where the steps both ways end: no batch of the asked direction has been read yet
            position.epoch, position.batch_in_epoch = position.epoch + 1, 0
        while True:
            both_ways = position.step < both_ways_until
            order, segmentation = self.epoch(position.epoch, both_ways)
            while position.batch_in_epoch < len(order):
                if both_ways and position.step >= both_ways_until:
                    break  # the steps both ways are over
                indices, place = order[position.batch_in_epoch], (position.epoch, position.batch_in_epoch)
                position.batch_in_epoch += 1
                yield self.batch(indices, segmentation, place, both_ways)
            position.epoch, position.batch_in_epoch = position.epoch + 1, 0

    def epoch(self, epoch: int, both_ways: bool = False
              ) -> tuple[list[list[int]], Optional[SampledSegmentation]]:
        """This rank's batches of `epoch` (of the pairs both ways where asked), and under subword sampling the
        segmentation they were cut on: sampled for the whole epoch first, so a batch holds data.batch_tokens of
        the pieces it trains on (batches cut on the best segmentation's lengths held far more: docs/recipe.md)."""
        pairs, batches = (self.both_ways, self.both_ways_batches) if both_ways else (self.train, self.batches)
        if not self.cfg.data.samples_segmentations:
            return batches.epoch(epoch), None
        if self._sampled_epoch is None or self._sampled_epoch[0] != (epoch, both_ways):  # sampled once
            segmentation = SampledSegmentation(pairs, self.tokenizer, self.cfg.data.sampling_alphas,
                                               [self.cfg.trainer.seed, epoch], self.max_len)
            self._sampled_epoch = ((epoch, both_ways),
                                   batches.with_lengths(segmentation.src_len, segmentation.tgt_len).epoch(epoch),
                                   segmentation)
        return self._sampled_epoch[1:]

    @property
    def batches_per_epoch(self) -> int:
        """This rank's batches in the first epoch (under sampling, later epochs differ from it by a few)."""
        return len(self.epoch(0)[0])

    def batch(self, indices: list[int], segmentation: Optional[SampledSegmentation] = None,
              place: Optional[tuple[int, int]] = None, both_ways: bool = False) -> corpus_data.Batch:
        """Training pairs `indices` (of the pairs both ways where asked) as tensors (in `segmentation` where
        given), with their gold links if they have them; under word dropout, with the pieces dropped for the batch
        at `place` (epoch, batch in epoch)."""
        pairs = self.both_ways if both_ways else self.train
        if segmentation is not None:
            src_ids, tgt_ids = segmentation.src.rows(indices), segmentation.tgt.rows(indices)
        else:
            rows = pairs.select_columns(["src_ids", "tgt_ids"])[indices]
            src_ids, tgt_ids = rows["src_ids"], rows["tgt_ids"]
        # a sample may outgrow the best segmentation
        batch = corpus_data.make_batch(src_ids, tgt_ids, self.max_len, self.tokenizer.special)
        if self.has_links:
            links = pairs.select_columns(["links"])[indices]["links"]
            batch.alignment = gold_distributions(src_ids, tgt_ids, links, self.tokenizer, batch.src.size(1),
                                                 batch.tgt_in.size(1), self.cfg.align.null)
        if place is not None:
            self.drop_words(batch, place)
        return batch

    def drop_words(self, batch: corpus_data.Batch, place: tuple[int, int]) -> None:
        """Word dropout (data.source_word_dropout, data.target_word_dropout), drawn from the run's seed, the rank
        and the batch's place: a resumed run drops what an uninterrupted one would have."""
        on_source, on_target = self.cfg.data.source_word_dropout, self.cfg.data.target_word_dropout
        if on_source == 0 and on_target == 0:
            return
        seed = np.random.SeedSequence([self.cfg.trainer.seed, self.world.rank, *place]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(seed))
        special = self.tokenizer.special
        batch.src = replace_pieces(batch.src, on_source, special.unk, (special.pad, special.eos), generator)
        batch.tgt_in = replace_pieces(batch.tgt_in, on_target, special.unk, (special.pad, special.bos), generator)

    # ------------------------------------------------------------ the alignment head's links

    @property
    def links_path(self) -> Path:
        """Where a run keeps its training links, so a resumed run reads the same."""
        return self.run_dir / "alignment_links.txt"

    def saved_links(self) -> Optional[list[str]]:
        if self.cfg.trainer.resume and self.links_path.is_file():
            return self.links_path.read_text(encoding="utf-8").splitlines()
        return None

    def _links(self, train) -> Optional[list[str]]:
        """The links of the (unfiltered) training pairs from a file or eflomal; None where eflomal is not
        installed (training goes on without the head)."""
        saved = self.saved_links()
        if saved is not None:
            return saved
        a = self.cfg.align
        if a.links == LinkSource.file:
            if not a.links_file:
                raise InputError("align.links=file needs align.links_file=PATH (Pharaoh lines, one per training pair)")
            lines = links_from_file(a.links_file, len(train), limited=self.cfg.data.train_limit is not None)
            log.info("alignment links: %s", a.links_file)
        else:
            if eflomal_command() is None:
                log.warning("eflomal is not installed (%s): training without the alignment head; alignments will "
                            "be read from attention", EFLOMAL_INSTALL)
                return None
            lines = links_from_eflomal(a, list(train["src"]), list(train["tgt"]), self.tokenizer,
                                       Path(self.cfg.data.cache_dir) / "alignments", train._fingerprint)
        write_text(self.links_path, "".join(line + "\n" for line in lines))
        return lines


def turned_round(pairs: datasets.Dataset) -> datasets.Dataset:
    """The pairs read target -> source: the two sides' columns trade names, and links turn round."""
    sides = [(a, b) for a, b in (("src", "tgt"), ("src_ids", "tgt_ids"), ("src_len", "tgt_len"))
             if a in pairs.column_names]
    turned = pairs.rename_columns({a: f"{b}.turned" for a, b in sides} | {b: f"{a}.turned" for a, b in sides})
    turned = turned.rename_columns({f"{name}.turned": name for side in sides for name in side})
    if "links" in turned.column_names:
        turned = turned.map(lambda batch: {"links": [to_pharaoh(flipped([read_pharaoh(line)[1]])[0])
                                                     for line in batch["links"]]}, batched=True)
    return turned


def replace_pieces(ids: torch.Tensor, probability: float, unk: int, kept: tuple[int, ...],
                   generator: torch.Generator) -> torch.Tensor:
    """`ids` with each piece but those in `kept` replaced by `unk` with `probability`."""
    if probability == 0:
        return ids
    chosen = torch.rand(ids.shape, generator=generator) < probability
    for token in kept:
        chosen &= ids.ne(token)
    return ids.masked_fill(chosen, unk)


class PackedRows:
    """Rows of token ids in one flat int32 array: a sampled epoch of a large corpus takes four bytes a token."""

    def __init__(self, chunks: Iterator[list[list[int]]]):
        ids, sizes = [np.zeros(0, dtype=np.int32)], [np.zeros(0, dtype=np.int64)]
        for rows in chunks:
            sizes.append(np.fromiter(map(len, rows), dtype=np.int64, count=len(rows)))
            ids.append(np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(sizes[-1].sum())))
        self.ids, self.sizes = np.concatenate(ids), np.concatenate(sizes)
        self.offsets = np.concatenate(([0], np.cumsum(self.sizes)))

    def rows(self, indices: list[int]) -> list[list[int]]:
        return [self.ids[self.offsets[i]:self.offsets[i + 1]].tolist() for i in indices]


class SampledSegmentation:
    """Every training pair segmented by sampling from the unigram model (subword regularization, Kudo 2018), each
    side at its own alpha (0: its best segmentation), and the length each side takes in a batch (EOS or BOS added,
    cut at max_len as make_batch cuts it)."""

    CHUNK = 50_000  # pairs sampled at a time: the samples never sit in Python lists all at once

    def __init__(self, train: datasets.Dataset, tokenizer: Tokenizer, alphas: tuple[float, float], seed: list[int],
                 max_len: int):
        def sampled(side: str) -> Iterator[list[list[int]]]:
            target = side == "tgt"
            for start in range(0, len(train), self.CHUNK):
                if alphas[target] == 0:  # this side keeps the best segmentation it was encoded in
                    yield train.select_columns([f"{side}_ids"])[start:start + self.CHUNK][f"{side}_ids"]
                    continue
                lines = train.select_columns([side])[start:start + self.CHUNK][side]
                side_seed = int(np.random.SeedSequence([*seed, start, target]).generate_state(1)[0])
                yield tokenizer.encode_sampled(lines, alphas[target], side_seed, target=target)

        self.src, self.tgt = PackedRows(sampled("src")), PackedRows(sampled("tgt"))
        self.src_len = np.minimum(self.src.sizes + 1, max_len)
        self.tgt_len = np.minimum(self.tgt.sizes + 1, max_len)
