"""Greedy and beam search against each other, against the model's own rescoring, and against brute force."""

import itertools

import pytest
import torch

from mt.model import ModelConfig, Transformer
from mt.search import beam_search, greedy_search, length_penalty, score_outputs
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID


def random_model(seed: int, vocab: int = 40, max_positions: int = 64) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=vocab, d_model=32, n_heads=4, encoder_layers=2, decoder_layers=2,
                                    ffn_dim=64, max_positions=max_positions)).eval()
    with torch.no_grad():  # sharper distributions than a fresh init, so search decisions matter
        model.output.weight.mul_(6.0)
    return model


def sources(seed: int, vocab: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, vocab, (5, 9), generator=g)
    for row, length in enumerate([9, 3, 6, 1, 7]):
        src[row, length - 1] = EOS_ID
        src[row, length:] = PAD_ID
    return src


@pytest.mark.parametrize("seed", range(3))
def test_beam_of_one_without_length_penalty_equals_greedy(seed):
    model, src = random_model(seed), sources(seed)
    greedy = greedy_search(model, src, max_len_a=1.0, max_len_b=5)
    beam = beam_search(model, src, beam_size=1, nbest=1, alpha=0.0, max_len_a=1.0, max_len_b=5)
    assert [h[0].tokens for h in beam] == greedy.tokens
    torch.testing.assert_close(torch.tensor([h[0].log_prob for h in beam]), torch.tensor(greedy.scores))


@pytest.mark.parametrize("seed", range(3))
def test_beam_search_with_the_cache_equals_beam_search_without_it(seed):
    model, src = random_model(seed), sources(seed)
    cached = beam_search(model, src, beam_size=4, nbest=3, alpha=0.6, max_len_a=1.5, max_len_b=6, use_cache=True)
    recomputed = beam_search(model, src, beam_size=4, nbest=3, alpha=0.6, max_len_a=1.5, max_len_b=6, use_cache=False)
    for with_cache, without in zip(cached, recomputed):
        assert [h.tokens for h in with_cache] == [h.tokens for h in without]
        scores = [torch.tensor([h.score for h in hyps]) for hyps in (with_cache, without)]
        torch.testing.assert_close(*scores)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_reported_scores_are_the_models_own_length_normalized_log_probabilities(alpha):
    model, src = random_model(3), sources(3)
    nbests = beam_search(model, src, beam_size=5, nbest=5, alpha=alpha, max_len_a=1.5, max_len_b=6)
    for rank in range(5):
        outputs = [hyps[rank].tokens for hyps in nbests]
        rescored = score_outputs(model, src, outputs).log_probs
        for hyps, log_prob, output in zip(nbests, rescored, outputs):
            assert hyps[rank].log_prob == pytest.approx(log_prob, abs=1e-4)
            assert hyps[rank].score == pytest.approx(log_prob / length_penalty(len(output) + 1, alpha), abs=1e-4)
    for hyps in nbests:
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == len(hyps)
        assert not any(PAD_ID in h.tokens or BOS_ID in h.tokens for h in hyps)


def test_sentences_translate_the_same_alone_and_in_a_batch():
    model, src = random_model(4), sources(4)
    together = beam_search(model, src, beam_size=3, nbest=1, alpha=0.6, max_len_a=1.5, max_len_b=6)
    for row in range(src.size(0)):
        length = int(src[row].ne(PAD_ID).sum())
        alone = beam_search(model, src[row:row + 1, :length], beam_size=3, nbest=1, alpha=0.6, max_len_a=1.5,
                            max_len_b=6)
        assert alone[0][0].tokens == together[row][0].tokens
        assert alone[0][0].score == pytest.approx(together[row][0].score, abs=1e-4)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.5])
def test_a_wide_enough_beam_finds_the_exact_best_output(alpha):
    vocab, most = 8, 3  # every output of up to 3 of the 5 possible tokens: 1 + 5 + 25 + 125 sequences
    model, src = random_model(5, vocab=vocab), sources(5, vocab=vocab)[:3]
    found = beam_search(model, src, beam_size=64, nbest=1, alpha=alpha, max_len_a=0.0, max_len_b=most + 1)
    for row in range(src.size(0)):
        tokens = [t for t in range(vocab) if t not in (PAD_ID, BOS_ID, EOS_ID)]
        outputs = [list(seq) for n in range(most + 1) for seq in itertools.product(tokens, repeat=n)]
        rescored = score_outputs(model, src[row:row + 1].expand(len(outputs), -1), outputs).log_probs
        best = max(lp / length_penalty(len(o) + 1, alpha) for lp, o in zip(rescored, outputs))
        assert found[row][0].score == pytest.approx(best, abs=1e-4)


def test_outputs_stop_at_the_length_bound():
    model, src = random_model(6), sources(6)
    found = beam_search(model, src, beam_size=3, nbest=1, alpha=0.6, max_len_a=0.5, max_len_b=2)
    for hyps, length in zip(found, [9, 3, 6, 1, 7]):
        assert len(hyps[0].tokens) + 1 <= int(length * 0.5 + 2)


def test_length_penalty_is_gnmts_formula_at_hand_computed_points():
    # ((5 + length) / 6) ** alpha: 1 at length 1 for any alpha, so one-token outputs keep their log-probability as
    # their score; a constant factor (say a 5 for the 6) ranks alike but changes every score n-best prints.
    assert length_penalty(1, 1.0) == pytest.approx(1.0)
    assert length_penalty(7, 0.5) == pytest.approx(2.0 ** 0.5)
    assert length_penalty(13, 2.0) == pytest.approx(9.0)
    assert length_penalty(9, 0.0) == 1.0
    assert torch.allclose(length_penalty(torch.tensor([1.0, 7.0]), 1.0), torch.tensor([1.0, 2.0]))
