"""The attention kernels: `xla_attention` against JAX's own XLA attention, and the kernel choice."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sonar_jax.models.attention import choose_implementation, dot_product_attention, xla_attention


def _inputs(dtype, batch=3, q_len=16, k_len=16, heads=2, head_dim=8, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal((batch, length, heads, head_dim)), dtype)
               for length in (q_len, k_len, k_len))
    bias = jnp.asarray(rng.standard_normal((batch, heads, q_len, k_len)), jnp.float32)
    # A full row, a padded row and an all-pad row (a training batch's filler, weighted 0).
    lengths = jnp.asarray([k_len, k_len // 2 + 1, 0][:batch], jnp.int32)
    return q, k, v, bias, lengths


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_equals_jax_xla_attention_in_float32(causal, with_bias, with_lengths):
    q, k, v, bias, lengths = _inputs(jnp.float32)
    kwargs = dict(is_causal=causal, bias=bias if with_bias else None)
    ours = xla_attention(q, k, v, key_lengths=lengths if with_lengths else None, **kwargs)
    theirs = jax.nn.dot_product_attention(
        q, k, v, key_value_seq_lengths=lengths if with_lengths else None, implementation="xla",
        **kwargs)
    assert np.isfinite(np.asarray(ours)).all()  # the all-pad row is uniform, not NaN
    np.testing.assert_allclose(ours, theirs, atol=2e-6, rtol=1e-5)


def test_gradients_equal_jax_xla_attention():
    q, k, v, bias, lengths = _inputs(jnp.float32)

    def loss(fn, **kw):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, bias=bias, is_causal=True, **kw)))

    ours = jax.grad(loss(xla_attention, key_lengths=lengths), argnums=(0, 1, 2))(q, k, v)
    theirs = jax.grad(loss(jax.nn.dot_product_attention, key_value_seq_lengths=lengths,
                           implementation="xla"), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_bfloat16_within_bfloat16_rounding():
    """bf16 inputs: float32 logits and statistics on both sides; the outputs (|x| ≲ 3) differ by
    at most a few bf16 ulps."""
    q, k, v, _, lengths = _inputs(jnp.bfloat16, q_len=24, k_len=24)
    ours = xla_attention(q, k, v, key_lengths=lengths)
    theirs = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths,
                                          implementation="xla")
    assert ours.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(theirs, np.float32),
                               atol=2e-2, rtol=2e-2)


def test_auto_takes_cudnn_only_where_it_runs():
    q16, k16 = (jnp.zeros((2, 64, 4, 64), jnp.bfloat16) for _ in range(2))
    assert choose_implementation("auto", q16, k16, backend="gpu") == "cudnn"
    assert choose_implementation("auto", q16, k16, backend="cpu") == "xla"
    assert choose_implementation("auto", q16, k16, backend="tpu") == "xla"
    q32 = q16.astype(jnp.float32)
    assert choose_implementation("auto", q32, q32, backend="gpu") == "xla"  # dtype
    odd = jnp.zeros((2, 63, 4, 64), jnp.bfloat16)
    assert choose_implementation("auto", odd, odd, backend="gpu") == "xla"  # unaligned length
    wide = jnp.zeros((2, 64, 4, 256), jnp.bfloat16)
    assert choose_implementation("auto", wide, wide, backend="gpu") == "xla"  # head size
    assert choose_implementation("cudnn", odd, odd, backend="cpu") == "cudnn"  # forced
    with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
        choose_implementation("flash", q16, k16)


def test_setting_xla_on_cpu_runs_xla_attention():
    q, k, v, _, lengths = _inputs(jnp.float32)
    np.testing.assert_array_equal(
        dot_product_attention(q, k, v, implementation="auto", key_lengths=lengths),
        xla_attention(q, k, v, key_lengths=lengths))
