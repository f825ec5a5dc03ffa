"""The Transformer: incremental decoding equals teacher forcing, masks hold, ties and norms as configured."""

import pytest
import torch

from mt.model import ModelConfig, ScaleNorm, Transformer

PAD = 0


def tiny(**overrides) -> Transformer:
    torch.manual_seed(0)
    cfg = dict(vocab_size=30, d_model=16, n_heads=2, encoder_layers=2, decoder_layers=2, ffn_dim=32, dropout=0.1)
    return Transformer(ModelConfig(**{**cfg, **overrides})).eval()


def batch():
    src = torch.tensor([[5, 6, 7, 3, PAD, PAD], [8, 9, 10, 11, 12, 3]])
    tgt = torch.tensor([[2, 13, 14, 15, 16], [2, 17, 18, 19, 20]])
    return src, tgt


@pytest.mark.parametrize("settings", [{"pre_norm": True}, {"pre_norm": False},
                                      {"norm": "scale", "fix_norm": True}, {"pre_norm": False, "norm": "scale"}])
def test_step_by_step_decoding_with_cache_equals_teacher_forcing(settings):
    model = tiny(**settings)
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


def test_scale_norm_equals_a_float64_reference_and_replaces_every_layer_norm():
    torch.manual_seed(1)
    norm = ScaleNorm(16)
    with torch.no_grad():
        norm.gain.fill_(2.5)  # not its starting sqrt(16), so the learned length shows
    x = torch.randn(3, 5, 16) * torch.rand(3, 5, 1) * 10
    expected = 2.5 * x.double() / x.double().norm(dim=-1, keepdim=True)
    torch.testing.assert_close(norm(x).double(), expected, atol=1e-6, rtol=1e-5)

    model = tiny(norm="scale")
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    # two sublayers in each of the 2 encoder layers, three in each of the 2 decoder layers, a final norm per stack
    assert sum(isinstance(m, ScaleNorm) for m in model.modules()) == 2 * 2 + 3 * 2 + 2


def test_fix_norm_outputs_ignore_the_word_vectors_lengths_and_a_logit_is_at_most_the_outputs_length():
    src, tgt = batch()
    fixed, free = tiny(norm="scale", fix_norm=True), tiny(norm="scale")
    before = {model: model(src, tgt).logits for model in (fixed, free)}
    with torch.no_grad():
        lengths = torch.rand(30, 1) * 3 + 0.5
        for model in (fixed, free):
            model.src_embed.weight.mul_(lengths)  # tied: the source, target and output vectors alike
    torch.testing.assert_close(fixed(src, tgt).logits, before[fixed])
    assert not torch.allclose(free(src, tgt).logits, before[free])
    # Each logit is a cosine times the final ScaleNorm's length.
    assert before[fixed].abs().max() <= fixed.decoder_norm.gain.item() * (1 + 1e-5)


def test_too_long_input_is_refused_with_a_clear_message():
    model = tiny(max_positions=8)
    with pytest.raises(ValueError, match="max_positions=8"):
        model(torch.ones(1, 9, dtype=torch.long), torch.ones(1, 2, dtype=torch.long))


def full_context_reference(model: Transformer, src, tgt, layer: int):
    """float64, by hand: the layers below `layer` causally, then `layer`'s self-attention over the whole target
    (padding masked) and its cross-attention weights (pre-norm)."""
    memory, src_pad = model.encode(src)
    x = model._embed(model.tgt_embed, tgt)
    for below in model.decoder[:layer]:
        x, _ = below(x, memory, src_pad, None, False)
    decoder = model.decoder[layer]

    def weights(attention, queries, keys, blocked):
        def split(t, projection):
            return projection(t).view(t.size(0), t.size(1), attention.n_heads, -1).transpose(1, 2)
        q, k = split(queries, attention.q_proj), split(keys, attention.k_proj)
        scores = q @ k.transpose(-1, -2) / attention.head_dim ** 0.5
        scores = scores.masked_fill(blocked[:, None, None, :], float("-inf"))
        return scores.softmax(dim=-1), split(keys, attention.v_proj)

    h = decoder.self_block.norm(x)
    self_weights, v = weights(decoder.self_attn, h, h, tgt.eq(PAD))
    x = x + decoder.self_attn.out_proj((self_weights @ v).transpose(1, 2).flatten(2))
    return weights(decoder.cross_attn, decoder.cross_block.norm(x), memory, src_pad)[0]


@pytest.mark.parametrize("layer", [0, 1])
def test_full_context_attention_equals_a_float64_reference_and_sees_the_words_to_the_right(layer):
    model = tiny().double()
    src, tgt = batch()
    tgt[0, 4] = PAD  # a padded target: its padding must be masked once the causal mask is gone
    out = model(src, tgt, full_context_layer=layer)
    torch.testing.assert_close(out.full_context_attention, full_context_reference(model, src, tgt, layer))
    # The translation is the causal pass's: the second pass of the layer changes no logit.
    torch.testing.assert_close(out.logits, model(src, tgt).logits)
    # Earlier positions see a change to the right; the causal weights of the same layer do not.
    changed = tgt.clone()
    changed[1, 3:] = 21
    again = model(src, changed, attention_layer=layer, full_context_layer=layer)
    assert not torch.allclose(again.full_context_attention[1, :, :3], out.full_context_attention[1, :, :3])
    torch.testing.assert_close(again.cross_attention[0][1, :, :3],
                               model(src, tgt, attention_layer=layer).cross_attention[0][1, :, :3])


def test_full_context_attention_has_no_incremental_form():
    model = tiny()
    src, tgt = batch()
    with pytest.raises(ValueError, match="whole target"):
        model.decode(tgt[:, :1], *model.encode(src), state=model.start_decoding(src), full_context_layer=0)
