"""Building blocks shared by the text encoder and decoder: embeddings with sinusoidal positions,
multi-head attention with fused q/k/v projections, the ReLU feed-forward block, LayerNorm,
masked mean pooling, and the scanned layer stack.

Names of submodules follow the fairseq2 state-dict names so the converter is a readable rename.

Every parameter carries logical axis names (NNX metadata `out_sharding`, never applied eagerly, so
no mesh is needed to build or run a model); `sonar_jax.sharding` maps them to mesh axes. Stacked
layers add a leading "layers" axis. Activations are constrained with `sharding.constrain`, which is
the identity unless a training step runs under `sharding.activation_rules`.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from sonar_jax.config import TextModelConfig, to_jnp_dtype
from sonar_jax.models.attention import dot_product_attention
from sonar_jax.sharding import constrain

# Name of the attention outputs [B, T, H, Dh] for the "attention" remat policy, which keeps
# them (the softmax and both products, the layer's quadratic part) and recomputes the rest.
ATTENTION_OUTPUT = "attention_output"

REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_saveable": jax.checkpoint_policies.checkpoint_dots,
    "attention": jax.checkpoint_policies.save_only_these_names(ATTENTION_OUTPUT),
}


@functools.lru_cache(maxsize=None)
def sinusoidal_table(num_positions: int, dim: int, offset: int = 2) -> np.ndarray:
    """fairseq/tensor2tensor position table: first half sin, second half cos (not interleaved).

    Row p holds the encoding of step p + offset; the released text models use offset 2
    (fairseq's legacy pad_idx + 1), the speech pooler offset 0. The float32 roundings follow the
    reference (argument i·(−ln 10⁴) then ÷(half−1), float32 angles); exp/sin/cos are evaluated in
    float64 and rounded, which lands within ~1 ulp of the reference's float32 kernels: angles reach
    ~500 rad, where one ulp of a frequency moves the encoding by ~1e-5.
    """
    half = dim // 2
    arg = (np.arange(half, dtype=np.float32) * np.float32(-math.log(10000.0))) / np.float32(half - 1)
    freqs = np.exp(arg.astype(np.float64)).astype(np.float32)
    steps = np.arange(offset, offset + num_positions, dtype=np.float32)
    angles = (steps[:, None] * freqs[None, :]).astype(np.float64)
    table = np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)
    table.flags.writeable = False  # shared by the cache
    return table


LAYERS_AXIS = "layers"  # logical name of the stacked-layer axis


def axes_metadata(*names: str) -> dict:
    """Variable metadata naming the logical axes of a parameter (not sharded at creation)."""
    return {"out_sharding": tuple(names), "eager_sharding": False}


def layer_norm(cfg: TextModelConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm with the reference's eps; statistics are computed in float32 (two-pass variance)."""
    return nnx.LayerNorm(cfg.model_dim, epsilon=cfg.layer_norm_eps, dtype=to_jnp_dtype(cfg.dtype),
                         param_dtype=to_jnp_dtype(cfg.param_dtype), use_fast_variance=False,
                         scale_metadata=axes_metadata("norm"), bias_metadata=axes_metadata("norm"),
                         rngs=rngs)


def linear(cfg: TextModelConfig, d_in: int, d_out: int, rngs: nnx.Rngs, *,
           axes: tuple[str | None, str | None], gain: float = 1.0,
           use_bias: bool = True) -> nnx.Linear:
    """Dense layer with Xavier-uniform init (fairseq2's choice for projections) scaled by `gain`.

    axes: logical names of the kernel's (input, output) dimensions; the bias takes the output's.
    """
    init = jax.nn.initializers.variance_scaling(gain**2, "fan_avg", "uniform")
    return nnx.Linear(d_in, d_out, use_bias=use_bias, kernel_init=init,
                      dtype=to_jnp_dtype(cfg.dtype), param_dtype=to_jnp_dtype(cfg.param_dtype),
                      kernel_metadata=axes_metadata(*axes), bias_metadata=axes_metadata(axes[1]),
                      rngs=rngs)


class TokenEmbedding(nnx.Module):
    """Token embedding × sqrt(model_dim) plus the offset-2 sinusoidal position encoding.

    The table doubles as the decoder's tied output projection (`attend`).
    """

    def __init__(self, cfg: TextModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        init = jax.nn.initializers.normal(cfg.model_dim**-0.5)
        self.embedding = nnx.Param(init(rngs.params(), (cfg.vocab_size, cfg.model_dim),
                                        to_jnp_dtype(cfg.param_dtype)),
                                   **axes_metadata("vocab", "embed"))

    def __call__(self, tokens: jax.Array, start: jax.Array | int = 0) -> jax.Array:
        """tokens [B, T] at positions start..start+T-1 -> [B, T, D] in the compute dtype."""
        seq_len = tokens.shape[1]
        if isinstance(start, int) and start + seq_len > self.cfg.max_seq_len:
            raise ValueError(
                f"sequence of {start + seq_len} tokens is longer than the model's "
                f"{self.cfg.max_seq_len} positions; truncate it (the pipelines do, with a warning)")
        # Gather from a table whole along its model dimension (FSDP all-gathers it, as for any
        # weight): a lookup into a table sharded along D would have to reshard the batch-sharded
        # gradient of the gather to D-sharded, which XLA does by replicating it.
        table = constrain(self.embedding[...], ("vocab", None))
        x = table[tokens].astype(jnp.float32) * math.sqrt(self.cfg.model_dim)
        # A constant, not state: the reference recomputes it too, and checkpoints never hold it.
        table = jnp.asarray(sinusoidal_table(self.cfg.max_seq_len, self.cfg.model_dim))
        pos = jax.lax.dynamic_slice_in_dim(table, start, seq_len, axis=0)
        x = (x + pos[None]).astype(to_jnp_dtype(self.cfg.dtype))
        return constrain(x, ("batch", "length", "act_embed"))

    def attend(self, x: jax.Array) -> jax.Array:
        """Tied output projection: logits = x · Eᵀ (no bias, no scaling), accumulated in float32."""
        table = self.embedding[...].astype(x.dtype)
        return jnp.einsum("...d,vd->...v", x, table, preferred_element_type=jnp.float32)


class QKVProjection(nnx.Module):
    """The query, key and value projections as one GEMM: kernel [D, 3, D], bias [3, D].

    Index 0/1/2 of the middle axis is q/k/v; each slice is initialised like fairseq2's separate
    projections (Xavier-uniform, gain 2^-1/2). The flattened heads dimension stays last, so
    tensor parallelism splits every one of q, k and v by heads.
    """

    def __init__(self, cfg, rngs: nnx.Rngs):
        dim = cfg.model_dim
        self.dtype = to_jnp_dtype(cfg.dtype)
        param_dtype = to_jnp_dtype(cfg.param_dtype)
        init = jax.nn.initializers.variance_scaling(0.5, "fan_avg", "uniform", in_axis=0,
                                                    out_axis=2, batch_axis=(1,))
        self.kernel = nnx.Param(init(rngs.params(), (dim, 3, dim), param_dtype),
                                **axes_metadata("embed", None, "heads"))
        self.bias = nnx.Param(jnp.zeros((3, dim), param_dtype), **axes_metadata(None, "heads"))

    def __call__(self, x: jax.Array, parts: slice = slice(0, 3)) -> jax.Array:
        """x [..., D] -> [..., n, D] for the projections `parts` (default all three: q, k, v)."""
        kernel = self.kernel[:, parts].astype(self.dtype)
        out = jnp.einsum("...d,dnf->...nf", x.astype(self.dtype), kernel)
        return out + self.bias[parts].astype(self.dtype)


class MultiheadAttention(nnx.Module):
    """Multi-head attention with biased projections (scale 1/sqrt(head_dim)); q/k/v fused.

    Self-attention projects q, k and v in one GEMM; cross-attention projects q from the queries
    and k, v (one GEMM) from the memory it attends to. `cfg.attention` picks the kernel
    (`sonar_jax.models.attention`).
    """

    def __init__(self, cfg: TextModelConfig, rngs: nnx.Rngs):
        self.num_heads = cfg.num_heads
        self.implementation = cfg.attention
        dim = cfg.model_dim
        # Kernels are [in, out]; the flattened heads x head_dim dimension is named "heads".
        self.qkv_proj = QKVProjection(cfg, rngs)
        self.output_proj = linear(cfg, dim, dim, rngs, axes=("heads", "embed"))

    def heads(self, x: jax.Array) -> jax.Array:
        """[..., n, D] projections -> n arrays [..., H, Dh]."""
        x = x.reshape(*x.shape[:-1], self.num_heads, -1)
        parts = [x[..., i, :, :] for i in range(x.shape[-3])]
        if x.ndim == 5:
            parts = [constrain(p, ("batch", "length", "act_heads", "act_kv")) for p in parts]
        return parts

    def project_qkv(self, x: jax.Array) -> list[jax.Array]:
        """Queries, keys and values [B, T, H, Dh] of `x` (one GEMM)."""
        return self.heads(self.qkv_proj(x))

    def project_kv(self, memory: jax.Array) -> list[jax.Array]:
        """Keys and values [B, S, H, Dh] of what cross-attention reads (one GEMM)."""
        return self.heads(self.qkv_proj(memory, slice(1, 3)))

    def project_v(self, memory: jax.Array) -> jax.Array:
        return self.heads(self.qkv_proj(memory, slice(2, 3)))[0]

    def merge_heads(self, out: jax.Array) -> jax.Array:
        """Attention output [..., H, Dh] -> the output projection [..., D]."""
        return self.output_proj(out.reshape(*out.shape[:-2], -1))

    def __call__(self, x: jax.Array, *, key_lengths: jax.Array | None = None,
                 is_causal: bool = False, memory: jax.Array | None = None) -> jax.Array:
        """Self-attention of x [B, T, D], or cross-attention to `memory` [B, S, D];
        `key_lengths` [B] masks keys at and beyond each sequence's length (right padding)."""
        if memory is None:
            q, k, v = self.project_qkv(x)
        else:
            (q,), (k, v) = self.heads(self.qkv_proj(x, slice(0, 1))), self.project_kv(memory)
        out = dot_product_attention(q, k, v, implementation=self.implementation,
                                    key_lengths=key_lengths, is_causal=is_causal)
        return self.merge_heads(checkpoint_name(out, ATTENTION_OUTPUT))


class FeedForward(nnx.Module):
    """Linear(D→F) → ReLU → Linear(F→D), both with bias."""

    def __init__(self, cfg: TextModelConfig, rngs: nnx.Rngs):
        self.inner_proj = linear(cfg, cfg.model_dim, cfg.ffn_dim, rngs, axes=("embed", "mlp"))
        self.output_proj = linear(cfg, cfg.ffn_dim, cfg.model_dim, rngs, axes=("mlp", "embed"))

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.inner_proj(x))
        if h.ndim == 3:
            h = constrain(h, ("batch", "length", "act_mlp"))
        return self.output_proj(h)


def masked_mean(x: jax.Array, lengths: jax.Array) -> jax.Array:
    """Mean over the first `lengths[b]` positions of x [B, T, D], in float32.

    Matches the reference: sum of non-pad states times 1 / (length + 1e-7).

    The sum is a batched product of the 0/1 mask with the states (exact products, float32
    accumulation), not a reduction over positions: XLA:GPU lays a reduction's input out with the
    reduced axis minor, and in the unrolled inference encoder that layout spread back through
    every residual add and LayerNorm, which then ran as transposes and column reductions (five
    kernels per LayerNorm instead of one, in the H100 program compiled by jaxlib 0.10). The mask
    has two identical rows because XLA rewrites a product with one row back into a reduction.
    Padding is also zeroed before the product, so that no value there (not even inf) reaches
    the sum.
    """
    valid = jnp.arange(x.shape[1])[None, :] < lengths[:, None]
    states = jnp.where(valid[..., None], x, 0)
    rows = jnp.broadcast_to(valid[:, None, :], (x.shape[0], 2, x.shape[1])).astype(x.dtype)
    total = jnp.einsum("bkt,btd->bkd", rows, states, preferred_element_type=jnp.float32,
                       precision=jax.lax.Precision.HIGHEST)[:, 0]
    return total * (1.0 / (lengths.astype(jnp.float32) + 1e-7))[:, None]


def lengths_from_padding(tokens: jax.Array, pad_idx: int) -> jax.Array:
    """Sequence lengths of right-padded token ids: the count of non-pad tokens per row."""
    return jnp.sum(tokens != pad_idx, axis=1).astype(jnp.int32)


def make_layer_stack(layer_cls: type, cfg: TextModelConfig, rngs: nnx.Rngs):
    """`cfg.num_layers` layers with parameters stacked on a leading axis (for nnx.scan)."""

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: LAYERS_AXIS})
    def create(layer_rngs: nnx.Rngs):
        return layer_cls(cfg, layer_rngs)

    return create(rngs)


def scan_layers(layers: nnx.Module, carry, cfg: TextModelConfig, body: Callable, xs=None):
    """Runs `carry, y = body(layer, carry, x)` over the layers in order.

    `layers` is a stacked module (from `make_layer_stack`: an `nnx.scan`, as training wants) or an
    `nnx.List` of layers (from `unstacked`: a Python loop, whose body reads each layer's weights
    where they are, with no per-layer slice of a stack). `xs` (a pytree with a leading layer
    axis, e.g. per-layer cross-attention values) is sliced per layer and the `y`s are stacked
    back; the configured remat policy wraps each layer.
    """
    if cfg.remat_policy not in REMAT_POLICIES:
        raise ValueError(f"unknown remat_policy {cfg.remat_policy!r}; "
                         f"expected one of {sorted(REMAT_POLICIES)}")
    step = body
    if cfg.remat_policy != "none":
        step = nnx.remat(body, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=False)

    if isinstance(layers, nnx.List):
        ys = []
        for index, layer in enumerate(layers):
            carry, y = step(layer, carry, jax.tree.map(lambda a: a[index], xs))
            ys.append(y)
        return carry, jax.tree.map(lambda *a: jnp.stack(a), *ys)

    # No transform_metadata: the axis names are only read outside (sharding.py), and a stack
    # built without the "layers" name (e.g. by another module's own nnx.vmap) still scans.
    @nnx.scan(in_axes=(0, nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def run(layer, carry, x):
        return step(layer, carry, x)

    return run(layers, carry, xs)


def unstack_layers(stack: nnx.Module) -> nnx.List:
    """The layers of a stacked module as a list of modules, each holding its slice of the arrays."""
    if isinstance(stack, nnx.List):
        return stack
    graphdef, state = nnx.split(stack)
    count = jax.tree.leaves(state)[0].shape[0]
    return nnx.List([nnx.merge(graphdef, jax.tree.map(lambda x: x[i], state))
                     for i in range(count)])


def unstacked(model: nnx.Module) -> nnx.Module:
    """A copy of `model` with every layer stack (an attribute `layers`) turned into a list.

    For inference: a scan over stacked weights slices each layer's weights out of the stack on
    every call (one copy of all the weights per call on GPUs); the unrolled list reads them in
    place. Done once, outside jit, it costs one copy of the layer weights; `model` is unchanged
    (training keeps the stacks, which scan and rematerialise).
    """
    model = nnx.merge(*nnx.split(model))  # new module objects over the same arrays
    for _, module in list(nnx.iter_modules(model)):
        if isinstance(getattr(module, "layers", None), nnx.Module):
            module.layers = unstack_layers(module.layers)
    return model
