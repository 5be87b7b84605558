"""w2v-BERT Conformer blocks (the SONAR speech encoder's trunk), as fairseq2 builds them.

Each block: half-step SiLU FFN, Transformer-XL relative-position self-attention, the convolution
module (pointwise → GLU → depthwise → BatchNorm with running statistics → SiLU → pointwise),
a second half-step FFN, and a block LayerNorm. Padded frames are masked as keys and zeroed before
the depthwise convolution, so a sequence's output does not depend on the padding around it.
Submodule names follow the fairseq2 state-dict names.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from sonar_jax.config import SpeechModelConfig, to_jnp_dtype
from sonar_jax.models.attention import dot_product_attention
from sonar_jax.models.layers import (ATTENTION_OUTPUT, QKVProjection, axes_metadata, layer_norm,
                                     linear)
from sonar_jax.sharding import constrain


def relative_position_table(seq_len: int, dim: int) -> jax.Array:
    """[2·seq_len − 1, dim] encodings of relative positions seq_len−1 … −(seq_len−1).

    Transformer-XL layout as fairseq2's RelativePositionalEncoding: sin on even channels, cos on
    odd ones, frequency exp(−2j·ln(10⁴)/dim) computed in float32 like the reference. Built on
    device (a 4096-frame table is 33 MB: too big to embed as a constant).
    """
    indices = np.arange(0, dim, 2, dtype=np.float32)
    freqs = np.exp(((indices * np.float32(-math.log(10000.0))) / np.float32(dim))
                   .astype(np.float64)).astype(np.float32)
    steps = jnp.arange(seq_len - 1, -seq_len, -1, dtype=jnp.float32)
    angles = steps[:, None] * jnp.asarray(freqs)[None, :]
    return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(2 * seq_len - 1, dim)


def shift_relative_scores(bd: jax.Array) -> jax.Array:
    """[..., S, 2S−1] scores against relative positions → [..., S, S] scores against keys.

    Entry (i, j) is bd[i, S − 1 − i + j], the score of relative position i − j: what fairseq2's
    `_shift_bd` computes (pad a column, view as [2S, S], drop a row, view back, keep S columns).
    Here without the padding: in the flattened scores that entry sits at
    (S − 1) + i·(2S − 2) + j, so rows of stride 2S − 2 starting at S − 1 hold the answer. XLA
    fuses the slices and views into one pass that reads only the entries kept; the padded
    array was materialised and transposed first (two more passes over [..., S, 2S]).
    """
    *batch, s, width = bd.shape
    if width != 2 * s - 1:
        raise ValueError(f"relative-position scores of {s} queries need {2 * s - 1} positions, "
                         f"got {width}")
    flat = bd.reshape(*batch, s * width)[..., s - 1:s - 1 + s * (width - 1)]
    return flat.reshape(*batch, s, width - 1)[..., :s]


class RelativePositionAttention(nnx.Module):
    """Multi-head self-attention with Transformer-XL relative positions.

    scores = ((q + u)·kᵀ + shift((q + v)·rᵀ)) / sqrt(head_dim), r = r_proj(table) with a bias-free
    r_proj. The position term becomes the additive bias of `jax.nn.dot_product_attention`.
    """

    def __init__(self, cfg: SpeechModelConfig, rngs: nnx.Rngs):
        self.num_heads = cfg.num_heads
        self.implementation = cfg.attention
        dim = cfg.model_dim
        self.qkv_proj = QKVProjection(cfg, rngs)
        self.output_proj = linear(cfg, dim, dim, rngs, axes=("heads", "embed"))
        self.r_proj = linear(cfg, dim, dim, rngs, use_bias=False, axes=("embed", "heads"))
        bias_init = jax.nn.initializers.glorot_normal()
        param_dtype = to_jnp_dtype(cfg.param_dtype)
        self.u_bias = nnx.Param(bias_init(rngs.params(), (cfg.num_heads, cfg.head_dim),
                                          param_dtype), **axes_metadata("heads", None))
        self.v_bias = nnx.Param(bias_init(rngs.params(), (cfg.num_heads, cfg.head_dim),
                                          param_dtype), **axes_metadata("heads", None))

    def _heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:-1], self.num_heads, -1)

    def __call__(self, x: jax.Array, seq_lens: jax.Array) -> jax.Array:
        """x [B, S, D]; keys at and beyond seq_lens[b] are masked."""
        seq_len, dtype = x.shape[1], x.dtype
        q, k, v = (constrain(self._heads(p), ("batch", "length", "act_heads", "act_kv"))
                   for p in jnp.unstack(self.qkv_proj(x), axis=-2))
        r = self._heads(self.r_proj(relative_position_table(seq_len, x.shape[-1]).astype(dtype)))
        q_v = q + self.v_bias[...].astype(dtype)
        # The scores are the layer's largest array ([H, B, S, 2S − 1]). They are kept in the
        # compute dtype, as the reference computes them (in bfloat16 cuDNN's bias is bfloat16
        # anyway), with heads leading, as the product writes them (one GEMM per head over the
        # B·S queries), so the shift below also moves heads behind the batch in its one pass.
        # With float32 scores in [B, H, S, 2S − 1] the H100 program (16 x 10 s) moved about
        # 2.2 GB per layer through the product, a transpose, the padded shift and a conversion;
        # now about 0.5 GB.
        bd = jnp.einsum("bshd,rhd->hbsr", q_v, r)
        bias = jnp.swapaxes(shift_relative_scores(bd), 0, 1) * (q.shape[-1] ** -0.5)
        q_u = q + self.u_bias[...].astype(dtype)
        out = dot_product_attention(q_u, k, v, implementation=self.implementation, bias=bias,
                                    key_lengths=seq_lens)
        out = checkpoint_name(out, ATTENTION_OUTPUT)
        return self.output_proj(out.reshape(*out.shape[:-2], -1))


class SwishFeedForward(nnx.Module):
    """Linear(D→F) → SiLU → Linear(F→D), both with bias (the Conformer's macaron FFN)."""

    def __init__(self, cfg: SpeechModelConfig, rngs: nnx.Rngs):
        self.inner_proj = linear(cfg, cfg.model_dim, cfg.ffn_dim, rngs, axes=("embed", "mlp"))
        self.output_proj = linear(cfg, cfg.ffn_dim, cfg.model_dim, rngs, axes=("mlp", "embed"))

    def __call__(self, x: jax.Array) -> jax.Array:
        h = constrain(jax.nn.silu(self.inner_proj(x)), ("batch", "length", "act_mlp"))
        return self.output_proj(h)


class ConvolutionModule(nnx.Module):
    """Pointwise(D→2D) → GLU → depthwise (kernel K, "same") → BatchNorm → SiLU → pointwise(D→D).

    The pointwise convolutions (kernel 1, no bias) are bias-free Linear layers; the depthwise
    kernel is stored [K, D]. BatchNorm uses its running statistics unless the module is put in
    training mode (`nnx.Module.train()`), where it normalises by the batch's valid frames and
    updates the running averages (momentum 0.9 as flax counts it, PyTorch's 0.1).
    """

    def __init__(self, cfg: SpeechModelConfig, rngs: nnx.Rngs):
        dim, param_dtype = cfg.model_dim, to_jnp_dtype(cfg.param_dtype)
        self.kernel_size = cfg.depthwise_kernel_size
        # Channels are an "mlp"-like axis: tensor parallelism splits them, and the depthwise
        # convolution and BatchNorm then run on each device's channels.
        self.pointwise_conv1 = linear(cfg, dim, 2 * dim, rngs, use_bias=False,
                                      axes=("embed", "mlp"))
        # PyTorch's Conv1d default: uniform with variance 1 / (3 · fan_in), fan_in = K here.
        conv_init = jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
        self.depthwise_conv = nnx.Param(conv_init(rngs.params(), (self.kernel_size, dim),
                                                  param_dtype), **axes_metadata(None, "mlp"))
        self.batch_norm = nnx.BatchNorm(dim, use_running_average=True, momentum=0.9,
                                        epsilon=cfg.batch_norm_eps,
                                        dtype=to_jnp_dtype(cfg.dtype), param_dtype=param_dtype,
                                        rngs=rngs)
        for variable in (self.batch_norm.scale, self.batch_norm.bias, self.batch_norm.mean,
                         self.batch_norm.var):
            variable.set_metadata(**axes_metadata("norm"))
        self.pointwise_conv2 = linear(cfg, dim, dim, rngs, use_bias=False, axes=("mlp", "embed"))

    def __call__(self, x: jax.Array, seq_lens: jax.Array) -> jax.Array:
        valid = jnp.arange(x.shape[1])[None, :] < seq_lens[:, None]
        x = jnp.where(valid[..., None], x, 0)
        x = jax.nn.glu(self.pointwise_conv1(x), axis=-1)
        x = depthwise_conv(x, self.depthwise_conv[...])
        # Training mode (use_running_average=False) takes statistics over the valid frames only.
        x = jax.nn.silu(self.batch_norm(x, mask=jnp.broadcast_to(valid[..., None], x.shape)))
        return self.pointwise_conv2(x)


def depthwise_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x [B, T, D] convolved along T with one filter per channel, kernel [K, D], PyTorch's
    "same" padding ((K − 1) // 2 frames on the left, the rest on the right), in float32.

    Written as the sum of K shifted, scaled copies of x, which XLA fuses into one pass. As a
    grouped `conv_general_dilated` it took 45% of the `cpu` suite's speech encoder on XLA:CPU
    (about 100 ms a layer for 8 × 504 frames × 256 channels); this form takes a few ms.
    """
    size, length = kernel.shape[0], x.shape[1]
    left = (size - 1) // 2
    padded = jnp.pad(x.astype(jnp.float32), ((0, 0), (left, size - 1 - left), (0, 0)))
    kernel = kernel.astype(jnp.float32)
    out = sum(padded[:, k:k + length] * kernel[k] for k in range(size))
    return out.astype(x.dtype)


class ConformerBlock(nnx.Module):
    """x + ½FFN1(LN x); + MHA_rel(LN x); + Conv(LN x); + ½FFN2(LN x); then LN (POST order)."""

    def __init__(self, cfg: SpeechModelConfig, rngs: nnx.Rngs):
        self.ffn1_layer_norm = layer_norm(cfg, rngs)
        self.ffn1 = SwishFeedForward(cfg, rngs)
        self.self_attn_layer_norm = layer_norm(cfg, rngs)
        self.self_attn = RelativePositionAttention(cfg, rngs)
        self.conv_layer_norm = layer_norm(cfg, rngs)
        self.conv = ConvolutionModule(cfg, rngs)
        self.ffn2_layer_norm = layer_norm(cfg, rngs)
        self.ffn2 = SwishFeedForward(cfg, rngs)
        self.layer_norm = layer_norm(cfg, rngs)

    def __call__(self, x: jax.Array, seq_lens: jax.Array) -> jax.Array:
        x = x + 0.5 * self.ffn1(self.ffn1_layer_norm(x))
        x = x + self.self_attn(self.self_attn_layer_norm(x), seq_lens)
        x = x + self.conv(self.conv_layer_norm(x), seq_lens)
        x = x + 0.5 * self.ffn2(self.ffn2_layer_norm(x))
        return constrain(self.layer_norm(x), ("batch", "length", "act_embed"))
