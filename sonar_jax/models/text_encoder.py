"""SONAR text encoder: NLLB-shaped pre-LN Transformer encoder, mean-pooled to one vector per sentence."""

from __future__ import annotations

from typing import NamedTuple

import jax
from flax import nnx

from sonar_jax.config import TextModelConfig
from sonar_jax.models.layers import (FeedForward, MultiheadAttention, TokenEmbedding, layer_norm,
                                     lengths_from_padding, make_layer_stack, masked_mean,
                                     scan_layers)
from sonar_jax.sharding import constrain


class EncoderOutput(NamedTuple):
    sentence_embeddings: jax.Array  # [B, D] float32
    encoded_seqs: jax.Array  # [B, T, D] compute dtype; rows past each length are not meaningful
    seq_lens: jax.Array  # [B] int32


class EncoderLayer(nnx.Module):
    """x + MHA(LN(x)), then + FFN(LN(.)); keys beyond each sequence's length are masked."""

    def __init__(self, cfg: TextModelConfig, rngs: nnx.Rngs):
        self.self_attn_layer_norm = layer_norm(cfg, rngs)
        self.self_attn = MultiheadAttention(cfg, rngs)
        self.ffn_layer_norm = layer_norm(cfg, rngs)
        self.ffn = FeedForward(cfg, rngs)

    def __call__(self, x: jax.Array, seq_lens: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.self_attn_layer_norm(x), key_lengths=seq_lens)
        x = x + self.ffn(self.ffn_layer_norm(x))
        return constrain(x, ("batch", "length", "act_embed"))


class TextEncoder(nnx.Module):
    """Token ids [B, T] (right-padded with pad 0) -> sentence embeddings [B, D] and states [B, T, D].

    Matches `text_sonar_basic_encoder`: embeddings × sqrt(D) + sinusoidal positions, pre-LN layers,
    the model-level final LayerNorm, and a masked mean over every non-pad position (language tag and
    EOS included).
    """

    def __init__(self, cfg: TextModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = TokenEmbedding(cfg, rngs)
        self.layers = make_layer_stack(EncoderLayer, cfg, rngs)
        self.layer_norm = layer_norm(cfg, rngs)

    def __call__(self, tokens: jax.Array, seq_lens: jax.Array | None = None) -> EncoderOutput:
        if seq_lens is None:
            seq_lens = lengths_from_padding(tokens, self.cfg.pad_idx)
        x = self.embed(tokens)
        x, _ = scan_layers(self.layers, x, self.cfg,
                           lambda layer, h, _: (layer(h, seq_lens), None))
        x = self.layer_norm(x)
        pooled = constrain(masked_mean(x, seq_lens), ("batch", "act_embed"))
        return EncoderOutput(pooled, x, seq_lens)
