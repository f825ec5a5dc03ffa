"""The Transformer: incremental decoding equals teacher forcing, masks hold, ties and norms as configured."""

import pytest
import torch

from mt.model import ModelConfig, Transformer

PAD = 0


def tiny(**overrides) -> Transformer:
    torch.manual_seed(0)
    cfg = dict(vocab_size=30, d_model=16, n_heads=2, encoder_layers=2, decoder_layers=2, ffn_dim=32, dropout=0.1)
    return Transformer(ModelConfig(**{**cfg, **overrides})).eval()


def batch():
    src = torch.tensor([[5, 6, 7, 3, PAD, PAD], [8, 9, 10, 11, 12, 3]])
    tgt = torch.tensor([[2, 13, 14, 15, 16], [2, 17, 18, 19, 20]])
    return src, tgt


@pytest.mark.parametrize("pre_norm", [True, False])
def test_step_by_step_decoding_with_cache_equals_teacher_forcing(pre_norm):
    model = tiny(pre_norm=pre_norm)
    src, tgt = batch()
    full = model(src, tgt, need_attention=True)
    state = model.start_decoding(src)
    for t in range(tgt.size(1)):
        step = model.decode_step(tgt[:, t:t + 1], state, need_attention=True)
        torch.testing.assert_close(step.logits[:, 0], full.logits[:, t], atol=1e-5, rtol=1e-4)
        for layer, weights in enumerate(step.cross_attention):
            torch.testing.assert_close(weights[:, :, 0], full.cross_attention[layer][:, :, t], atol=1e-6, rtol=1e-5)
    assert state.step == tgt.size(1)


def test_padding_in_the_source_changes_nothing():
    model = tiny()
    src, tgt = batch()
    alone = model(src[:1, :4], tgt[:1]).logits
    padded = model(src, tgt).logits[:1]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-4)


def test_future_target_tokens_do_not_change_earlier_outputs():
    model = tiny()
    src, tgt = batch()
    changed = tgt.clone()
    changed[:, 3:] = 21
    torch.testing.assert_close(model(src, changed).logits[:, :3], model(src, tgt).logits[:, :3])


def test_tied_embeddings_share_one_matrix_and_untied_do_not():
    tied, untied = tiny(), tiny(tie_embeddings=False)
    assert tied.src_embed.weight is tied.tgt_embed.weight is tied.output.weight
    assert untied.src_embed.weight is not untied.tgt_embed.weight
    assert sum(p.numel() for p in untied.parameters()) > sum(p.numel() for p in tied.parameters())


def test_pre_norm_has_final_norms_and_post_norm_does_not():
    assert isinstance(tiny(pre_norm=True).encoder_norm, torch.nn.LayerNorm)
    assert isinstance(tiny(pre_norm=False).encoder_norm, torch.nn.Identity)


def test_too_long_input_is_refused_with_a_clear_message():
    model = tiny(max_positions=8)
    with pytest.raises(ValueError, match="max_positions=8"):
        model(torch.ones(1, 9, dtype=torch.long), torch.ones(1, 2, dtype=torch.long))
