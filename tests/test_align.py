"""Subword-to-word merging, hard links, Pharaoh reading and AER, on hand-worked examples."""

import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from mt.align import (
    alignment_error_rate,
    hard_links,
    merge_to_words,
    read_pharaoh,
    select_heads,
    to_pharaoh,
    word_index,
)


def test_word_index_follows_sentencepiece_word_starts():
    assert word_index(["▁Ein", "▁Hund", "e", "▁läuft", "."]) == [0, 1, 1, 2, 2]
    assert word_index(["ab", "▁c"]) == [0, 1]  # a first piece without the marker still starts word 0
    assert word_index([]) == []
    # a bare space piece joins the next word, or the last one at the end; it never makes a word of its own
    assert word_index(["▁A", "▁", "B", "▁", "▁C", "▁"]) == [0, 1, 1, 2, 2, 2]
    assert word_index(["▁"]) == [-1]


def test_merge_sums_source_pieces_averages_target_pieces_and_drops_eos():
    src = ["▁Hund", "e", "▁laufen"]  # words: Hunde, laufen (+ EOS column)
    tgt = ["▁dog", "s", "▁run"]  # words: dogs, run (+ EOS row)
    attention = torch.tensor([
        [0.4, 0.4, 0.1, 0.1],
        [0.2, 0.2, 0.2, 0.4],
        [0.1, 0.0, 0.6, 0.3],
        [0.0, 0.0, 0.0, 1.0],  # EOS row: dropped
    ])
    words = merge_to_words(attention, src, tgt)
    # rows renormalized without the EOS column, then: dogs = mean of rows 0-1; source Hunde = pieces 0+1
    row0 = torch.tensor([0.4, 0.4, 0.1]) / 0.9
    row1 = torch.tensor([0.2, 0.2, 0.2]) / 0.6
    row2 = torch.tensor([0.1, 0.0, 0.6]) / 0.7
    expected = torch.tensor([
        [(row0[0] + row0[1] + row1[0] + row1[1]) / 2, (row0[2] + row1[2]) / 2],
        [row2[0] + row2[1], row2[2]],
    ], dtype=torch.float64)
    torch.testing.assert_close(words, expected)
    torch.testing.assert_close(words.sum(dim=1), torch.ones(2, dtype=torch.float64))
    assert hard_links(words) == [(0, 0), (1, 1)]
    assert to_pharaoh(hard_links(words)) == "0-0 1-1"


def test_select_heads_takes_one_layer_and_averages_or_picks_heads():
    attention = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    torch.testing.assert_close(select_heads(attention, -2, None), attention[0].mean(dim=0))
    torch.testing.assert_close(select_heads(attention, 1, 2), attention[1, 2])


def test_pharaoh_forms_for_sure_and_possible_links():
    sure, possible = read_pharaoh("0-0 1-2S 2?3 3-4p 4-5P")
    assert sure == {(0, 0), (1, 2)}
    assert possible == {(0, 0), (1, 2), (2, 3), (3, 4), (4, 5)}
    with pytest.raises(ValueError, match="gold:3: '1p3' is not a link"):
        read_pharaoh("0-0 1p3", "gold:3")


GOLD = "0-0 1-1 2?2 1-3p\n0-0\n\n"
PRED = "0-0 1-1 2-2\n1-0\n\n"


def test_aer_precision_recall_on_a_hand_computed_example():
    gold = [read_pharaoh(line) for line in GOLD.splitlines()]
    pred = [read_pharaoh(line)[1] for line in PRED.splitlines()]
    # |A| = 4, |S| = 3, |A & S| = 2, |A & P| = 3
    result = alignment_error_rate(gold, pred)
    assert result["aer"] == pytest.approx(1 - 5 / 7)
    assert result["precision"] == pytest.approx(3 / 4)
    assert result["recall"] == pytest.approx(2 / 3)
    assert alignment_error_rate(gold, [p for _, p in gold])["aer"] == 0.0


def test_eval_alignment_script(tmp_path):
    (tmp_path / "gold").write_text(GOLD)
    (tmp_path / "pred").write_text(PRED)
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "eval_alignment.py"), str(tmp_path / "gold"),
                             str(tmp_path / "pred")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("alignment  AER 0.2857  precision 0.7500  recall 0.6667")
    (tmp_path / "short").write_text("0-0\n")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "eval_alignment.py"), str(tmp_path / "gold"),
                             str(tmp_path / "short")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'gold'} has 3 lines but {tmp_path / 'short'} has 1"
