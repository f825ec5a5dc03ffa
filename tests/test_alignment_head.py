"""The alignment head: its loss against a float64 reference, the gold distributions it learns, its training on a
tiny corpus, and eflomal as a source of links (run as a program of its own)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, copy_config, copy_sentences, write_pair
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mt.alignment.eflomal import eflomal_command, eflomal_links
from mt.alignment.head import gold_distributions
from mt.alignment.links import read_pharaoh
from mt.alignment.model_links import ForcedAligner, LinkSettings
from mt.commands.train import run
from mt.config import TrainConfig
from mt.files import InputError
from mt.loss import alignment_loss
from mt.tokenizer import BOS_ID, EOS_ID, TokenizerConfig, train_or_load
from mt.translator import load_model

needs_eflomal = pytest.mark.skipif(eflomal_command() is None, reason="eflomal is not installed (the align extra)")


def test_the_alignment_loss_equals_a_float64_reference_and_passes_gradcheck():
    torch.manual_seed(0)
    scores = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    attention = scores.softmax(dim=-1)
    gold = torch.zeros(3, 5, 7, dtype=torch.float64)
    for b, t, links in ((0, 1, [2]), (0, 2, [3, 4]), (1, 4, [0, 1, 6]), (2, 3, [5])):
        gold[b, t, links] = 1.0 / len(links)
    expected = 0.0
    for b in range(3):
        for t in range(5):
            for s in range(7):
                if gold[b, t, s] > 0:
                    expected -= gold[b, t, s].item() * torch.log(attention[b, t, s]).item()
    assert alignment_loss(attention, gold).item() == pytest.approx(expected, rel=1e-12)
    assert alignment_loss(attention.float(), gold.float()).dtype == torch.float32
    assert torch.autograd.gradcheck(lambda x: alignment_loss(x.softmax(dim=-1), gold), (scores,))
    # Rows without links add nothing: their gradient is zero.
    alignment_loss(attention, gold).backward()
    assert scores.grad[0, 0].abs().max() == 0 and scores.grad[0, 1].abs().max() > 0


class Pieces:
    """A stand-in vocabulary: id -> SentencePiece piece, for hand-made examples."""

    def __init__(self, pieces):
        self.table = pieces

    def pieces(self, ids):
        return [self.table[i] for i in ids]


def test_gold_distributions_spread_each_target_pieces_links_over_the_source_pieces_at_its_input_step():
    vocab = Pieces(["▁Hund", "e", "▁laufen", "▁dog", "s", "▁run", "▁fast"])
    # Hunde laufen / dogs run fast: Hunde-dogs, laufen-run; "fast" has no link.
    gold = gold_distributions([[0, 1, 2]], [[3, 4, 5, 6]], ["0-0 1-1"], vocab, src_len=4, tgt_len=6)
    expected = torch.zeros(1, 6, 4)
    expected[0, 1, :2] = expected[0, 2, :2] = 0.5  # ▁dog and s (steps 1, 2): the two pieces of Hunde
    expected[0, 3, 2] = 1.0  # ▁run (step 3): laufen
    torch.testing.assert_close(gold, expected)  # step 0 (BOS), ▁fast's step 4, padding step 5: zero
    expected[0, 4, 3] = 1.0  # with null: ▁fast, linked to nothing, to the source's end (EOS, column 3)
    torch.testing.assert_close(gold_distributions([[0, 1, 2]], [[3, 4, 5, 6]], ["0-0 1-1"], vocab, src_len=4,
                                                  tgt_len=6, null=True), expected)


def first_but_last(sentence: str) -> str:
    return " ".join(f"0-{j}" for j in range(len(sentence.split()) - 1))


def copy_training(tmp_path, **align) -> TrainConfig:
    """The copy model's training, its alignment head taught that each word links to the sentence's first, but
    the last word, which links to nothing."""
    config = copy_config(tmp_path, 400, log_every=50)
    (tmp_path / "first.align").write_text("".join(first_but_last(s) + "\n" for s in copy_sentences(600, seed=0)))
    config.align.weight, config.align.links, config.align.links_file = 1.0, "file", str(tmp_path / "first.align")
    for key, value in align.items():
        setattr(config.align, key, value)
    return config


@pytest.mark.parametrize("full_context", [True, False])
def test_the_head_learns_its_links_and_the_alignments_read_it(tmp_path, full_context):
    # Links that attention would never find by itself: each word to the first word of its sentence, but the last.
    config = copy_training(tmp_path, layer=0, head=1, full_context=full_context)
    run(config, tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/alignment_loss")]
    assert len(losses) == 8 and losses[-1] < losses[0] / 10

    checkpoint = tmp_path / "run" / "checkpoints" / "best.pt"
    assert load_model(str(checkpoint), torch.device("cpu")).alignment_head.__dict__ == {
        "layer": 0, "head": 1, "shift": True, "null": True, "full_context": full_context}
    test = copy_sentences(10, seed=1)
    (tmp_path / "test.de").write_text("\n".join(test) + "\n")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "align.py"), f"checkpoint={checkpoint}",
                           f"source={tmp_path}/test.de", f"target={tmp_path}/test.de", "eflomal=off"],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [first_but_last(s) for s in test]

    # The aligner reads the pass the head was trained on: its matrix is that pass's head, straight from the model.
    loaded = load_model(str(checkpoint), torch.device("cpu"))
    matrix = ForcedAligner(loaded, LinkSettings(), 4000, torch.device("cpu"), "fp32").attention(test[:1], test[:1])[0]
    ids = loaded.tokenizer.encode(test[:1])[0]
    out = loaded.model(torch.tensor([ids + [EOS_ID]]), torch.tensor([[BOS_ID] + ids]),
                       **loaded.alignment_head.pass_arguments())
    torch.testing.assert_close(matrix.matrix, loaded.alignment_head.weights(out)[0].detach())


def test_a_links_file_of_the_wrong_length_is_refused_in_one_line(tmp_path):
    config = copy_training(tmp_path)
    (tmp_path / "short.align").write_text("0-0\n")
    config.align.links_file = str(tmp_path / "short.align")
    with pytest.raises(InputError, match=r"short.align has 1 lines but the training data has 600 pairs"):
        run(config, tmp_path / "run")


def test_with_a_train_limit_the_head_trains_on_the_first_lines_of_the_links_file(tmp_path):
    # The shipped Multi30k links cover all 29,000 pairs; data.train_limit=N trains on the first N of them.
    config = copy_training(tmp_path)
    config.data.train_limit = 200
    config.trainer.max_steps = config.trainer.eval_every = 5
    run(config, tmp_path / "run")
    links = (tmp_path / "first.align").read_text().splitlines()
    assert (tmp_path / "run" / "alignment_links.txt").read_text().splitlines() == links[:200]


@needs_eflomal
def test_eflomal_links_are_read_mapped_to_words_and_symmetrized(tmp_path):
    # Copies of sentences of distinct words: both directions, and so their symmetrization, are the diagonal;
    # a word with punctuation attached is one word to us, two tokens to eflomal.
    sentences = [s + " ." if n % 3 else s.replace(" ", ", ", 1) + "." for n, s in enumerate(copy_sentences(300, 0))]
    links = eflomal_links(sentences, sentences)
    assert len(links) == len(sentences)
    agree = sum(found == {(i, i) for i in range(len(s.split()))} for found, s in zip(links, sentences))
    assert agree >= 0.95 * len(sentences)


def compound_pairs(count: int, seed: int) -> tuple[list[str], list[str]]:
    """Copy pairs whose source writes its first two words as one (a compound): "HundKatze Haus" | "Hund Katze Haus"."""
    targets = copy_sentences(count, seed)
    return [s.replace(" ", "", 1) for s in targets], targets


def compound_links(target: str) -> set:
    return {(0, 0), (0, 1)} | {(j - 1, j) for j in range(2, len(target.split()))}


@needs_eflomal
@pytest.mark.parametrize("runs, votes", [(1, 1), (3, 3)])
def test_eflomal_on_pieces_links_a_compound_to_each_of_its_words(tmp_path, runs, votes):
    # SentencePiece cuts each compound into the pieces of its two words; eflomal links the pieces and the links
    # come back as word links: the compound (source word 0) to target words 0 and 1, the rest one word on.
    sources, targets = compound_pairs(300, seed=5)
    tokenizer = train_or_load(sources + targets, "compounds", TokenizerConfig(vocab_size=60), tmp_path)
    assert len(tokenizer.pieces(tokenizer.encode([sources[0].split()[0]])[0])) >= 2
    links = eflomal_links(sources, targets, tokenizer=tokenizer, runs=runs, votes=votes)
    agree = sum(found == compound_links(t) for found, t in zip(links, targets))
    assert agree >= 0.9 * len(targets)


@needs_eflomal
def test_training_aligns_its_pairs_with_eflomal_on_the_models_pieces(tmp_path):
    # align.links=eflomal on pieces, with a vote over runs: the links the run trains on and keeps link each compound
    # to both of its words, which eflomal on whole words mostly misses.
    config = copy_config(tmp_path, 2)
    config.align.eflomal_runs, config.align.eflomal_votes = 3, 2
    sources, targets = compound_pairs(300, seed=6)
    config.data.train = write_pair(tmp_path / "data", "compounds", sources, targets)
    config.data.dev = write_pair(tmp_path / "data", "dev", sources[:10], targets[:10])
    config.align.weight, config.align.links = 1.0, "eflomal"
    run(config, tmp_path / "run")
    links = [read_pharaoh(line)[1] for line in (tmp_path / "run" / "alignment_links.txt").read_text().splitlines()]
    assert len(links) == len(targets)
    assert sum(found == compound_links(t) for found, t in zip(links, targets)) >= 0.9 * len(targets)


@needs_eflomal
def test_eflomal_refuses_more_votes_than_runs_in_one_line():
    with pytest.raises(InputError, match="3 of 2 runs"):
        eflomal_links(["a b"], ["a b"], runs=2, votes=3)


@needs_eflomal
def test_eval_alignment_runs_eflomal_beside_the_prediction_and_the_diagonal(tmp_path):
    sentences = copy_sentences(200, seed=3)
    prefix = write_pair(tmp_path, "corpus", sentences, sentences)
    gold = copy_sentences(5, seed=4)
    (tmp_path / "gold.de").write_text("\n".join(gold) + "\n")
    (tmp_path / "gold.align").write_text("".join(" ".join(f"{i}-{i}" for i in range(len(s.split()))) + "\n"
                                                 for s in gold))
    (tmp_path / "first.align").write_text("".join(" ".join(f"0-{j}" for j in range(len(s.split()))) + "\n"
                                                  for s in gold))
    tokenizer = train_or_load(sentences, "copies", TokenizerConfig(vocab_size=40), tmp_path)
    tokenizer.save(tmp_path)  # spm.model
    command = [sys.executable, str(ROOT / "scripts" / "eval_alignment.py"), str(tmp_path / "gold.align"),
               str(tmp_path / "first.align"), "--source", str(tmp_path / "gold.de"), "--target",
               str(tmp_path / "gold.de")]
    done = subprocess.run(command + ["--eflomal", prefix, "--languages", "de", "en", "--eflomal-pieces",
                                     str(tmp_path / "spm.model"), "--eflomal-runs", "3", "--eflomal-votes", "2",
                                     "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    scores = json.loads(done.stdout)
    assert scores["diagonal"]["aer"] == 0.0 and scores["eflomal"]["aer"] < 0.1
    assert scores["eflomal-pieces"]["aer"] < 0.1 and scores["eflomal-pieces"]["links"] == scores["diagonal"]["links"]
    assert scores["aer"] > 0.5  # the prediction: every word to the first
    # Pieces without the corpus to align them with, and a file that is not a SentencePiece model: one line each.
    for extra, message in ((["--eflomal-pieces", str(tmp_path / "spm.model")], "--eflomal-pieces needs --eflomal"),
                           (["--eflomal", prefix, "--eflomal-pieces", str(tmp_path / "gold.de")],
                            "not a SentencePiece model")):
        done = subprocess.run(command + extra, capture_output=True, text=True, timeout=600)
        assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
