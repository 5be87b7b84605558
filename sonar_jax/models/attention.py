"""Scaled dot-product attention kernels: the choice between cuDNN's flash kernel and XLA's, and the
attention of a few new queries over a fixed-size KV cache during incremental decoding.

`jax.nn.dot_product_attention` with `implementation=None` is XLA's attention even on GPUs, so the
models pick the kernel themselves from one setting (`TextModelConfig.attention`): "auto" takes
cuDNN where it runs (a GPU, bf16/fp16, a head size it supports, aligned lengths, padding given as
sequence lengths) and `xla_attention` everywhere else; "xla" and "cudnn" force one. The choice is
made at trace time from static shapes, so it costs nothing at run time.
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
                          backend: str | None = None) -> str:
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
              and head_dim % 8 == 0 and head_dim <= CUDNN_MAX_HEAD_DIM
              and q_len % CUDNN_LENGTH_MULTIPLE == 0 and k_len % CUDNN_LENGTH_MULTIPLE == 0)
    return "cudnn" if usable else "xla"


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
                          implementation: str = "auto", key_lengths: jax.Array | None = None,
                          is_causal: bool = False, bias: jax.Array | None = None) -> jax.Array:
    """Attention [B, T, H, Dh] with the kernel `choose_implementation` picks.

    key_lengths [B] masks keys at and beyond each row's length (right padding); bias [B, H, T, S]
    is added to the scaled logits.
    """
    if choose_implementation(implementation, query, key) == "xla":
        return xla_attention(query, key, value, key_lengths=key_lengths, is_causal=is_causal,
                             bias=bias)
    if key_lengths is not None:
        # A row with no keys at all (an all-pad training row, weighted 0) is NaN in cuDNN but
        # finite in XLA; one visible key keeps it finite, and nothing reads that row.
        key_lengths = jnp.maximum(key_lengths, 1)
    if bias is not None:
        bias = bias.astype(query.dtype)
    return jax.nn.dot_product_attention(query, key, value, bias=bias, is_causal=is_causal,
                                        key_value_seq_lengths=key_lengths,
                                        implementation="cudnn")


# Logit of a masked key: large and finite, as XLA's attention uses, so that a row with no visible
# key is uniform rather than NaN.
MASKED_LOGIT = np.float32(-0.7 * np.finfo(np.float32).max)


def xla_attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
                  key_lengths: jax.Array | None = None, is_causal: bool = False,
                  bias: jax.Array | None = None) -> jax.Array:
    """Attention [B, T, H, Dh] in plain XLA operations, the numerics of
    `jax.nn.dot_product_attention(implementation="xla")` (float32 logits and softmax statistics,
    the same masked logit) arranged for speed.

    Heads move before positions once, so both products are plain batched GEMMs over (B, H); the
    masks are combined at their smallest broadcast shape (key lengths: [B, 1, 1, S]) into one
    select; and the softmax is normalised on the output [B, H, T, Dh] instead of on the
    probabilities (one pass fewer over the T × S matrix). With XLA:CPU's default YNNPACK
    fusions it runs about twice as fast as `jax.nn.dot_product_attention` at 32 × 256 tokens
    (8 heads of 64; on par without them), and it equals it within float32 rounding.
    """
    head_dim = query.shape[-1]
    q_len, k_len = query.shape[1], key.shape[1]
    q, k, v = (jnp.transpose(x, (0, 2, 1, 3)) for x in (query, key, value))  # [B, H, ., Dh]
    logits = jnp.einsum("bhtd,bhsd->bhts", q, k, preferred_element_type=jnp.float32)
    logits = logits * np.float32(head_dim ** -0.5)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    visible = None
    if key_lengths is not None:
        visible = (jnp.arange(k_len)[None, :] < key_lengths[:, None])[:, None, None, :]
    if is_causal:
        causal = jnp.arange(k_len)[None, :] <= jnp.arange(q_len)[:, None]
        visible = causal if visible is None else visible & causal
    if visible is not None:
        logits = jnp.where(visible, logits, MASKED_LOGIT)
    top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    weights = jnp.exp(logits - top)
    total = jnp.sum(weights, axis=-1, keepdims=True)
    out = jnp.einsum("bhts,bhsd->bhtd", weights.astype(value.dtype), v,
                     preferred_element_type=jnp.float32)
    out = (out / total).astype(query.dtype)
    return jnp.transpose(out, (0, 2, 1, 3))


def cached_attention(query: jax.Array, new_keys: jax.Array, new_values: jax.Array,
                     keys: jax.Array | None, values: jax.Array | None, origin: jax.Array,
                     start: jax.Array) -> jax.Array:
    """Attention of T new positions per hypothesis over their history in a KV cache shared within
    beam groups, and over each other (causally).

    query/new_keys/new_values [N, G, T, H, Dh] are the new positions start .. start+T-1; the
    cache holds every slot's keys and values [N, H, G, S, Dh] (heads before slots and
    positions), of which positions < start are filled, so the history products are plain GEMMs
    batched over (N, H) that read the cache as stored: keys [G·S, Dh] × queries [Dh, G·T], and
    weights [G·T, G·S] × values [G·S, Dh]. origin [N, G, S] says which slot g' of the group wrote position s of hypothesis
    g's history. Beam search never moves cache rows: when hypotheses change parents only
    `origin` (a few integers per position) is reordered, and each hypothesis reads its history
    from the slots that wrote it. History scores are computed against every slot of the group
    (G times the work of a plain lookup, small next to reading the cache) and the others masked;
    with G = 1 this is plain attention over the cache. The cache is read as it was before this
    step writes the new positions into it, so the write can happen in place; keys=None means an
    empty history (the prompt). Returns [N, G, T, H, Dh].

    Numerics follow `xla_attention`: float32 scores and softmax statistics, a large finite
    negative for masked keys, the softmax normalised on the output.
    """
    num, group, num_queries, heads, head_dim = query.shape
    scale = np.float32(head_dim ** -0.5)
    # The new positions of the same hypothesis, causally: [N, H, G, T, T'].
    new = jnp.einsum("ngthd,ngshd->nhgts", query, new_keys,
                     preferred_element_type=jnp.float32) * scale
    causal = jnp.arange(num_queries)[None, :] <= jnp.arange(num_queries)[:, None]
    new = jnp.where(causal, new, MASKED_LOGIT)
    if keys is None:
        probs = jax.nn.softmax(new, axis=-1).astype(new_values.dtype)
        return jnp.einsum("nhgts,ngshd->ngthd", probs, new_values)
    seq_len = keys.shape[3]
    rows, slots = group * num_queries, group * seq_len
    q = jnp.transpose(query, (0, 3, 1, 2, 4)).reshape(num, heads, rows, head_dim)
    scores = jnp.einsum("nhrd,nhqd->nhrq", keys.reshape(num, heads, slots, head_dim), q,
                        preferred_element_type=jnp.float32)
    scores = scores.reshape(num, heads, group, seq_len, group, num_queries)
    # own[n, g', s, g]: slot g' wrote position s of hypothesis g's history.
    own = jnp.transpose(origin, (0, 2, 1))[:, None] == jnp.arange(group)[None, :, None, None]
    own = own[:, None, :, :, :, None]  # [N, 1, G', S, G, 1]
    past = jnp.sum(jnp.where(own, scores, 0.0), axis=2) * scale  # [N, H, S, G, T]
    past = jnp.transpose(past, (0, 1, 3, 4, 2))  # [N, H, G, T, S]
    past = jnp.where(jnp.arange(seq_len) < start, past, MASKED_LOGIT)
    # One softmax over the history S and the new positions T'.
    top = jnp.maximum(jnp.max(past, axis=-1), jnp.max(new, axis=-1))[..., None]
    past_exp, new_exp = jnp.exp(past - top), jnp.exp(new - top)
    total = jnp.sum(past_exp, axis=-1) + jnp.sum(new_exp, axis=-1)
    # Back onto the slots for the value product, zero where g' is not the slot that wrote s.
    own = jnp.transpose(own, (0, 1, 4, 5, 2, 3))  # [N, 1, G, 1, G', S]
    spread = jnp.where(own, past_exp[:, :, :, :, None], 0.0).astype(values.dtype)
    out = jnp.einsum("nhqr,nhrd->nhqd", spread.reshape(num, heads, rows, slots),
                     values.reshape(num, heads, slots, head_dim),
                     preferred_element_type=jnp.float32)
    out = out.reshape(num, heads, group, num_queries, head_dim)
    out = out + jnp.einsum("nhgts,ngshd->nhgtd", new_exp.astype(new_values.dtype), new_values,
                           preferred_element_type=jnp.float32)
    out = (out / total[..., None]).astype(query.dtype)
    return jnp.transpose(out, (0, 2, 3, 1, 4))
