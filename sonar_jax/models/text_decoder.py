"""SONAR text decoder: pre-LN Transformer decoder conditioned on one sentence embedding.

The reference feeds the embedding as a length-1 encoder output with no mask, so softmax over the
single key is exactly 1 and each layer's cross-attention reduces to `output_proj(v_proj(e))`,
whatever the query. We compute that once per sequence (`cross_attention_values`) instead of per
position or per generation step. q_proj/k_proj and the cross-attention LayerNorm are kept so
checkpoints round-trip, and are mathematically inert.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from sonar_jax.config import TextModelConfig, to_jnp_dtype
from sonar_jax.models.layers import (FeedForward, MultiheadAttention, TokenEmbedding, layer_norm,
                                     make_layer_stack, scan_layers)
from sonar_jax.sharding import constrain


class DecoderCache(NamedTuple):
    """State of incremental decoding; arrays carry a leading layer axis."""

    keys: jax.Array  # [L, B, S, H, Dh]
    values: jax.Array  # [L, B, S, H, Dh]
    cross: jax.Array  # [L, B, D]: each layer's cross-attention output for this sequence
    length: jax.Array  # [] int32: positions already filled


class DecoderLayer(nnx.Module):
    """x + causal SelfAttn(LN(x)), + CrossAttn(embedding), + FFN(LN(.))."""

    def __init__(self, cfg: TextModelConfig, rngs: nnx.Rngs):
        self.self_attn_layer_norm = layer_norm(cfg, rngs)
        self.self_attn = MultiheadAttention(cfg, rngs)
        self.encoder_decoder_attn_layer_norm = layer_norm(cfg, rngs)
        self.encoder_decoder_attn = MultiheadAttention(cfg, rngs)
        self.ffn_layer_norm = layer_norm(cfg, rngs)
        self.ffn = FeedForward(cfg, rngs)

    def cross_attention_values(self, embeddings: jax.Array) -> jax.Array:
        """[B, D] -> [B, D]: the cross-attention output, identical at every position."""
        attn = self.encoder_decoder_attn
        return attn.output_proj(attn.v_proj(embeddings))

    def __call__(self, x: jax.Array, cross: jax.Array, *, kv=None, mask=None) -> jax.Array:
        h = self.self_attn_layer_norm(x)
        x = x + self.self_attn(h, is_causal=kv is None, kv=kv, mask=mask)
        x = x + cross[:, None, :].astype(x.dtype)
        x = x + self.ffn(self.ffn_layer_norm(x))
        return constrain(x, ("batch", "length", "act_embed"))


class TextDecoder(nnx.Module):
    """Sentence embeddings [B, D] + target prefix tokens [B, T] -> next-token logits [B, T, V].

    Matches `text_sonar_basic_decoder`; the output projection is tied to the embedding table
    (no bias). Teacher forcing uses input `[eos, lang, pieces...]` and labels `[lang, pieces..., eos]`.
    """

    def __init__(self, cfg: TextModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = TokenEmbedding(cfg, rngs)
        self.layers = make_layer_stack(DecoderLayer, cfg, rngs)
        self.layer_norm = layer_norm(cfg, rngs)

    def cross_attention_values(self, embeddings: jax.Array) -> jax.Array:
        """[B, D] -> [L, B, D], computed once per sequence."""
        e = embeddings.astype(to_jnp_dtype(self.cfg.dtype))
        _, cross = scan_layers(self.layers, None, self.cfg,
                               lambda layer, c, _: (c, layer.cross_attention_values(e)))
        return cross

    def hidden_states(self, embeddings: jax.Array, tokens: jax.Array) -> jax.Array:
        """Teacher-forced final-LayerNorm states [B, T, D] (before the tied projection).

        Right padding needs no mask: causal attention never lets a real position see a later pad.
        """
        cross = self.cross_attention_values(embeddings)
        x = self.embed(tokens)
        x, _ = scan_layers(self.layers, x, self.cfg,
                           lambda layer, h, c: (layer(h, c), None), xs=cross)
        return self.layer_norm(x)

    def project(self, hidden: jax.Array) -> jax.Array:
        """Tied output projection, float32 logits."""
        return self.embed.attend(hidden)

    def __call__(self, embeddings: jax.Array, tokens: jax.Array) -> jax.Array:
        return self.project(self.hidden_states(embeddings, tokens))

    def init_cache(self, embeddings: jax.Array, max_len: int) -> DecoderCache:
        """An empty fixed-size KV cache of `max_len` positions for incremental decoding."""
        if max_len > self.cfg.max_seq_len:
            raise ValueError(f"max_len {max_len} exceeds the decoder's {self.cfg.max_seq_len} "
                             "positions")
        cfg = self.cfg
        shape = (cfg.num_layers, embeddings.shape[0], max_len, cfg.num_heads, cfg.head_dim)
        zeros = jnp.zeros(shape, to_jnp_dtype(cfg.dtype))
        return DecoderCache(zeros, zeros, self.cross_attention_values(embeddings),
                            jnp.zeros((), jnp.int32))

    def step(self, tokens: jax.Array, cache: DecoderCache) -> tuple[jax.Array, DecoderCache]:
        """Feeds tokens [B, T] at positions cache.length.. and returns logits [B, T, V] and the
        updated cache. T may be the whole prompt (prefill) or 1 (one generation step)."""
        start = cache.length
        num_new = tokens.shape[1]
        max_len = cache.keys.shape[2]
        query_pos = start + jnp.arange(num_new)
        visible = jnp.arange(max_len)[None, :] <= query_pos[:, None]  # [T, S]
        x = self.embed(tokens, start)

        def body(layer: DecoderLayer, h, per_layer):
            keys, values, cross = per_layer
            new_k, new_v = layer.self_attn.project_kv(layer.self_attn_layer_norm(h))
            keys = jax.lax.dynamic_update_slice_in_dim(keys, new_k.astype(keys.dtype), start, 1)
            values = jax.lax.dynamic_update_slice_in_dim(values, new_v.astype(values.dtype),
                                                         start, 1)
            h = layer(h, cross, kv=(keys, values), mask=visible)
            return h, (keys, values)

        x, (keys, values) = scan_layers(self.layers, x, self.cfg, body,
                                        xs=(cache.keys, cache.values, cache.cross))
        logits = self.project(self.layer_norm(x))
        return logits, DecoderCache(keys, values, cache.cross, start + num_new)
