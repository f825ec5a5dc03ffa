"""Corpus loading, SentencePiece caching, filtering and token batches, on real (small) Multi30k files."""

import gzip
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, composed

from mt import data
from mt.alignment.head import links_from_file
from mt.alignment.links import read_pharaoh
from mt.data import DataConfig, TokenBatches
from mt.files import InputError
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID, TokenizerConfig, train_or_load


def config(corpus, tmp_path, **overrides) -> DataConfig:
    return DataConfig(train=corpus["train"], dev=corpus["dev"], test={"t": corpus["test"]},
                      cache_dir=str(tmp_path / "cache"), tokenizer=TokenizerConfig(vocab_size=300), **overrides)


def test_files_load_line_parallel_and_directions_are_an_override(small_corpus, tmp_path):
    de_en = data.load_corpus(config(small_corpus, tmp_path))
    en_de = data.load_corpus(config(small_corpus, tmp_path, src_lang="en", tgt_lang="de"))
    assert {name: len(split) for name, split in de_en.items()} == {"train": 300, "dev": 12, "t": 10}
    assert de_en["train"][0]["src"] == en_de["train"][0]["tgt"]
    assert de_en["train"][0]["src"].startswith("Zwei junge")
    assert de_en["train"][299]["tgt"] == en_de["train"][299]["src"]


def test_train_limit_keeps_the_first_pairs(small_corpus, tmp_path):
    corpus = data.load_corpus(config(small_corpus, tmp_path, train_limit=7))
    assert len(corpus["train"]) == 7


def test_edited_file_is_read_again_not_served_from_the_cache(tmp_path):
    pattern = str(tmp_path / "c")
    for lang, text in (("de", "eins\nzwei\n"), ("en", "one\ntwo\n")):
        (tmp_path / f"c.{lang}").write_text(text)
    cfg = DataConfig(train=pattern, dev=pattern, cache_dir=str(tmp_path / "cache"))
    assert len(data.load_corpus(cfg)["train"]) == 2
    (tmp_path / "c.de").write_text("eins\nzwei\ndrei\n")
    (tmp_path / "c.en").write_text("one\ntwo\nthree\n")
    assert data.load_corpus(cfg)["train"]["tgt"] == ["one", "two", "three"]


@pytest.mark.parametrize("problem", ["missing", "counts", "utf8", "unset"])
def test_bad_files_give_one_line_naming_the_file(tmp_path, problem):
    (tmp_path / "c.de").write_text("a\nb\nc\n")
    (tmp_path / "c.en").write_text("a\nb\nc\n")
    if problem == "counts":
        (tmp_path / "c.en").write_text("a\nb\n")
    if problem == "utf8":
        (tmp_path / "c.en").write_bytes(b"a\nb\xff\xfe\nc\n")
    pattern = str(tmp_path / ("nothere" if problem == "missing" else "c"))
    cfg = DataConfig(train=pattern, dev=None if problem == "unset" else pattern, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(InputError) as error:
        data.load_corpus(cfg)
    message = str(error.value)
    assert "\n" not in message
    expected = {"missing": "nothere.de: no such file", "counts": "c.de has 3 lines but", "unset": "data.dev is not set",
                "utf8": "c.en:2: not UTF-8"}[problem]
    assert expected in message
    if problem == "counts":
        assert "c.en has 2" in message


def test_sentencepiece_is_trained_once_and_reused_by_hash(small_corpus, tmp_path):
    corpus = data.load_corpus(config(small_corpus, tmp_path))
    texts = list(corpus["train"]["src"]) + list(corpus["train"]["tgt"])
    fingerprint = data.corpus_fingerprint(corpus["train"])
    first = train_or_load(texts, fingerprint, TokenizerConfig(vocab_size=300), tmp_path / "spm")
    again = train_or_load(iter(()), fingerprint, TokenizerConfig(vocab_size=300), tmp_path / "spm")  # no data read
    other = train_or_load(texts, fingerprint, TokenizerConfig(vocab_size=250), tmp_path / "spm")
    assert again.model_bytes == first.model_bytes
    assert other.vocab_size == 250 and first.vocab_size == 300
    assert len(list((tmp_path / "spm").glob("*.model"))) == 2
    (pad, bos, eos) = (first.sp.pad_id(), first.sp.bos_id(), first.sp.eos_id())
    assert (pad, bos, eos) == (PAD_ID, BOS_ID, EOS_ID)
    sentence = corpus["train"][0]["tgt"]
    assert first.decode(first.encode([sentence])) == [sentence]


def encoded_train(small_corpus, tmp_path):
    corpus = data.load_corpus(config(small_corpus, tmp_path))
    tok = train_or_load((t for r in corpus["train"] for t in (r["src"], r["tgt"])),
                        data.corpus_fingerprint(corpus["train"]), TokenizerConfig(vocab_size=300), tmp_path / "spm")
    return data.encode(corpus["train"], tok, keep_text=False), tok


def test_filtering_drops_and_counts_empty_long_and_unbalanced_pairs(tmp_path, caplog):
    src = ["ein Hund", "", "ein sehr sehr sehr langer Satz mit vielen vielen Wörtern", "ja", "eine Katze"]
    tgt = ["a dog", "nothing", "a very long sentence", " ".join(["yes"] * 14), "a cat"]
    for lang, lines in (("de", src), ("en", tgt)):
        (tmp_path / f"c.{lang}").write_text("\n".join(lines) + "\n")
    cfg = DataConfig(train=str(tmp_path / "c"), dev=str(tmp_path / "c"), cache_dir=str(tmp_path / "x"),
                     tokenizer=TokenizerConfig(vocab_size=40))
    corpus = data.load_corpus(cfg)
    tok = train_or_load((t for r in corpus["train"] for t in (r["src"], r["tgt"])), "f", cfg.tokenizer, tmp_path / "s")
    encoded = data.encode(corpus["train"], tok, keep_text=True)
    lengths = np.asarray(encoded.with_format("numpy")["src_len"])
    max_len = int(lengths[2]) - 1  # the long German sentence is the only one over this
    with caplog.at_level("INFO"):
        kept = data.filter_pairs(encoded, max_len=max_len, max_ratio=3.0)
    assert list(kept["tgt"]) == ["a dog", "a cat"]
    assert "kept 2 of 5 (dropped 1 with an empty side, 1 over" in caplog.text
    assert "1 with ratio > 3" in caplog.text
    with pytest.raises(InputError, match="no training pairs are left"):
        data.filter_pairs(encoded, max_len=1, max_ratio=3.0)


def test_token_batches_respect_the_budget_cover_every_pair_and_bucket_by_length(small_corpus, tmp_path):
    train, _ = encoded_train(small_corpus, tmp_path)
    batches = TokenBatches.for_split(train, max_tokens=400, shuffle=True, seed=3)
    src_len = np.asarray(train.with_format("numpy")["src_len"])
    tgt_len = np.asarray(train.with_format("numpy")["tgt_len"])
    epoch = batches.epoch(0)
    assert sorted(i for b in epoch for i in b) == list(range(len(train)))
    for b in epoch:
        assert len(b) * max(src_len[b].max(), tgt_len[b].max()) <= 400
    spread = np.mean([tgt_len[b].max() - tgt_len[b].min() for b in epoch])
    random_spread = np.mean([np.ptp(tgt_len[np.random.default_rng(0).choice(len(train), len(b))]) for b in epoch])
    assert spread < random_spread / 3  # bucketed: similar lengths share a batch
    padded = sum(len(b) * max(src_len[b].max(), tgt_len[b].max()) for b in epoch)
    assert padded / sum(np.maximum(src_len, tgt_len)) < 1.3  # 300 pairs; on all of Multi30k it is ~1.1


def test_token_batches_are_seeded_per_epoch_and_sharded_by_rank(small_corpus, tmp_path):
    train, _ = encoded_train(small_corpus, tmp_path)
    make = lambda **kw: TokenBatches.for_split(train, max_tokens=300, shuffle=True, seed=5, **kw)  # noqa: E731
    assert make().epoch(0) == make().epoch(0)
    assert make().epoch(0) != make().epoch(1)
    assert make().epoch(0) != TokenBatches.for_split(train, max_tokens=300, shuffle=True, seed=6).epoch(0)
    whole = make().epoch(2)
    ranks = [make(rank=r, world_size=2).epoch(2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(whole) // 2
    assert ranks[0] + ranks[1] == whole[0:len(whole) // 2 * 2:2] + whole[1:len(whole) // 2 * 2:2]


def test_collate_adds_bos_eos_and_pads(small_corpus, tmp_path):
    train, _ = encoded_train(small_corpus, tmp_path)
    batch = data.collate(train, [0, 1])
    row = train[0]
    n = len(row["tgt_ids"])
    assert batch.tgt_in[0, : n + 1].tolist() == [BOS_ID] + row["tgt_ids"]
    assert batch.tgt_out[0, : n + 1].tolist() == row["tgt_ids"] + [EOS_ID]
    assert batch.src[0, : len(row["src_ids"]) + 1].tolist() == row["src_ids"] + [EOS_ID]
    assert batch.target_tokens == len(row["tgt_ids"]) + len(train[1]["tgt_ids"]) + 2
    assert (batch.src == PAD_ID).sum() == batch.src.numel() - (len(row["src_ids"]) + len(train[1]["src_ids"]) + 2)
    truncated = data.collate(train, [0], max_len=4)
    assert truncated.src.tolist() == [row["src_ids"][:3] + [EOS_ID]]


def test_gzipped_files_are_read_like_plain_ones(small_corpus, tmp_path):
    for lang in ("de", "en"):
        text = Path(f"{small_corpus['train']}.{lang}").read_bytes()
        with gzip.open(tmp_path / f"zipped.{lang}.gz", "wb") as f:
            f.write(text)
    plain = data.load_corpus(config(small_corpus, tmp_path / "a"))["train"]
    zipped = data.load_corpus(config({**small_corpus, "train": str(tmp_path / "zipped")}, tmp_path / "b"))["train"]
    assert zipped["src"] == plain["src"] and zipped["tgt"] == plain["tgt"]


# Each direction's recipe as README's results table ran it: en->de inherits de->en's file and sets its own smoothing.
@pytest.mark.parametrize("choice, first_source, label_smoothing", [
    ("multi30k_de_en", "Zwei junge weiße Männer", 0.25), ("multi30k_en_de", "Two young, White males", 0.2)])
def test_the_shipped_corpus_configs_compose_and_load_both_directions(choice, first_source, label_smoothing, tmp_path,
                                                                     monkeypatch):
    cfg = composed("train", f"data={choice}", f"data.cache_dir={tmp_path}")
    assert cfg.trainer.label_smoothing == label_smoothing and cfg.data.sampling_alpha == 0.5
    monkeypatch.chdir(ROOT)  # the shipped config names the files relative to the checkout
    corpus = data.load_corpus(cfg.data)
    assert {name: len(split) for name, split in corpus.items()} == {
        "train": 29000, "dev": 1014, "test_2016": 1000, "test_2017": 1000}
    assert corpus["train"][0]["src"].startswith(first_source)
    # The alignment head's shipped links: one line per pair, each word index inside its own side of the pair
    links = links_from_file(cfg.align.links_file, len(corpus["train"]))
    for number, (pair, line) in enumerate(zip(corpus["train"], links), start=1):
        n_src, n_tgt = len(pair["src"].split()), len(pair["tgt"].split())
        assert all(i < n_src and j < n_tgt for i, j in read_pharaoh(line)[1]), f"{cfg.align.links_file}:{number}"


def test_test_sets_are_dropped_from_the_command_line_by_name(small_corpus, tmp_path):
    assert composed("train", "data=multi30k_de_en", "~data.test.test_2017").data.test == {
        "test_2016": "data/multi30k/test_2016_flickr"}
    assert set(data.load_corpus(replace(config(small_corpus, tmp_path), test={}))) == {"train", "dev"}


def test_the_shipped_links_of_both_directions_agree_and_a_train_limit_takes_the_first():
    de_en = links_from_file(ROOT / "data/multi30k/train.de-en.align.gz", 29000)
    en_de = links_from_file(ROOT / "data/multi30k/train.en-de.align.gz", 29000)
    assert [sorted(read_pharaoh(line)[1]) for line in de_en] == [
        sorted((i, j) for j, i in read_pharaoh(line)[1]) for line in en_de]
    assert links_from_file(ROOT / "data/multi30k/train.de-en.align.gz", 7, limited=True) == de_en[:7]
    with pytest.raises(InputError, match=r"train.de-en.align.gz has 29000 lines but the training data has 7 pairs"):
        links_from_file(ROOT / "data/multi30k/train.de-en.align.gz", 7)


def test_a_local_dataset_folder_loads_through_the_hub_code_path(tmp_path):
    # The layout a Hub dataset has: one file per split, rows with a `translation` column.
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    rows = {"train": [("ein Hund", "a dog"), ("eine Katze", "a cat")], "validation": [("ein Haus", "a house")],
            "test": [("ein Baum", "a tree")]}
    for split, pairs in rows.items():
        (folder / f"{split}.jsonl").write_text("".join(
            json.dumps({"translation": {"de": de, "en": en}}) + "\n" for de, en in pairs))
    corpus = data.load_corpus(DataConfig(source="hub", hub_name=str(folder), cache_dir=str(tmp_path / "cache")))
    assert set(corpus) == {"train", "dev", "test"}
    assert corpus["train"]["src"] == ["ein Hund", "eine Katze"] and corpus["dev"]["tgt"] == ["a house"]
    flipped = data.load_corpus(DataConfig(source="hub", hub_name=str(folder), src_lang="en", tgt_lang="de",
                                          cache_dir=str(tmp_path / "cache")))
    assert flipped["test"]["src"] == ["a tree"]
