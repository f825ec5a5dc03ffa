"""Export a checkpoint as a CTranslate2 model directory, for fast CPU/GPU inference without this toolkit.

The directory holds CTranslate2's model.bin, config.json and shared_vocabulary.json, and the SentencePiece model
as spm.model. Its source side takes the SentencePiece pieces of a sentence (CTranslate2 appends </s>, as our
encoder expects) and decoding starts from <s>. ctranslate2 is the optional `deploy` extra; only this module
imports it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from mt.files import InputError, write_folder
from mt.model import Activation, Transformer, beyond_layer_norm, fix_norm_folded
from mt.tokenizer import Tokenizer
from mt.translator import load_model

# CTranslate2's weight types (ctranslate2.specs.model_spec.ACCEPTED_MODEL_TYPES), listed here so the command line
# can offer them without importing ctranslate2.
QUANTIZATIONS = ("float32", "float16", "bfloat16", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16")


def export_ctranslate2(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, quantization: str = "float32",
                       force: bool = False) -> Path:
    """Write the model of `checkpoint` to `out_dir` as a CTranslate2 model with its weights in `quantization`."""
    ctranslate2 = _import_ctranslate2()
    if quantization not in QUANTIZATIONS:
        raise InputError(f"quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")

    def fill(folder: Path) -> None:  # after the output folder's checks: a refusal comes before any work
        loaded = load_model(str(checkpoint), torch.device("cpu"))
        spec = transformer_spec(ctranslate2, loaded.model, loaded.tokenizer)
        spec.validate()
        spec.optimize(quantization=quantization)  # also stores the tied embeddings once
        spec.save(str(folder))
        loaded.tokenizer.save(folder)

    return write_folder(out_dir, fill, "a CTranslate2 model", "model.bin", force, checkpoint)


def _import_ctranslate2():
    try:
        import ctranslate2
    except ImportError:
        raise InputError("ctranslate2 is not installed: pip install '.[deploy]'") from None
    return ctranslate2


@torch.no_grad()
def transformer_spec(ctranslate2, model: Transformer, tokenizer: Tokenizer):
    """A ctranslate2 TransformerSpec with the weights, vocabulary and special tokens of `model`."""
    if beyond := beyond_layer_norm(model.cfg):
        raise InputError(f"the model was trained with {beyond}; CTranslate2's Transformer has LayerNorm, so it "
                         "cannot be exported")
    model = fix_norm_folded(model)
    cfg = model.cfg
    kinds = ctranslate2.specs.Activation
    activations = {Activation.relu: kinds.RELU, Activation.swish: kinds.SWISH, Activation.gelu: kinds.GELU}
    spec = ctranslate2.specs.TransformerSpec.from_config(
        (cfg.encoder_layers, cfg.decoder_layers), cfg.n_heads, pre_norm=cfg.pre_norm,
        activation=activations[Activation(cfg.activation)])
    # CTranslate2's own sinusoids put all sines before all cosines; ours interleave them, so the table goes in.
    positions = model.positions.table

    encoder = spec.encoder
    _set_input(encoder.embeddings[0], encoder, model.src_embed, positions, cfg.scale_embeddings)
    for layer_spec, layer in zip(encoder.layer, model.encoder):
        _set_attention(layer_spec.self_attention, layer.self_attn, layer.attn_block.norm, self_attention=True)
        _set_ffn(layer_spec.ffn, layer.ffn, layer.ffn_block.norm)

    decoder = spec.decoder
    _set_input(decoder.embeddings, decoder, model.tgt_embed, positions, cfg.scale_embeddings)
    for layer_spec, layer in zip(decoder.layer, model.decoder):
        _set_attention(layer_spec.self_attention, layer.self_attn, layer.self_block.norm, self_attention=True)
        _set_attention(layer_spec.attention, layer.cross_attn, layer.cross_block.norm, self_attention=False)
        _set_ffn(layer_spec.ffn, layer.ffn, layer.ffn_block.norm)
    decoder.projection.weight = _array(model.output.weight)
    if cfg.output_bias:
        decoder.projection.bias = _array(model.output.bias)

    if cfg.pre_norm:  # post-norm stacks end in their last layer's norm; CTranslate2 then has no final one either
        _set_norm(encoder.layer_norm, model.encoder_norm)
        _set_norm(decoder.layer_norm, model.decoder_norm)

    vocabulary = tokenizer.pieces(list(range(tokenizer.vocab_size)))
    if len(vocabulary) != cfg.vocab_size:
        raise InputError(f"the SentencePiece model has {len(vocabulary)} pieces but the model {cfg.vocab_size} "
                         "embeddings")
    spec.register_source_vocabulary(vocabulary)
    spec.register_target_vocabulary(vocabulary)
    # Our encoder reads the pieces then </s> (no <s>); the decoder starts from <s> (<pad> in MarianMT models).
    spec.config.add_source_bos = False
    spec.config.add_source_eos = True
    spec.config.decoder_start_token = vocabulary[cfg.bos_id]
    spec.config.bos_token, spec.config.eos_token = vocabulary[cfg.bos_id], vocabulary[cfg.eos_id]
    spec.config.unk_token = vocabulary[tokenizer.special.unk]
    spec.config.layer_norm_epsilon = next(m.eps for m in model.modules() if isinstance(m, nn.LayerNorm))
    return spec


def _array(tensor: torch.Tensor):
    return tensor.detach().float().cpu().contiguous().numpy()


def _set_input(embeddings_spec, stack_spec, embedding: nn.Embedding, positions: torch.Tensor, scale: bool) -> None:
    embeddings_spec.weight = _array(embedding.weight)
    stack_spec.scale_embeddings = scale  # by sqrt(d_model), as Transformer._embed does
    stack_spec.position_encodings.encodings = _array(positions)


def _set_norm(spec, norm: nn.LayerNorm) -> None:
    spec.gamma = _array(norm.weight)
    spec.beta = _array(norm.bias)


def _set_linear(spec, *linears: nn.Linear) -> None:
    """One CTranslate2 linear layer from one or more of ours, stacked along the outputs (fused q/k/v)."""
    spec.weight = _array(torch.cat([linear.weight for linear in linears]))
    spec.bias = _array(torch.cat([linear.bias for linear in linears]))


def _set_attention(spec, attention, norm: nn.LayerNorm, self_attention: bool) -> None:
    # CTranslate2 fuses the projections: q, k, v into one for self-attention; k, v into one for cross-attention.
    if self_attention:
        _set_linear(spec.linear[0], attention.q_proj, attention.k_proj, attention.v_proj)
    else:
        _set_linear(spec.linear[0], attention.q_proj)
        _set_linear(spec.linear[1], attention.k_proj, attention.v_proj)
    _set_linear(spec.linear[-1], attention.out_proj)
    _set_norm(spec.layer_norm, norm)


def _set_ffn(spec, ffn: nn.Sequential, norm: nn.LayerNorm) -> None:
    _set_linear(spec.linear_0, ffn[0])
    _set_linear(spec.linear_1, ffn[2])
    _set_norm(spec.layer_norm, norm)
