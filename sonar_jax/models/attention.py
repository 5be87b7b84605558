"""Scaled dot-product attention kernels: the choice between cuDNN's flash kernel and XLA's, and the
attention of a few new queries over a fixed-size KV cache during incremental decoding.

`jax.nn.dot_product_attention` with `implementation=None` is XLA's attention even on GPUs, so the
models pick the kernel themselves from one setting (`TextModelConfig.attention`): "auto" takes
cuDNN where it runs (a GPU, bf16/fp16, a head size it supports, aligned lengths, padding given as
sequence lengths rather than a boolean mask) and XLA everywhere else; "xla" and "cudnn" force one.
The choice is made at trace time from static shapes, so it costs nothing at run time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ("auto", "xla", "cudnn")
# cuDNN's flash kernel rejects some unaligned lengths (63 on an H100); the pipelines and the
# training buckets pad lengths to multiples of 8, which it takes.
CUDNN_LENGTH_MULTIPLE = 8
CUDNN_MAX_HEAD_DIM = 128


def check_implementation(name: str) -> str:
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {name!r}; expected one of "
                         f"{IMPLEMENTATIONS}")
    return name


def choose_implementation(setting: str, query: jax.Array, key: jax.Array, *,
                          has_mask: bool = False, backend: str | None = None) -> str:
    """'cudnn' or 'xla' for attention of query [B, T, H, Dh] over key [B, S, H, Dh].

    "auto" takes cuDNN only where all of its conditions hold; `backend` defaults to JAX's.
    """
    if check_implementation(setting) != "auto":
        return setting
    backend = jax.default_backend() if backend is None else backend
    _, q_len, _, head_dim = query.shape
    k_len = key.shape[1]
    usable = (backend in ("gpu", "cuda")
              and query.dtype in (jnp.bfloat16, jnp.float16)
              and not has_mask
              and head_dim % 8 == 0 and head_dim <= CUDNN_MAX_HEAD_DIM
              and q_len % CUDNN_LENGTH_MULTIPLE == 0 and k_len % CUDNN_LENGTH_MULTIPLE == 0)
    return "cudnn" if usable else "xla"


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
                          implementation: str = "auto", key_lengths: jax.Array | None = None,
                          is_causal: bool = False, bias: jax.Array | None = None,
                          mask: jax.Array | None = None) -> jax.Array:
    """Attention [B, T, H, Dh] with the kernel `choose_implementation` picks.

    key_lengths [B] masks keys at and beyond each row's length (right padding).
    """
    impl = choose_implementation(implementation, query, key, has_mask=mask is not None)
    if impl == "cudnn" and key_lengths is not None:
        # A row with no keys at all (an all-pad training row, weighted 0) is NaN in cuDNN but
        # finite in XLA; one visible key keeps it finite, and nothing reads that row.
        key_lengths = jnp.maximum(key_lengths, 1)
    if bias is not None:
        bias = bias.astype(query.dtype)
    return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask,
                                        is_causal=is_causal, key_value_seq_lengths=key_lengths,
                                        implementation=impl)


def cached_attention(query: jax.Array, new_keys: jax.Array, new_values: jax.Array,
                     keys: jax.Array | None, values: jax.Array | None, origin: jax.Array,
                     start: jax.Array) -> jax.Array:
    """Attention of T new positions per hypothesis over their history in a KV cache shared within
    beam groups, and over each other (causally).

    query/new_keys/new_values [N, G, T, H, Dh] are the new positions start .. start+T-1;
    keys/values [N, H, G, S, Dh] hold every slot's cache, of which positions < start are filled
    (heads before slots and positions, so the products read the cache in its stored layout, as
    batched matrix products over (N, H)); origin [N, G, S] says which slot g' of the group wrote
    position s of hypothesis g's history. Beam search never moves cache rows: when hypotheses
    change parents only `origin` (a few integers per position) is reordered, and each hypothesis
    reads its history from the slots that wrote it. History scores are computed against every
    slot of the group (G times the work of a plain lookup, small next to reading the cache) and
    the others masked; with G = 1 this is plain attention over the cache. The cache is read as
    it was before this step writes the new positions into it, so the write can happen in place;
    keys=None means an empty history (the prompt). Returns [N, G, T, H, Dh].

    Numerics follow XLA's `jax.nn.dot_product_attention`: float32 scores and softmax, a large
    finite negative for masked keys, probabilities cast to the value dtype.
    """
    num, group, num_queries, heads, head_dim = query.shape
    scale = np.float32(head_dim ** -0.5)
    masked = np.float32(-0.7 * np.finfo(np.float32).max)
    # The new positions of the same hypothesis, causally: [N, H, G, T, T'].
    new = jnp.einsum("ngthd,ngshd->nhgts", query, new_keys,
                     preferred_element_type=jnp.float32) * scale
    causal = jnp.arange(num_queries)[None, :] <= jnp.arange(num_queries)[:, None]
    new = jnp.where(causal, new, masked)
    if keys is None:
        probs = jax.nn.softmax(new, axis=-1).astype(new_values.dtype)
        return jnp.einsum("nhgts,ngshd->ngthd", probs, new_values)
    seq_len = keys.shape[3]
    # History: keys [.., G'·S, Dh] · queries [.., G·T, Dh]ᵀ over the batch (N, H), the cache as
    # the left operand in its stored layout; then each hypothesis keeps, per position, the score
    # against the slot that wrote it.
    rows = group * num_queries
    q = jnp.transpose(query, (0, 3, 1, 2, 4)).reshape(num, heads, rows, head_dim)
    # A few query rows (beam 5: 5) run 2-3x faster on XLA:CPU's vectorised kernels when padded to
    # a multiple of 8; the padding rows are dropped.
    padded = rows if rows == 1 else -(-rows // 8) * 8
    q = jnp.pad(q, ((0, 0), (0, 0), (0, padded - rows), (0, 0)))
    batch = ((0, 1), (0, 1))
    scores = jax.lax.dot_general(keys, q, (((4,), (3,)), batch), preferred_element_type=jnp.float32)
    scores = scores[..., :rows].reshape(num, heads, group, seq_len, group, num_queries)
    # own[n, g', s, g]: slot g' wrote position s of hypothesis g's history.
    own = jnp.transpose(origin, (0, 2, 1))[:, None, :, :] == jnp.arange(group)[None, :, None, None]
    own = own[:, None, :, :, :, None]  # [N, 1, G', S, G, 1]
    past = jnp.sum(jnp.where(own, scores, 0.0), axis=2) * scale  # [N, H, S, G, T]
    filled = (jnp.arange(seq_len) < start)[:, None, None]
    past = jnp.where(filled, past, masked)
    # One softmax over the history S and the new positions T'.
    top = jnp.maximum(jnp.max(past, axis=2), jnp.max(new, axis=-1))  # [N, H, G, T]
    past_exp = jnp.exp(past - top[:, :, None])
    new_exp = jnp.exp(new - top[..., None])
    total = jnp.sum(past_exp, axis=2) + jnp.sum(new_exp, axis=-1)
    past_p = past_exp / total[:, :, None]
    new_p = (new_exp / total[..., None]).astype(values.dtype)
    # Back onto the slots for the value product: [N, H, G', S, G, T], zero where g' is not the
    # slot that wrote position s.
    spread = jnp.where(own, past_p[:, :, None], 0.0).astype(values.dtype)
    out = jax.lax.dot_general(spread, values, (((2, 3), (2, 3)), batch))  # [N, H, G, T, Dh]
    out = out + jnp.einsum("nhgts,ngshd->nhgtd", new_p, new_values)
    return jnp.transpose(out, (0, 2, 3, 1, 4))
