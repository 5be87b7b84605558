"""Loss building blocks: label-smoothed cross-entropy (plain and chunked over tokens) and MSE.

Every function returns *sums* and *counts*, never means, so a step can normalise by the total number
of target tokens (or rows) of the whole batch, across gradient-accumulation microbatches.

Label smoothing follows optax.smooth_labels: the target distribution is (1 - eps) on the label plus
eps / V on every class, so the per-token loss is (1 - eps) * nll + eps * (logsumexp - mean logits).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from sonar_jax.sharding import constrain


class CESums(NamedTuple):
    loss: jax.Array  # sum over tokens of weight * label-smoothed CE
    nll: jax.Array  # sum of weight * -log p(label) (no smoothing; for perplexity)
    correct: jax.Array  # sum of weight * [argmax == label]
    weight: jax.Array  # sum of weights (the token count when weights are a 0/1 mask)

    def __add__(self, other: "CESums") -> "CESums":  # type: ignore[override]
        return CESums(*(a + b for a, b in zip(self, other)))


def tied_logits(hidden: jax.Array, table: jax.Array) -> jax.Array:
    """logits = hidden · tableᵀ in hidden's dtype, accumulated in float32 (as Embedding.attend)."""
    return jnp.einsum("...d,vd->...v", hidden, table.astype(hidden.dtype),
                      preferred_element_type=jnp.float32)


def cross_entropy_sums(logits: jax.Array, labels: jax.Array, weights: jax.Array,
                       label_smoothing: float = 0.0, *, per_row: bool = False) -> CESums:
    """CE of logits [..., V] against integer labels [...], weighted by `weights` [...].

    per_row: sum over the last label axis only (sums of shape labels.shape[:-1])."""
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    label_logit = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    nll = logz - label_logit
    loss = nll
    if label_smoothing:
        smooth = logz - jnp.mean(logits, axis=-1)
        loss = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    axis = -1 if per_row else None
    return CESums(jnp.sum(loss * weights, axis), jnp.sum(nll * weights, axis),
                  jnp.sum(correct * weights, axis), jnp.sum(weights, axis))


def chunked_cross_entropy(hidden: jax.Array, table: jax.Array, labels: jax.Array,
                          weights: jax.Array, *, label_smoothing: float = 0.0,
                          chunk_size: int = 8192, per_row: bool = False,
                          logits_fn: Callable[[jax.Array, jax.Array], jax.Array] = tied_logits
                          ) -> CESums:
    """`cross_entropy_sums(logits_fn(hidden, table), ...)` without materialising all the logits.

    hidden [B, T, D], labels/weights [B, T], table [V, D]. The tokens are processed `chunk_size`
    at a time by a lax.scan whose body is rematerialised (jax.checkpoint): forward and backward
    hold one chunk of float32 logits [chunk, V] at a time, and only the hidden states are saved.

    A chunk is a slab of every row over `chunk_size // B` consecutive positions (at least one),
    not a contiguous run of the flattened [B*T] tokens: the batch dimension is the one sharded
    over the mesh, so every chunk keeps all devices busy instead of landing on one device's rows.
    chunk_size <= 0 means one chunk (plain, unchunked CE). per_row: sums per row ([B] arrays).
    """
    if hidden.ndim != 3:
        raise ValueError(f"hidden must be [B, T, D], got shape {hidden.shape}")
    batch, length, dim = hidden.shape
    if chunk_size <= 0 or chunk_size >= batch * length:
        sums = _ce_chunk(hidden, table, labels, weights, label_smoothing, logits_fn)
        return sums if per_row else CESums(*(jnp.sum(x) for x in sums))
    step = max(1, min(length, chunk_size // batch))
    num_chunks = -(-length // step)
    pad = num_chunks * step - length
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        labels = jnp.pad(labels, ((0, 0), (0, pad)))
        weights = jnp.pad(weights, ((0, 0), (0, pad)))

    def chunks(x):  # [B, n*step, ...] -> [n, B, step, ...]
        return jnp.moveaxis(x.reshape(batch, num_chunks, step, *x.shape[2:]), 1, 0)

    @jax.checkpoint
    def body_sums(table, h, y, w):
        return _ce_chunk(h, table, y, w, label_smoothing, logits_fn)

    def body(acc, xs):
        return acc + body_sums(table, *xs), None

    zero = jnp.zeros((batch,), jnp.float32)
    total, _ = jax.lax.scan(body, CESums(zero, zero, zero, zero),
                            (chunks(hidden), chunks(labels), chunks(weights)))
    return total if per_row else CESums(*(jnp.sum(x) for x in total))


def _ce_chunk(hidden, table, labels, weights, label_smoothing, logits_fn) -> CESums:
    logits = logits_fn(hidden, table)
    logits = constrain(logits, ("batch", "length", "act_vocab"))
    return cross_entropy_sums(logits, labels, weights, label_smoothing, per_row=True)


def mse_sums(a: jax.Array, b: jax.Array, row_weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum over rows of weight * mean_d (a - b)^2, sum of weights) for a, b [B, D], in float32."""
    diff = a.astype(jnp.float32) - b.astype(jnp.float32)
    per_row = jnp.mean(jnp.square(diff), axis=-1)
    row_weights = row_weights.astype(jnp.float32)
    return jnp.sum(per_row * row_weights), jnp.sum(row_weights)
