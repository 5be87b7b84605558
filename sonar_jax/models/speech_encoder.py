"""SONAR speech encoder: fbank frames -> Conformer -> attention pooler -> one vector per utterance.

Matches `sonar_speech_encoder_*` (fairseq2 `SonarSpeechEncoderModel` over a w2v-BERT 600m
encoder): consecutive fbank frames are stacked in pairs (an odd last frame is dropped), normalised
and projected to the model width, run through the Conformer blocks and a model-level LayerNorm,
then pooled by a small post-LN Transformer decoder whose single query cross-attends to the frames.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from sonar_jax.config import SpeechModelConfig, TextModelConfig, to_jnp_dtype
from sonar_jax.models.attention import CUDNN_LENGTH_MULTIPLE
from sonar_jax.models.conformer import ConformerBlock
from sonar_jax.models.layers import (FeedForward, MultiheadAttention, axes_metadata, layer_norm,
                                     linear, make_layer_stack, scan_layers, sinusoidal_table)


class SpeechEncoderOutput(NamedTuple):
    sentence_embeddings: jax.Array  # [B, D] float32
    encoded_seqs: jax.Array  # [B, S, D] compute dtype, S stacked frames; past seq_lens: padding
    seq_lens: jax.Array  # [B] int32 stacked-frame counts


def stack_frames(fbank: jax.Array, lengths: jax.Array, stride: int) -> tuple[jax.Array, jax.Array]:
    """[B, T, C] fbank frames -> [B, T // stride, C·stride] and the stacked lengths.

    Frames t·stride … t·stride + stride − 1 are concatenated (frame-major); a trailing partial
    group is dropped, from the batch and from each length, as the reference does.
    """
    batch, frames, channels = fbank.shape
    frames -= frames % stride
    stacked = fbank[:, :frames].reshape(batch, frames // stride, channels * stride)
    return stacked, jnp.minimum(lengths, frames) // stride


class SpeechFrontend(nnx.Module):
    """LayerNorm over a stacked frame, then Linear(stride·channels → D)."""

    def __init__(self, cfg: SpeechModelConfig, rngs: nnx.Rngs):
        self.post_extract_layer_norm = nnx.LayerNorm(
            cfg.feature_dim, epsilon=cfg.layer_norm_eps, dtype=to_jnp_dtype(cfg.dtype),
            param_dtype=to_jnp_dtype(cfg.param_dtype), use_fast_variance=False,
            scale_metadata=axes_metadata("norm"), bias_metadata=axes_metadata("norm"), rngs=rngs)
        self.model_dim_proj = linear(cfg, cfg.feature_dim, cfg.model_dim, rngs,
                                     axes=(None, "embed"))

    def __call__(self, frames: jax.Array) -> jax.Array:
        return self.model_dim_proj(self.post_extract_layer_norm(frames))


class PoolerLayer(nnx.Module):
    """Post-LN decoder layer: LN(x + SelfAttn x), LN(x + CrossAttn(x, frames)), LN(x + FFN x)."""

    def __init__(self, cfg: TextModelConfig, rngs: nnx.Rngs):
        self.self_attn = MultiheadAttention(cfg, rngs)
        self.self_attn_layer_norm = layer_norm(cfg, rngs)
        self.encoder_decoder_attn = MultiheadAttention(cfg, rngs)
        self.encoder_decoder_attn_layer_norm = layer_norm(cfg, rngs)
        self.ffn = FeedForward(cfg, rngs)
        self.ffn_layer_norm = layer_norm(cfg, rngs)

    def __call__(self, x: jax.Array, frames: jax.Array, seq_lens: jax.Array) -> jax.Array:
        x = self.self_attn_layer_norm(x + self.self_attn(x))
        x = self.encoder_decoder_attn_layer_norm(
            x + self.encoder_decoder_attn(x, memory=frames, key_lengths=seq_lens))
        return self.ffn_layer_norm(x + self.ffn(x))


class AttentionPooler(nnx.Module):
    """One learned query (row `bos_idx` × sqrt(D) + the position-0 sinusoid) decoded against the
    frames by post-LN layers, then a bias-free projection: [B, S, D] -> [B, D].

    Only row `bos_idx` of the embedding table is ever read; the table is kept whole so released
    checkpoints round-trip.
    """

    def __init__(self, cfg: SpeechModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        init = jax.nn.initializers.normal(cfg.model_dim**-0.5)
        self.embed = nnx.Param(init(rngs.params(), (cfg.pooler_vocab_size, cfg.model_dim),
                                    to_jnp_dtype(cfg.param_dtype)), **axes_metadata(None, "embed"))
        self.layers = make_layer_stack(PoolerLayer, cfg.pooler_config(), rngs)
        self.projection_out = linear(cfg, cfg.model_dim, cfg.model_dim, rngs, use_bias=False,
                                     axes=("embed", None))

    def query(self) -> jax.Array:
        """[D] float32: the pooling query before the decoder layers."""
        position_0 = jnp.asarray(sinusoidal_table(1, self.cfg.model_dim, offset=0)[0])
        token = self.embed[...][self.cfg.bos_idx].astype(jnp.float32)
        return token * math.sqrt(self.cfg.model_dim) + position_0

    def __call__(self, frames: jax.Array, seq_lens: jax.Array) -> jax.Array:
        batch = frames.shape[0]
        x = jnp.broadcast_to(self.query().astype(frames.dtype), (batch, 1, self.cfg.model_dim))
        x, _ = scan_layers(self.layers, x, self.cfg.pooler_config(),
                           lambda layer, h, _: (layer(h, frames, seq_lens), None))
        return self.projection_out(x)[:, 0].astype(jnp.float32)


class SpeechEncoder(nnx.Module):
    """Fbank features [B, T, C] (right-padded) + lengths [B] -> SpeechEncoderOutput.

    T is in fbank frames (100 per second); after stacking, at most `cfg.max_seq_len` frames fit
    (4096 ≈ 82 s for the released models), as in the reference. Every length must give at least
    one stacked frame (the pipelines check this; a row with none has nothing to pool).
    """

    def __init__(self, cfg: SpeechModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoder_frontend = SpeechFrontend(cfg, rngs)
        self.layers = make_layer_stack(ConformerBlock, cfg, rngs)
        self.layer_norm = layer_norm(cfg, rngs)
        self.encoder_pooler = AttentionPooler(cfg, rngs)

    def max_fbank_frames(self) -> int:
        return self.cfg.max_seq_len * self.cfg.fbank_stride + self.cfg.fbank_stride - 1

    def check_length(self, fbank_frames: int) -> None:
        """Raises for inputs longer than the model's relative-position table covers."""
        if fbank_frames // self.cfg.fbank_stride > self.cfg.max_seq_len:
            seconds = self.max_fbank_frames() / 100
            raise ValueError(
                f"audio of {fbank_frames} fbank frames ({fbank_frames / 100:.1f} s) is longer than "
                f"the speech encoder's limit of {self.cfg.max_seq_len} stacked frames "
                f"(~{seconds:.1f} s); split it into shorter segments")

    def encode(self, fbank: jax.Array, lengths: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
        """Conformer states [B, S, D] after the model-level LayerNorm, and stacked lengths [B]."""
        self.check_length(fbank.shape[1])
        if lengths is None:
            lengths = jnp.full((fbank.shape[0],), fbank.shape[1], jnp.int32)
        dtype = to_jnp_dtype(self.cfg.dtype)
        frames, seq_lens = stack_frames(fbank.astype(dtype), lengths.astype(jnp.int32),
                                        self.cfg.fbank_stride)
        # Padded to a multiple of 8 frames (masked like any padding) so that cuDNN's attention,
        # which rejects unaligned lengths, applies to every input; the padding is cut off again.
        num_frames = frames.shape[1]
        frames = jnp.pad(frames, ((0, 0), (0, -num_frames % CUDNN_LENGTH_MULTIPLE), (0, 0)))
        x = self.encoder_frontend(frames)
        x, _ = scan_layers(self.layers, x, self.cfg,
                           lambda layer, h, _: (layer(h, seq_lens), None))
        return self.layer_norm(x[:, :num_frames]), seq_lens

    def __call__(self, fbank: jax.Array, lengths: jax.Array | None = None) -> SpeechEncoderOutput:
        x, seq_lens = self.encode(fbank, lengths)
        return SpeechEncoderOutput(self.encoder_pooler(x, seq_lens), x, seq_lens)

