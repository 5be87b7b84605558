"""Chunked cross-entropy equals the plain one; MSE; gradient accumulation equals one big batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sonar_jax.configs.text import get_config
from sonar_jax import sharding
from sonar_jax.train import losses, optim
from sonar_jax.train import text as text_recipe

# Unoptimised CPU code generation: compiles ~3x faster; each test compares like with like.
FAST_CPU_COMPILE = {"xla_backend_optimization_level": 0}


def _reference_ce(hidden, table, labels, weights, eps):
    """optax's CE with optax-smoothed labels on the full logits."""
    logits = jnp.einsum("btd,vd->btv", hidden, table)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, table.shape[0]), eps)
    per_token = optax.softmax_cross_entropy(logits, targets)
    correct = (jnp.argmax(logits, -1) == labels) * weights
    return jnp.sum(per_token * weights), jnp.sum(correct), jnp.sum(weights)


@pytest.fixture(scope="module")
def ce_inputs():
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(3, 7, 16)), jnp.float32)
    table = jnp.asarray(rng.normal(size=(50, 16)) * 0.5, jnp.float32)
    labels = jnp.asarray(rng.integers(0, 50, size=(3, 7)), jnp.int32)
    weights = jnp.asarray(rng.random((3, 7)) > 0.3, jnp.float32).at[2].set(0.0)  # a padded row
    return hidden, table, labels, weights


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("chunk_size", [0, 3, 6, 7, 100])
def test_chunked_ce_equals_plain_ce(ce_inputs, eps, chunk_size):
    hidden, table, labels, weights = ce_inputs

    def chunked(h, t):
        sums = losses.chunked_cross_entropy(h, t, labels, weights, label_smoothing=eps,
                                            chunk_size=chunk_size)
        return sums.loss, sums

    def plain(h, t):
        loss, correct, count = _reference_ce(h, t, labels, weights, eps)
        return loss, (correct, count)

    (loss, sums), grads = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True))(
        hidden, table)
    (ref, (correct, count)), ref_grads = jax.value_and_grad(plain, argnums=(0, 1),
                                                            has_aux=True)(hidden, table)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    np.testing.assert_allclose(sums.correct, correct)
    np.testing.assert_allclose(sums.weight, count)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5)
    # Padded positions get no gradient.
    np.testing.assert_array_equal(grads[0][2], 0.0)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_bfloat16_ce_and_gradients_within_bfloat16_tolerance(eps):
    """In bf16 the hand-written gradient rounds the logits' cotangent to bf16 before its two
    products: the loss stays within 1e-5 (relative) of float32 autodiff on the same bf16 inputs,
    every gradient within 1% of its largest entry (measured: 0.4-0.6%), in bf16."""
    rng = np.random.default_rng(1)
    batch, length, dim, vocab = 4, 24, 64, 3000
    hidden = jnp.asarray(rng.normal(size=(batch, length, dim)), jnp.bfloat16)
    table = jnp.asarray(rng.normal(size=(vocab, dim)) * 0.3, jnp.bfloat16)
    labels = jnp.asarray(rng.integers(0, vocab, (batch, length)), jnp.int32)
    weights = jnp.asarray(rng.random((batch, length)) > 0.2, jnp.float32)

    def ours(h, t):
        return losses.chunked_cross_entropy(h, t, labels, weights, label_smoothing=eps,
                                            chunk_size=32).loss

    def in_float32(h, t):
        return _reference_ce(h.astype(jnp.float32), t.astype(jnp.float32), labels, weights, eps)[0]

    loss, grads = jax.value_and_grad(ours, argnums=(0, 1))(hidden, table)
    ref, ref_grads = jax.value_and_grad(in_float32, argnums=(0, 1))(hidden, table)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == jnp.bfloat16
        assert float(jnp.abs(g.astype(jnp.float32) - r).max()) <= 0.01 * float(jnp.abs(r).max())


def test_nll_is_unsmoothed_ce_and_per_row_sums(ce_inputs):
    hidden, table, labels, weights = ce_inputs
    sums = losses.chunked_cross_entropy(hidden, table, labels, weights, label_smoothing=0.1,
                                        chunk_size=4, per_row=True)
    assert sums.loss.shape == (3,)
    ref_nll, _, _ = _reference_ce(hidden, table, labels, weights, 0.0)
    np.testing.assert_allclose(sums.nll.sum(), ref_nll, rtol=1e-5)
    np.testing.assert_allclose(sums.weight, weights.sum(1))


def test_chunked_ce_holds_one_chunk_of_logits():
    """The jitted grad of a chunked CE never allocates the [tokens, V] float32 logits."""
    batch, length, dim, vocab = 4, 256, 32, 4096
    hidden = jnp.zeros((batch, length, dim))
    table = jnp.zeros((vocab, dim))
    labels = jnp.zeros((batch, length), jnp.int32)
    weights = jnp.ones((batch, length))
    full_logits = batch * length * vocab * 4

    def temp_bytes(chunk_size):
        fn = jax.jit(jax.grad(lambda h, t: losses.chunked_cross_entropy(
            h, t, labels, weights, label_smoothing=0.1, chunk_size=chunk_size).loss,
            argnums=(0, 1)))
        mem = fn.lower(hidden, table).compile().memory_analysis()
        return None if mem is None else mem.temp_size_in_bytes

    chunked, plain = temp_bytes(32), temp_bytes(0)
    if chunked is None:
        pytest.skip("no memory analysis on this backend")
    assert plain >= full_logits
    assert chunked < full_logits / 4


def test_mse_sums_skip_weightless_rows():
    a = jnp.array([[1.0, 2.0], [0.0, 0.0], [5.0, 5.0]])
    b = jnp.array([[0.0, 0.0], [9.0, 9.0], [5.0, 3.0]])
    total, rows = losses.mse_sums(a, b, jnp.array([1.0, 0.0, 1.0]))
    np.testing.assert_allclose(total, (1 + 4) / 2 + 4 / 2)
    assert rows == 2


def test_schedules():
    cfg = get_config("tiny").optim
    cfg.update(lr=1.0, warmup_steps=4, schedule="inverse_sqrt")
    sched = optim.make_schedule(cfg)
    # fairseq inverse_sqrt: lr * sqrt(warmup / step) after warmup
    np.testing.assert_allclose([sched(s) for s in (0, 2, 4, 16)], [0, 0.5, 1.0, 0.5], rtol=1e-6)
    cfg.update(schedule="cosine", decay_steps=10, final_lr_fraction=0.1)
    sched = optim.make_schedule(cfg)
    np.testing.assert_allclose([sched(4), sched(9), sched(14), sched(100)], [1.0, 0.55, 0.1, 0.1],
                               rtol=1e-5)
    bad = cfg.copy_and_resolve_references()
    bad.schedule = "exp"
    with pytest.raises(ValueError, match="unknown lr schedule"):
        optim.make_schedule(bad)


# ----------------------------------------------------------------------------------------------
# Gradient accumulation and row padding


def _uneven_batch():
    """8 rows whose target lengths differ a lot (so microbatches hold unequal token counts)."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(8):
        n_src, n_tgt = 3 + (i * 5) % 11, 2 + (i * 7) % 13
        rows.append(([3100] + list(rng.integers(4, 3000, n_src)) + [3],
                     [3101] + list(rng.integers(4, 3000, n_tgt)) + [3]))

    def pad(seqs):
        width = max(map(len, seqs))
        return np.array([list(s) + [0] * (width - len(s)) for s in seqs], np.int32)
    src, tgt = pad([r[0] for r in rows]), pad([r[1] for r in rows])
    noised = tgt.copy()
    noised[:, 2] = 0  # punch a hole (still a valid non-empty row)
    return {"source": src, "target": tgt, "noised_target": noised}


def _trainer(accum_steps=1):
    cfg = get_config("tiny")
    cfg.train.grad_accum_steps = accum_steps
    cfg.loss.ce_chunk_size = 16
    cfg.train.compiler_options = FAST_CPU_COMPILE
    mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    return text_recipe.TextTrainer(cfg, mesh)


def _sums_and_grads(trainer, params, batch):
    fn = jax.jit(lambda p, b: trainer._loss_and_grads(p, b, with_grads=True)[:2],
                 compiler_options=FAST_CPU_COMPILE)
    return fn(params, {k: jnp.asarray(v) for k, v in batch.items()})


@pytest.fixture(scope="module")
def single_batch_step():
    trainer = _trainer(1)
    params = trainer.init(0).params
    batch = _uneven_batch()
    return params, batch, _sums_and_grads(trainer, params, batch)


@pytest.mark.parametrize("accum_steps", [2, 4])
def test_grad_accumulation_equals_one_big_batch(single_batch_step, accum_steps):
    params, batch, (ref_sums, ref_grads) = single_batch_step
    # Microbatch i takes rows i, i+k, ...: their token counts differ.
    tokens = (batch["target"] != 0).sum(1)
    per_micro = [tokens[i::accum_steps].sum() for i in range(accum_steps)]
    assert len(set(per_micro)) > 1
    sums, grads = _sums_and_grads(_trainer(accum_steps), params, batch)
    for key in ref_sums:
        np.testing.assert_allclose(sums[key], ref_sums[key], rtol=2e-5, err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=2e-4),
                 grads, ref_grads)


def test_all_pad_rows_contribute_nothing(single_batch_step):
    params, batch, (ref_sums, ref_grads) = single_batch_step
    padded = {k: np.concatenate([v, np.zeros((4, v.shape[1] + 2), v.dtype)[:, :v.shape[1]]])
              for k, v in batch.items()}
    sums, grads = _sums_and_grads(_trainer(1), params, padded)
    for key in ref_sums:
        np.testing.assert_allclose(sums[key], ref_sums[key], rtol=2e-5, err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=2e-4),
                 grads, ref_grads)
