"""Subword-to-word merging, hard links, Pharaoh reading and AER, on hand-worked examples."""

import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from mt.alignment.links import (
    alignment_error_rate,
    bootstrap_aer,
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


def random_alignments(pairs: int, seed: int):
    """Gold links of `pairs` 8x8 sentence pairs and two predictions: one right on half the words, one on all but one."""
    generator = torch.Generator().manual_seed(seed)
    gold, half_right, almost_right = [], [], []
    for _ in range(pairs):
        order = torch.randperm(8, generator=generator).tolist()
        sure = {(i, j) for j, i in enumerate(order)}
        gold.append((sure, set(sure)))
        half_right.append({(i, j) if j % 2 else ((i + 1) % 8, j) for i, j in sure})
        almost_right.append({(i, j) if j else ((i + 1) % 8, j) for i, j in sure})
    return gold, half_right, almost_right


def test_bootstrap_intervals_hold_the_aer_narrow_with_more_pairs_and_pair_the_aligners():
    gold, half, almost = random_alignments(30, seed=0)
    # Per pair, a random share of the words right, so the AER varies from pair to pair.
    mixed = [links if k % 3 else almost[k] for k, links in enumerate(half)]
    result = bootstrap_aer(gold, {"mixed": mixed, "same": list(mixed), "almost": almost}, reference="mixed",
                           samples=500)
    low, high = result["mixed"]["aer_interval"]
    assert low < alignment_error_rate(gold, mixed)["aer"] < high
    # The same links under another name: paired resamples give a difference of exactly zero, never lower.
    assert result["same"]["difference_interval"] == (0.0, 0.0) and result["same"]["lower_share"] == 0.0
    # Better on every pair: lower on every resample.
    assert result["almost"]["difference_interval"][1] < 0 and result["almost"]["lower_share"] == 1.0
    assert "difference_interval" not in result["mixed"]
    # Four times the pairs: about half the width.
    wide = high - low
    low, high = bootstrap_aer(gold * 4, {"mixed": mixed * 4}, samples=500)["mixed"]["aer_interval"]
    assert 0.3 * wide < high - low < 0.7 * wide
    # One pair: every resample is that pair.
    aer = alignment_error_rate(gold[:1], half[:1])["aer"]
    assert bootstrap_aer(gold[:1], {"half": half[:1]}, samples=50)["half"]["aer_interval"] == (aer, aer)


def test_eval_alignment_bootstrap_prints_intervals_and_the_difference_from_the_first_prediction(tmp_path):
    gold, half, almost = random_alignments(20, seed=1)
    (tmp_path / "gold").write_text("".join(to_pharaoh(sure) + "\n" for sure, _ in gold))
    (tmp_path / "half").write_text("".join(to_pharaoh(links) + "\n" for links in half))
    (tmp_path / "almost").write_text("".join(to_pharaoh(links) + "\n" for links in almost))
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "eval_alignment.py"), str(tmp_path / "gold"),
                             str(tmp_path / "half"), str(tmp_path / "almost"), "--bootstrap", "200"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    half_row, almost_row = result.stdout.splitlines()
    assert half_row.startswith("half    AER 0.5000") and "95% [" in half_row and "minus" not in half_row
    assert almost_row.startswith("almost  AER 0.1250") and almost_row.endswith("lower in 100%")
    assert "minus half [-0.3750, -0.3750]" in almost_row
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "eval_alignment.py"), str(tmp_path / "gold"),
                             str(tmp_path / "half"), "--bootstrap", "-1"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --bootstrap -1: the number of resamples cannot be negative"
