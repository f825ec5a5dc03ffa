"""Transformer encoder-decoder (Vaswani et al. 2017) on mt.attention.

`forward` is teacher-forced training; `encode` + `decode_step` are what search uses, one token at a time
with a per-layer key/value cache.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from enum import Enum

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mt.attention import KVCache, MultiHeadAttention
from mt.dropout import Dropout, dropout
from mt.schema import bounded
from mt.tokenizer import SpecialIds


class Activation(str, Enum):
    relu = "relu"
    swish = "swish"  # x * sigmoid(x), as MarianMT (OPUS-MT) models use
    gelu = "gelu"


class Norm(str, Enum):
    layer = "layer"  # LayerNorm: each position centred and scaled, with a gain and a bias per feature
    scale = "scale"  # ScaleNorm (Nguyen & Salazar 2019): each position scaled to one learned length


ACTIVATIONS = {Activation.relu: nn.ReLU, Activation.swish: nn.SiLU, Activation.gelu: nn.GELU}


@dataclass
class ModelConfig:
    vocab_size: int
    d_model: int = bounded(256, low=1)
    n_heads: int = bounded(4, low=1)
    encoder_layers: int = bounded(3, low=1)
    decoder_layers: int = bounded(3, low=1)
    ffn_dim: int = bounded(1024, low=1)
    # on the embeddings and every sublayer's output (0.1 overfits Multi30k: docs/recipe.md)
    dropout: float = bounded(0.3, low=0, below=1)
    attention_dropout: float = bounded(0.0, low=0, below=1)  # on the attention weights
    activation_dropout: float = bounded(0.0, low=0, below=1)  # inside the feed-forward block, after the activation
    activation: Activation = Activation.relu  # of the feed-forward block
    pre_norm: bool = True
    norm: Norm = Norm.layer
    # FixNorm (Nguyen & Chiang 2018): word vectors of length 1, so a logit is a cosine times the output's length
    fix_norm: bool = False
    tie_embeddings: bool = True
    scale_embeddings: bool = True  # token embeddings times sqrt(d_model) before the positions are added
    output_bias: bool = False  # a bias on the output layer's logits (MarianMT's final_logits_bias)
    max_positions: int = bounded(256, low=2)
    # The vocabulary's special tokens: set from the tokenizer, not by hand.
    pad_id: int = SpecialIds.pad
    bos_id: int = SpecialIds.bos
    eos_id: int = SpecialIds.eos


class SinusoidalPositions(nn.Module):
    def __init__(self, d_model: int, max_positions: int):
        super().__init__()
        position = torch.arange(max_positions, dtype=torch.float64)[:, None]
        frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_positions, d_model, dtype=torch.float64)
        table[:, 0::2] = torch.sin(position * frequency)
        table[:, 1::2] = torch.cos(position * frequency)
        self.register_buffer("table", table.float(), persistent=False)

    def forward(self, length: int, start: int = 0) -> Tensor:
        if start + length > self.table.size(0):
            raise ValueError(f"sequence of {start + length} positions exceeds max_positions={self.table.size(0)}")
        return self.table[start:start + length]


class FeedForward(nn.Sequential):
    # The inner activations are dropped only when asked (activation_dropout): four times wider than the residual
    # stream, their random mask cost about a tenth of a CPU training step.
    def __init__(self, d_model: int, ffn_dim: int, activation_dropout: float = 0.0,
                 activation: Activation = Activation.relu):
        super().__init__(nn.Linear(d_model, ffn_dim), ACTIVATIONS[Activation(activation)](),
                         nn.Linear(ffn_dim, d_model))
        self.activation_dropout = activation_dropout

    def forward(self, x: Tensor) -> Tensor:
        inner = self[1](self[0](x))
        if self.activation_dropout and self.training:
            inner = dropout(inner, self.activation_dropout)
        return self[2](inner)


def beyond_layer_norm(cfg: ModelConfig) -> str | None:
    """The override that takes the model past what MarianMT and CTranslate2 describe (LayerNorm), or None: the
    exports name it when they refuse. FixNorm is not past it: `fix_norm_folded` gives a plain model."""
    return "model.norm=scale" if Norm(cfg.norm) is Norm.scale else None


class ScaleNorm(nn.Module):
    """gain * x / |x| over the last dimension: one learned length, started at sqrt(d_model)."""

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(math.sqrt(d_model)))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return x * (self.gain / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(self.eps))


def build_norm(cfg: ModelConfig) -> nn.Module:
    return ScaleNorm(cfg.d_model) if Norm(cfg.norm) is Norm.scale else nn.LayerNorm(cfg.d_model)


class Residual(nn.Module):
    """x + dropout(sublayer(norm(x))) when pre-norm, norm(x + dropout(sublayer(x))) when post-norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = build_norm(cfg)
        self.dropout = Dropout(cfg.dropout)
        self.pre_norm = cfg.pre_norm

    def forward(self, x: Tensor, sublayer) -> Tensor:
        if self.pre_norm:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.activation_dropout, cfg.activation)
        self.attn_block = Residual(cfg)
        self.ffn_block = Residual(cfg)

    def forward(self, x: Tensor, src_pad: Tensor) -> Tensor:
        x = self.attn_block(x, lambda h: self.self_attn(h, h, h, key_padding_mask=src_pad)[0])
        return self.ffn_block(x, self.ffn)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.activation_dropout, cfg.activation)
        self.self_block = Residual(cfg)
        self.cross_block = Residual(cfg)
        self.ffn_block = Residual(cfg)

    def forward(
        self, x: Tensor, memory: Tensor, src_pad: Tensor, caches: tuple[KVCache, KVCache] | None, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        self_cache, cross_cache = caches if caches is not None else (None, None)
        # Target padding sits after the real tokens, so the causal mask already keeps real queries off it.
        x = self.self_block(x, lambda h: self.self_attn(h, h, h, causal=True, cache=self_cache)[0])
        weights = None

        def cross(h: Tensor) -> Tensor:
            nonlocal weights
            out, weights = self.cross_attn(
                h, memory, memory, key_padding_mask=src_pad, cache=cross_cache, need_weights=need_weights
            )
            return out

        x = self.cross_block(x, cross)
        return self.ffn_block(x, self.ffn), weights

    def full_context_weights(self, x: Tensor, memory: Tensor, src_pad: Tensor, tgt_pad: Tensor) -> Tensor:
        """The cross-attention weights (B, H, T, S) of a second pass of this layer over its input x in which
        every target position sees the whole target (no causal mask): the alignment head's reading with the
        words to its right known, as Garg et al. (2019) align. Only this layer runs again; x is what the layers
        below made causally."""
        x = self.self_block(x, lambda h: self.self_attn(h, h, h, key_padding_mask=tgt_pad)[0])
        weights = None

        def cross(h: Tensor) -> Tensor:
            nonlocal weights
            out, weights = self.cross_attn(h, memory, memory, key_padding_mask=src_pad, need_weights=True)
            return out

        self.cross_block(x, cross)
        return weights


@dataclass
class DecoderState:
    """What incremental decoding carries from one step to the next.

    The decoder may run g rows per source sentence (the beams of beam search): the memory, its padding mask
    and the cross-attention caches keep one row per sentence, shared by its g consecutive decoder rows.
    """

    memory: Tensor  # (sentences, S, D)
    src_pad: Tensor  # (sentences, S)
    caches: list[tuple[KVCache, KVCache]]
    step: int = 0

    def reorder(self, rows: Tensor, sentences: Tensor | None = None) -> None:
        """Keep decoder rows `rows` and, if given, source sentences `sentences` (else all sentences stay), in
        that order (beam search): the caches are gathered, never recomputed."""
        for self_cache, cross_cache in self.caches:
            self_cache.reorder(rows)
            if sentences is not None:
                cross_cache.reorder(sentences)
        if sentences is not None:
            self.memory = self.memory.index_select(0, sentences)
            self.src_pad = self.src_pad.index_select(0, sentences)


@dataclass
class DecoderOutput:
    logits: Tensor  # (B, T, vocab)
    # per layer asked for (every layer, or the one attention_layer names): (B, H, T, S)
    cross_attention: list[Tensor] = field(default_factory=list)
    # the cross-attention of the layer alignment_layer names, every position seeing the whole target: (B, H, T, S)
    full_context_attention: Tensor | None = None


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.src_embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.tgt_embed = self.src_embed if cfg.tie_embeddings else nn.Embedding(
            cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.positions = SinusoidalPositions(cfg.d_model, cfg.max_positions)
        self.embed_dropout = Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        # Pre-norm leaves the residual stream unnormalized, so each stack ends with a norm.
        self.encoder_norm = build_norm(cfg) if cfg.pre_norm else nn.Identity()
        self.decoder_norm = build_norm(cfg) if cfg.pre_norm else nn.Identity()
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.output_bias)
        if cfg.tie_embeddings:
            self.output.weight = self.tgt_embed.weight
        self._init_weights()

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() > 1 and "embed" not in name:
                nn.init.xavier_uniform_(p)
        if self.cfg.output_bias:
            nn.init.zeros_(self.output.bias)
        for embedding in {self.src_embed, self.tgt_embed}:
            # With sqrt(d) scaling at the input, N(0, d^-1/2) gives unit-scale inputs and sane tied logits.
            nn.init.normal_(embedding.weight, std=self.cfg.d_model ** -0.5)
            nn.init.zeros_(embedding.weight[self.cfg.pad_id])

    def _embed(self, embedding: nn.Embedding, tokens: Tensor, start: int = 0) -> Tensor:
        scale = math.sqrt(self.cfg.d_model) if self.cfg.scale_embeddings else 1.0
        vectors = embedding(tokens)
        if self.cfg.fix_norm:  # the looked-up rows only: a search step reads a few, not the whole vocabulary
            vectors = F.normalize(vectors, dim=-1)
        x = vectors * scale + self.positions(tokens.size(1), start)
        return self.embed_dropout(x)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src (B, S) token ids -> memory (B, S, D) and the source padding mask (B, S)."""
        src_pad = src.eq(self.cfg.pad_id)
        x = self._embed(self.src_embed, src)
        for layer in self.encoder:
            x = layer(x, src_pad)
        return self.encoder_norm(x), src_pad

    def decode(
        self, tgt_in: Tensor, memory: Tensor, src_pad: Tensor, need_attention: bool = False,
        state: DecoderState | None = None, last_position_only: bool = False, attention_layer: int | None = None,
        full_context_layer: int | None = None,
    ) -> DecoderOutput:
        """Logits for every target position, or with `last_position_only` for the last (all a search uses: the
        output layer is the widest of the step); the cross-attention weights of every layer (`need_attention`)
        or of one (`attention_layer`, counted from 0); those of `full_context_layer` run again over the whole
        target (DecoderLayer.full_context_weights: the given target only, not incremental decoding)."""
        if full_context_layer is not None and state is not None:
            raise ValueError("full-context attention needs the whole target: it has no incremental form")
        start = state.step if state is not None else 0
        x = self._embed(self.tgt_embed, tgt_in, start)
        attention, full_context = [], None
        for i, layer in enumerate(self.decoder):
            if i == full_context_layer:
                target_pad = tgt_in.eq(self.cfg.pad_id)
                target_pad[:, 0] = False  # BOS, which may share pad's id (MarianMT)
                full_context = layer.full_context_weights(x, memory, src_pad, target_pad)
            caches = state.caches[i] if state is not None else None
            wanted = need_attention or i == attention_layer
            x, weights = layer(x, memory, src_pad, caches, wanted)
            if wanted:
                attention.append(weights)
        if state is not None:
            state.step += tgt_in.size(1)
        if last_position_only:
            x = x[:, -1:]
        return DecoderOutput(self._logits(self.decoder_norm(x)), attention, full_context)

    def _logits(self, x: Tensor) -> Tensor:
        if self.cfg.fix_norm:
            return F.linear(x, F.normalize(self.output.weight, dim=-1), self.output.bias)
        return self.output(x)

    def forward(self, src: Tensor, tgt_in: Tensor, need_attention: bool = False,
                attention_layer: int | None = None, full_context_layer: int | None = None) -> DecoderOutput:
        memory, src_pad = self.encode(src)
        return self.decode(tgt_in, memory, src_pad, need_attention, attention_layer=attention_layer,
                           full_context_layer=full_context_layer)

    def start_decoding(self, src: Tensor) -> DecoderState:
        memory, src_pad = self.encode(src)
        caches = [(KVCache(), KVCache(static=True)) for _ in self.decoder]
        return DecoderState(memory, src_pad, caches)

    def decode_step(self, tokens: Tensor, state: DecoderState, need_attention: bool = False) -> DecoderOutput:
        """Feed the last token of each row, tokens (B, 1) with B a multiple of the state's sentences; the
        state's caches grow by one step."""
        return self.decode(tokens, state.memory, state.src_pad, need_attention, state)


def fix_norm_folded(model: Transformer) -> Transformer:
    """A copy of `model` with FixNorm's unit-length word vectors written into its matrices and fix_norm off: the
    same outputs from a plain Transformer, which the exports describe. Without FixNorm, `model` itself. Training
    keeps the free-length matrices: the gradient through the normalization is part of FixNorm."""
    if not model.cfg.fix_norm:
        return model
    folded = copy.deepcopy(model)  # tied matrices stay one
    folded.cfg = replace(model.cfg, fix_norm=False)
    matrices = {id(w): w for w in (folded.src_embed.weight, folded.tgt_embed.weight, folded.output.weight)}
    with torch.no_grad():
        for matrix in matrices.values():
            matrix.copy_(F.normalize(matrix, dim=-1))
    return folded
