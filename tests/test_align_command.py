"""scripts/align.py: forced alignment of given pairs (shifted and not), link rules, symmetrization, and the gold
standard the alignment numbers are measured on."""

import gzip
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, multi30k_lines
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from mt.alignment.links import SYMMETRIZE, alignment_error_rate, diagonal_links, read_pharaoh
from mt.alignment.model_links import final_punctuation
from mt.tokenizer import BOS_ID, EOS_ID
from mt.translator import load_model

GOLD = ROOT / "tests" / "data" / "alignment"


def cli(script, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600)


def links_of(text: str) -> list[set[tuple[int, int]]]:
    return [{tuple(map(int, link.split("-"))) for link in line.split()} for line in text.splitlines()]


@pytest.mark.parametrize("shift", [True, False])
def test_subword_links_equal_the_argmax_of_the_models_own_attention(trained, tmp_path, shift):
    """A reference computed one pair at a time straight from the model, against the batched aligner."""
    checkpoint = trained / "checkpoints" / "best.pt"
    pairs = [(s, t) for s, t in zip(multi30k_lines("val", "de", 30), multi30k_lines("val", "en", 30))
             if max(len(s), len(t)) < 60][:12]  # within the tiny model's 64 positions
    sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
    (tmp_path / "s.de").write_text("\n".join(sources) + "\n")
    (tmp_path / "s.en").write_text("\n".join(targets) + "\n")
    done = cli("scripts/align.py", f"checkpoint={checkpoint}", f"source={tmp_path}/s.de", f"target={tmp_path}/s.en",
               "words=subwords", "precision=fp32", "method=attention", "layer=1", "head=0", f"shift={shift}")
    assert done.returncode == 0, done.stderr[-2000:]

    loaded = load_model(str(checkpoint), torch.device("cpu"))
    expected = []
    for source, target in zip(sources, targets):
        src, tgt = loaded.tokenizer.encode([source, target])
        with torch.no_grad():
            out = loaded.model(torch.tensor([src + [EOS_ID]]), torch.tensor([[BOS_ID] + tgt]), need_attention=True)
        attention = out.cross_attention[1][0, 0]  # layer 1, head 0: (target steps, source + EOS)
        rows = attention[1:len(tgt) + 1] if shift else attention[:len(tgt)]
        expected.append({(int(i), j) for j, i in enumerate(rows[:, :len(src)].argmax(dim=1))})
    assert links_of(done.stdout) == expected


def copy_links(copy_model, tmp_path, *settings) -> tuple[list[str], list[set]]:
    run_dir, sentences = copy_model
    (tmp_path / "pairs.de").write_text("\n".join(sentences) + "\n")
    done = cli("scripts/align.py", f"checkpoint={run_dir}/checkpoints/best.pt", f"source={tmp_path}/pairs.de",
               f"target={tmp_path}/pairs.de", "method=attention", "layer=-1", *settings)
    assert done.returncode == 0, done.stderr[-2000:]
    return sentences, links_of(done.stdout)


def test_a_copy_model_links_each_word_to_itself_at_the_step_that_outputs_it(copy_model, tmp_path):
    sentences, links = copy_links(copy_model, tmp_path, "shift=false")
    assert links == [{(i, i) for i in range(len(s.split()))} for s in sentences]


def test_a_copy_model_links_each_word_to_the_next_at_the_step_that_reads_it(copy_model, tmp_path):
    # Shifted, the step where word j is the decoder's input is the step that outputs word j + 1: a model trained
    # to copy looks at source word j + 1 there (the last word's step outputs EOS, and is left out here).
    sentences, links = copy_links(copy_model, tmp_path, "shift=true")
    for sentence, found in zip(sentences, links):
        last = len(sentence.split()) - 1
        assert {(i, j) for i, j in found if j < last} == {(j + 1, j) for j in range(last)}


def test_threshold_rule_links_every_pair_above_it(copy_model, tmp_path):
    sentences, everything = copy_links(copy_model, tmp_path, "shift=false", "rule=threshold", "threshold=0")
    assert everything == [{(i, j) for i in range(len(s.split())) for j in range(len(s.split()))} for s in sentences]
    _, nothing = copy_links(copy_model, tmp_path, "shift=false", "rule=threshold", "threshold=1.01")
    assert nothing == [set() for _ in sentences]
    # A weight of at least 0.5 is its row's largest: a subset of the argmax links (here the diagonal).
    _, sharp = copy_links(copy_model, tmp_path, "shift=false", "rule=threshold", "threshold=0.5")
    diagonal = [{(i, i) for i in range(len(s.split()))} for s in sentences]
    assert all(found <= diag for found, diag in zip(sharp, diagonal))
    assert sum(map(len, sharp)) >= 0.9 * sum(map(len, diagonal))


def test_final_punctuation_links_only_to_final_punctuation():
    words = torch.tensor([[0.1, 0.2, 0.7], [0.6, 0.1, 0.3], [0.3, 0.6, 0.1]], dtype=torch.float64)
    source, ends_in_mark, no_mark = ["▁Ein", "▁Hund", "▁."], ["▁A", "▁dog", "▁."], ["▁A", "▁dog", "▁runs"]
    # The source's final mark: no other word may link there; a target's final mark links only there.
    assert final_punctuation(words, source, ends_in_mark).argmax(dim=1).tolist() == [1, 0, 2]
    assert final_punctuation(words, source, no_mark).argmax(dim=1).tolist() == [1, 0, 1]
    assert torch.equal(final_punctuation(words, ["▁Ein", "▁Hund", "▁bellt"], ends_in_mark), words)


def test_align_py_applies_the_final_punctuation_rule(trained, tmp_path):
    """On tokenized gold pairs whose sides end in a separate mark, through scripts/align.py's attention path."""
    pairs = [(s, t) for s, t in zip((GOLD / "dev.de").read_text().splitlines(),
                                    (GOLD / "dev.en").read_text().splitlines())
             if max(len(s), len(t)) < 90 and s.endswith(" .") and t.endswith(" .")]  # the tiny model: 64 positions
    assert len(pairs) >= 8
    (tmp_path / "s.de").write_text("".join(s + "\n" for s, _ in pairs))
    (tmp_path / "s.en").write_text("".join(t + "\n" for _, t in pairs))
    done = cli("scripts/align.py", f"checkpoint={trained}/checkpoints/best.pt", f"source={tmp_path}/s.de",
               f"target={tmp_path}/s.en", "method=attention", "precision=fp32")
    assert done.returncode == 0, done.stderr[-2000:]
    for (source, target), links in zip(pairs, links_of(done.stdout), strict=True):
        last_src, last_tgt = len(source.split()) - 1, len(target.split()) - 1
        assert {(i, j) for i, j in links if i == last_src or j == last_tgt} == {(last_src, last_tgt)}


def test_symmetrization_rules_on_a_hand_worked_example():
    forward = {(0, 0), (1, 1), (2, 2), (0, 2), (3, 4)}
    reverse = {(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)}
    assert SYMMETRIZE["intersection"](forward, reverse) == {(0, 0), (1, 1), (2, 2)}
    assert SYMMETRIZE["union"](forward, reverse) == forward | reverse
    # grow: (3,3) touches (2,2) diagonally and aligns source 3; then (3,4) and (4,4) grow from (3,3).
    # (0,2) never enters: source 0 and target 2 are both aligned already.
    assert SYMMETRIZE["grow-diag-final"](forward, reverse) == {(0, 0), (1, 1), (2, 2), (3, 3), (3, 4), (4, 4)}
    # final: a forward-only link to an unaligned word is added even far from the others
    assert SYMMETRIZE["grow-diag-final"]({(0, 0), (5, 5)}, {(0, 0)}) == {(0, 0), (5, 5)}


def test_both_directions_symmetrize_and_line_counts_always_match(trained, tmp_path):
    (tmp_path / "s.de").write_text("Ein Hund läuft .\n\nZwei Männer .\nEin Kind\n" + "Hund " * 80 + "\n")
    (tmp_path / "s.en").write_text("A dog runs .\nA cat .\n\nA child\nA dog .\n")
    checkpoint = trained / "checkpoints" / "best.pt"  # de->en; its reverse here is itself, read en->de
    outputs = {}
    for direction in ("forward", "reverse", "both"):
        done = cli("scripts/align.py", f"checkpoint={checkpoint}", f"reverse_checkpoint={checkpoint}",
                   f"source={tmp_path}/s.de", f"target={tmp_path}/s.en", f"direction={direction}",
                   f"output={tmp_path}/{direction}.align", "symmetrize=union",
                   "eflomal=off")  # the head's links each way: forward alone would merge with eflomal's
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[direction] = links_of((tmp_path / f"{direction}.align").read_text())
        assert (tmp_path / f"{direction}.align").read_text().count("\n") == 5
        assert outputs[direction][1] == outputs[direction][2] == set()  # an empty side: an empty line
        assert all(i < 63 for i, _ in outputs[direction][4])  # the over-long line: read from its first subwords
    for line in range(5):
        assert outputs["both"][line] == outputs["forward"][line] | outputs["reverse"][line]


def read_gold(half: str):
    sources = (GOLD / f"{half}.de").read_text(encoding="utf-8").splitlines()
    targets = (GOLD / f"{half}.en").read_text(encoding="utf-8").splitlines()
    gold = [read_pharaoh(line, f"{half}.align:{n}") for n, line in
            enumerate((GOLD / f"{half}.align").read_text().splitlines(), start=1)]
    lines = [int(n) for n in (GOLD / f"{half}.lines").read_text().split()]
    return sources, targets, gold, lines


@pytest.mark.parametrize("half, split, pairs", [("dev", "val", 36), ("test", "val", 36),
                                               ("heldout", "test_2017_flickr", 100)])
def test_the_gold_standard_is_multi30k_and_not_kind_to_the_diagonal(half, split, pairs):
    sources, targets, gold, lines = read_gold(half)
    assert len(sources) == len(targets) == len(gold) == len(lines) == len(set(lines)) == pairs
    originals = {}
    for lang in ("de", "en"):
        with gzip.open(ROOT / "data" / "multi30k" / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
            originals[lang] = f.read().splitlines()
    tokenize = Tokenizer13a()
    for source, target, (sure, possible), line in zip(sources, targets, gold, lines):
        # traceable to its Multi30k line
        assert (source, target) == (tokenize(originals["de"][line]), tokenize(originals["en"][line]))
        assert sure <= possible and all(i < len(source.split()) and j < len(target.split()) for i, j in possible)
    diagonal = [diagonal_links(len(s.split()), len(t.split())) for s, t in zip(sources, targets)]
    assert alignment_error_rate(gold, diagonal)["aer"] > 0.45  # reordering: word order alone scores badly


@pytest.mark.parametrize("problem", ["direction", "counts", "folder"])
def test_align_py_bad_input_is_one_line_and_a_new_folder_is_made(trained, tmp_path, problem):
    (tmp_path / "a").write_text("x\ny\n")
    (tmp_path / "b").write_text("x\n" if problem == "counts" else "x\ny\n")
    extra = {"direction": ["direction=both"], "counts": [], "folder": [f"output={tmp_path}/new/dir/out.align"]}
    done = cli("scripts/align.py", f"checkpoint={trained}/checkpoints/best.pt", f"source={tmp_path}/a",
               f"target={tmp_path}/b", *extra[problem])
    if problem == "folder":
        assert done.returncode == 0, done.stderr[-2000:]
        assert (tmp_path / "new" / "dir" / "out.align").read_text().count("\n") == 2
        return
    assert done.returncode == 2
    expected = {"direction": "direction=both needs reverse_checkpoint", "counts": "has 2 lines but"}[problem]
    assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1
