"""SONAR text decoder: pre-LN Transformer decoder conditioned on one sentence embedding.

The reference feeds the embedding as a length-1 encoder output with no mask, so softmax over the
single key is exactly 1 and each layer's cross-attention reduces to `output_proj(v_proj(e))`,
whatever the query. We compute that once per sequence (`cross_attention_values`) instead of per
position or per generation step. The q/k parts of the cross-attention projection and its
LayerNorm are kept so checkpoints round-trip, and are mathematically inert.

Generation runs `IncrementalDecoder.step`: the same layers, unrolled over a list of per-layer
parameters (sliced from the stack once per call, not once per token) and a KV cache that each
step writes at one position and never copies.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from sonar_jax.config import TextModelConfig, to_jnp_dtype
from sonar_jax.models.attention import cached_attention
from sonar_jax.models.layers import (FeedForward, MultiheadAttention, TokenEmbedding, layer_norm,
                                     make_layer_stack, scan_layers, unstack_layers)
from sonar_jax.sharding import constrain


class DecoderCache(NamedTuple):
    """State of incremental decoding for N inputs with G hypotheses each (G = beam, or 1).

    Rows are hypothesis-major within an input: row n·G + g. Beam search never reorders the
    key/value buffers; it reorders `origin`, which names the slot of the group that wrote each
    position of a hypothesis' history (`attention.cached_attention`).
    """

    keys: tuple[jax.Array, ...]  # per layer [N, H, G, S, Dh]
    values: tuple[jax.Array, ...]  # per layer [N, H, G, S, Dh]
    cross: tuple[jax.Array, ...]  # per layer [N·G, D]: the cross-attention output
    origin: jax.Array  # [N, G, S] int32
    length: jax.Array  # [] int32: positions already filled

    def reorder(self, parents: jax.Array) -> "DecoderCache":
        """The cache after hypothesis g of input n continues from hypothesis parents[n, g]:
        only the origin table moves, never the keys and values."""
        origin = jnp.take_along_axis(self.origin, parents[..., None], axis=1)
        return self._replace(origin=origin)

    def grow(self, capacity: int) -> "DecoderCache":
        """The same cache with room for `capacity` positions (the new ones empty)."""
        extra = capacity - self.origin.shape[2]
        pad = lambda x, axis: jnp.pad(x, [(0, extra if a == axis else 0) for a in range(x.ndim)])  # noqa: E731
        return self._replace(keys=tuple(pad(k, 3) for k in self.keys),
                             values=tuple(pad(v, 3) for v in self.values),
                             origin=pad(self.origin, 2))


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
        return attn.merge_heads(attn.project_v(embeddings))

    def _rest(self, x: jax.Array, attended: jax.Array, cross: jax.Array) -> jax.Array:
        x = x + attended + cross[:, None, :].astype(x.dtype)
        x = x + self.ffn(self.ffn_layer_norm(x))
        return constrain(x, ("batch", "length", "act_embed"))

    def __call__(self, x: jax.Array, cross: jax.Array) -> jax.Array:
        """Teacher forcing over the whole prefix x [B, T, D]."""
        return self._rest(x, self.self_attn(self.self_attn_layer_norm(x), is_causal=True), cross)

    def decode(self, x: jax.Array, cross: jax.Array, keys: jax.Array, values: jax.Array,
               origin: jax.Array, start: jax.Array, history: bool = True):
        """T new positions x [N·G, T, D] at start..: writes their keys and values into the cache
        buffers (keys [N, H, Dh, G, S], values [N, H, G, S, Dh]; one dynamic_update_slice each,
        in place, after attending over the history they hold; `history` False: the buffers are
        empty). Returns (x, keys, values)."""
        attn = self.self_attn
        num, group = origin.shape[:2]
        q, k, v = (t.reshape(num, group, *t.shape[1:])  # [N, G, T, H, Dh]
                   for t in attn.project_qkv(self.self_attn_layer_norm(x)))

        out = cached_attention(q, k, v, keys if history else None, values if history else None,
                               origin, start)

        def write(cache, new, layout):  # new [N, G, T, H, Dh] -> the cache's positions start..
            new = jnp.transpose(_after(new, out), layout).astype(cache.dtype)
            return jax.lax.dynamic_update_slice_in_dim(cache, new, start,
                                                       axis=layout.index(2))

        keys, values = write(keys, k, (0, 3, 1, 2, 4)), write(values, v, (0, 3, 1, 2, 4))
        attended = attn.merge_heads(out.reshape(num * group, *out.shape[2:]))
        return self._rest(x, attended, cross), keys, values


def _after(x: jax.Array, read: jax.Array) -> jax.Array:
    """x, made to depend on `read` (by adding a zero computed from it).

    A cache write whose value does not depend on the attention that reads the same buffer may
    run before that read, so XLA copies the whole buffer to keep the read intact (seen on
    XLA:CPU, two copies of every layer's cache per step). Depending on the read orders the write
    after it, and the write then happens in place. nan_to_num keeps the zero a zero.
    """
    zero = jnp.nan_to_num(read.reshape(-1)[0]).astype(x.dtype) * 0
    return x + zero


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

    def incremental(self) -> "IncrementalDecoder":
        """The decoder for generation, its layers as a list: sliced from the stack once per call
        if stacked (inside jit), or taken as they are if already unstacked (`layers.unstacked`)."""
        return IncrementalDecoder(self.cfg, self.embed, unstack_layers(self.layers),
                                  self.layer_norm)


class IncrementalDecoder(nnx.Module):
    """`TextDecoder` fed a few tokens at a time against a fixed-size KV cache.

    The layers are a list, so a generation loop's body reads each layer's weights and cache
    directly: no per-token slicing of stacked weights, no re-stacking of the cache.
    """

    def __init__(self, cfg: TextModelConfig, embed: TokenEmbedding, layers: nnx.List,
                 final_layer_norm: nnx.LayerNorm):
        self.cfg = cfg
        self.embed = embed
        self.layers = layers
        self.layer_norm = final_layer_norm

    def prefill(self, embeddings: jax.Array, tokens: jax.Array, capacity: int, group: int = 1
                ) -> tuple[jax.Array, DecoderCache]:
        """Starts decoding: the prompt tokens [N·G, T] of `group` hypotheses per embedding row
        (embeddings [N·G, D], each row repeated G times) into a new cache of `capacity`
        positions. Returns the prompt's logits [N·G, T, V] and the cache."""
        cfg = self.cfg
        if capacity > cfg.max_seq_len:
            raise ValueError(f"capacity {capacity} exceeds the decoder's {cfg.max_seq_len} "
                             "positions")
        rows = embeddings.shape[0]
        if rows % group:
            raise ValueError(f"{rows} embedding rows are not a multiple of the group size {group}")
        num = rows // group
        dtype = to_jnp_dtype(cfg.dtype)
        e = embeddings.astype(dtype)
        empty = lambda *shape: tuple(jnp.zeros(shape, dtype) for _ in self.layers)  # noqa: E731
        keys = empty(num, cfg.num_heads, group, capacity, cfg.head_dim)
        values = empty(num, cfg.num_heads, group, capacity, cfg.head_dim)
        cross = tuple(layer.cross_attention_values(e) for layer in self.layers)
        origin = jnp.broadcast_to(jnp.arange(group, dtype=jnp.int32)[None, :, None],
                                  (num, group, capacity))
        cache = DecoderCache(keys, values, cross, origin, jnp.zeros((), jnp.int32))
        return self._run(tokens, cache, history=False)

    def step(self, tokens: jax.Array, cache: DecoderCache) -> tuple[jax.Array, DecoderCache]:
        """Feeds tokens [N·G, T] (usually T = 1) at positions cache.length.. and returns logits
        [N·G, T, V] and the updated cache."""
        return self._run(tokens, cache, history=True)

    def _run(self, tokens: jax.Array, cache: DecoderCache, history: bool
             ) -> tuple[jax.Array, DecoderCache]:
        start, num_new = cache.length, tokens.shape[1]
        num, group = cache.origin.shape[:2]
        # The new positions are each hypothesis' own.
        own = jnp.broadcast_to(jnp.arange(group, dtype=jnp.int32)[None, :, None],
                               (num, group, num_new))
        origin = jax.lax.dynamic_update_slice_in_dim(cache.origin, own, start, axis=2)
        x = self.embed(tokens, start)
        keys, values = [], []
        for layer, k, v, cross in zip(self.layers, cache.keys, cache.values, cache.cross):
            x, k, v = layer.decode(x, cross, k, v, origin, start, history)
            keys.append(k)
            values.append(v)
        logits = self.embed.attend(self.layer_norm(x))
        return logits, DecoderCache(tuple(keys), tuple(values), cache.cross, origin,
                                    start + num_new)
