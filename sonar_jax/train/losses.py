"""Loss building blocks: label-smoothed cross-entropy over the tied vocabulary projection (chunked
over tokens, with a hand-written gradient) and MSE.

Every function returns *sums* and *counts*, never means, so a step can normalise by the total number
of target tokens (or rows) of the whole batch, across gradient-accumulation microbatches.

Label smoothing follows optax.smooth_labels: the target distribution is (1 - eps) on the label plus
eps / V on every class, so the per-token loss is (1 - eps) * nll + eps * (logsumexp - mean logits).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

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


def chunked_cross_entropy(hidden: jax.Array, table: jax.Array, labels: jax.Array,
                          weights: jax.Array, *, label_smoothing: float = 0.0,
                          chunk_size: int = 8192, per_row: bool = False) -> CESums:
    """Label-smoothed CE sums of the tied logits `hidden · tableᵀ` against `labels`, weighted by
    `weights`, without materialising all the logits.

    hidden [B, T, D], labels/weights [B, T], table [V, D]. The tokens are processed `chunk_size`
    at a time: forward and backward hold one chunk of float32 logits [chunk, V] at a time, and
    only the hidden states (and a float32 log-partition per token) are kept between them.

    The gradient is written out by hand (`_tied_ce`): the logits' cotangent is formed in float32
    from the softmax statistics, then cast to the compute dtype, so both backward matrix
    products over the vocabulary (into the hidden states and into the table) run in that dtype
    with float32 accumulation, as the forward one does. (Autodiff of the forward would multiply
    a float32 cotangent by the table, a float32 GEMM over the whole vocabulary.) The table's
    gradient is accumulated over chunks in float32 and rounded to the table's dtype once.

    A chunk is a slab of every row over `chunk_size // B` consecutive positions (at least one),
    not a contiguous run of the flattened [B*T] tokens: the batch dimension is the one sharded
    over the mesh, so every chunk keeps all devices busy instead of landing on one device's rows.
    chunk_size <= 0 means one chunk (plain, unchunked CE). per_row: sums per row ([B] arrays).
    """
    if hidden.ndim != 3:
        raise ValueError(f"hidden must be [B, T, D], got shape {hidden.shape}")
    batch, length, _ = hidden.shape
    step = length
    if 0 < chunk_size < batch * length:
        step = max(1, min(length, chunk_size // batch))
    num_chunks = -(-length // step)
    pad = num_chunks * step - length
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        labels = jnp.pad(labels, ((0, 0), (0, pad)))
        weights = jnp.pad(weights, ((0, 0), (0, pad)))

    def chunks(x):  # [B, n*step, ...] -> [n, B, step, ...]
        return jnp.moveaxis(x.reshape(batch, num_chunks, step, *x.shape[2:]), 1, 0)

    total = _tied_ce(chunks(hidden), table, chunks(labels).astype(jnp.int32),
                     chunks(weights).astype(jnp.float32), float(label_smoothing))
    return total if per_row else CESums(*(jnp.sum(x) for x in total))


def _chunk_logits(hidden: jax.Array, table: jax.Array) -> jax.Array:
    return constrain(tied_logits(hidden, table), ("batch", "length", "act_vocab"))


def _token_terms(logits: jax.Array, labels: jax.Array, label_smoothing: float):
    """(per-token loss, nll, correct, log-partition) of float32 logits [B, c, V]."""
    logz = jax.nn.logsumexp(logits, axis=-1)
    label_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    nll = logz - label_logit
    loss = nll
    if label_smoothing:
        loss = (1.0 - label_smoothing) * nll + label_smoothing * (logz - jnp.mean(logits, -1))
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return loss, nll, correct, logz


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _tied_ce(hidden, table, labels, weights, label_smoothing) -> CESums:
    """Per-row CE sums over chunks hidden [n, B, c, D], labels/weights [n, B, c]."""
    return _tied_ce_fwd(hidden, table, labels, weights, label_smoothing)[0]


def _tied_ce_fwd(hidden, table, labels, weights, label_smoothing):
    def body(acc, xs):
        h, y, w = xs
        loss, nll, correct, logz = _token_terms(_chunk_logits(h, table), y, label_smoothing)
        sums = CESums(*(jnp.sum(t * w, axis=-1) for t in (loss, nll, correct)), jnp.sum(w, -1))
        return acc + sums, (loss, nll, correct, logz)

    zero = jnp.zeros(hidden.shape[1], jnp.float32)
    total, per_token = jax.lax.scan(body, CESums(zero, zero, zero, zero),
                                    (hidden, labels, weights))
    return total, (hidden, table, labels, weights, per_token)


def _tied_ce_bwd(label_smoothing, residuals, grads: CESums):
    hidden, table, labels, weights, (loss, nll, correct, logz) = residuals
    vocab = table.shape[0]
    g_loss, g_nll = grads.loss[:, None], grads.nll[:, None]  # [B, 1]: per row, any position
    # d/dlogits of the weighted sums, per token: (g_loss + g_nll)·softmax − (g_loss(1 − eps) +
    # g_nll)·onehot(label) − g_loss·eps/V, times the token's weight.
    on_softmax = g_loss + g_nll
    on_label = g_loss * (1.0 - label_smoothing) + g_nll
    uniform = g_loss * (label_smoothing / vocab)

    def body(d_table, xs):
        h, y, w, z = xs
        logits = _chunk_logits(h, table)
        d = jnp.exp(logits - z[..., None]) * (on_softmax * w)[..., None]
        d = d - jnp.where(jnp.arange(vocab) == y[..., None], (on_label * w)[..., None], 0.0)
        if label_smoothing:
            d = d - (uniform * w)[..., None]
        d = constrain(d.astype(h.dtype), ("batch", "length", "act_vocab"))
        d_hidden = jnp.einsum("bcv,vd->bcd", d, table.astype(h.dtype),
                              preferred_element_type=jnp.float32).astype(h.dtype)
        d_table = d_table + jnp.einsum("bcv,bcd->vd", d, h, preferred_element_type=jnp.float32)
        return _like_table(d_table), d_hidden

    d_table = _like_table(jnp.zeros(table.shape, jnp.float32))
    d_table, d_hidden = jax.lax.scan(body, d_table, (hidden, labels, weights, logz))
    # The sums are linear in the weights.
    d_weights = sum(g[:, None] * t for g, t in zip(grads, (loss, nll, correct)))
    d_weights = d_weights + grads.weight[:, None]
    return d_hidden, d_table.astype(table.dtype), None, d_weights.astype(weights.dtype)


_tied_ce.defvjp(_tied_ce_fwd, _tied_ce_bwd)


def _like_table(d_table: jax.Array) -> jax.Array:
    """The float32 table gradient, sharded as the table is (FSDP: along D): each chunk's
    contribution is then reduce-scattered into it, and no device holds the whole [V, D]
    accumulator (1 GiB at the released vocabulary)."""
    return constrain(d_table, ("vocab", "embed"))


def mse_sums(a: jax.Array, b: jax.Array, row_weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum over rows of weight * mean_d (a - b)^2, sum of weights) for a, b [B, D], in float32."""
    diff = a.astype(jnp.float32) - b.astype(jnp.float32)
    per_row = jnp.mean(jnp.square(diff), axis=-1)
    row_weights = row_weights.astype(jnp.float32)
    return jnp.sum(per_row * row_weights), jnp.sum(row_weights)
