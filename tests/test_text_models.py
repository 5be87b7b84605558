"""Properties of the text encoder/decoder that hold for any weights (parity lives elsewhere)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sonar_jax.configs.architectures import text_model_config
from sonar_jax.models.layers import sinusoidal_table
from sonar_jax.models.text_decoder import TextDecoder
from sonar_jax.models.text_encoder import TextEncoder


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(text_model_config("text_tiny", "encoder"), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def decoder():
    return TextDecoder(text_model_config("text_tiny", "decoder"), rngs=nnx.Rngs(1))


def test_sinusoidal_table_matches_fairseq_formula():
    table = sinusoidal_table(514, 8)
    half = 4
    freqs = np.exp(np.arange(half) * -(np.log(10000.0) / (half - 1)))
    step = 7 + 2  # row 7 encodes step 9 (offset 2)
    np.testing.assert_allclose(table[7, :half], np.sin(step * freqs), rtol=1e-6)
    np.testing.assert_allclose(table[7, half:], np.cos(step * freqs), rtol=1e-6)


def test_padding_does_not_change_embedding(encoder):
    tokens = jnp.array([[3100, 50, 60, 70, 3]])
    alone = encoder(tokens).sentence_embeddings
    padded = jnp.pad(tokens, ((0, 1), (0, 4)))
    padded = padded.at[1, :3].set(jnp.array([3100, 9, 3]))
    both = encoder(padded)
    np.testing.assert_allclose(both.sentence_embeddings[0], alone[0], atol=1e-6)
    assert both.seq_lens.tolist() == [5, 3]


def test_embedding_is_mean_of_states(encoder):
    tokens = jnp.array([[3100, 50, 60, 3, 0, 0]])
    out = encoder(tokens)
    np.testing.assert_allclose(out.sentence_embeddings[0], out.encoded_seqs[0, :4].mean(0),
                               atol=1e-5)


def test_mean_pooling_reads_nothing_past_each_length():
    """Padding holding inf or NaN must not reach the mean (it is a product with the mask)."""
    from sonar_jax.models.layers import masked_mean

    states = np.random.default_rng(0).standard_normal((3, 5, 4)).astype(np.float32)
    lengths = np.array([5, 2, 0], np.int32)
    states[1, 2:], states[2] = np.inf, np.nan
    pooled = np.asarray(masked_mean(jnp.asarray(states), jnp.asarray(lengths)))
    np.testing.assert_allclose(pooled[0], states[0].mean(0), rtol=1e-6)
    np.testing.assert_allclose(pooled[1], states[1, :2].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(pooled[2], 0.0)


def test_too_long_input_is_refused(encoder):
    with pytest.raises(ValueError, match="longer than the model's 514 positions"):
        encoder(jnp.ones((1, 515), jnp.int32))


def test_cached_decoding_equals_teacher_forcing(decoder):
    emb = jax.random.normal(jax.random.key(0), (3, 64))
    tokens = jax.random.randint(jax.random.key(1), (3, 9), 4, 3000).at[:, 0].set(3)
    full = decoder(emb, tokens)
    incremental = decoder.incremental()
    graphdef, state = nnx.split(incremental)
    step = jax.jit(lambda s, t, c: nnx.merge(graphdef, s).step(t, c))
    logits, cache = incremental.prefill(emb, tokens[:, :2], capacity=16)  # the [eos, lang] prompt
    steps = [logits]
    for t in range(2, 9):
        logits, cache = step(state, tokens[:, t:t + 1], cache)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-5)
    assert int(cache.length) == 9


def test_beam_groups_read_their_history_through_the_origin_table(decoder):
    """Hypotheses that change parents reorder only `origin`; each then decodes exactly as its
    own history, teacher-forced, does."""
    emb = jax.random.normal(jax.random.key(4), (2, 64))
    group, steps = 3, 7
    tokens = np.array(jax.random.randint(jax.random.key(5), (2, group, steps), 4, 3000))
    tokens[..., 0] = 3
    parents = np.asarray(jax.random.randint(jax.random.key(6), (steps, 2, group), 0, group))
    incremental = decoder.incremental()
    history = tokens[..., :1].copy()  # [N, G, t]: each hypothesis' tokens so far
    repeated = jnp.repeat(emb, group, axis=0)
    logits, cache = incremental.prefill(repeated, jnp.asarray(history.reshape(-1, 1)), 12, group)
    for t in range(steps):
        if t:
            logits, cache = incremental.step(jnp.asarray(history[..., -1].reshape(-1, 1)), cache)
        forced = decoder(repeated, jnp.asarray(history.reshape(2 * group, -1)))
        np.testing.assert_allclose(logits[:, 0], forced[:, -1], atol=1e-5)
        if t + 1 < steps:  # move to new parents, then append each hypothesis' next token
            cache = cache.reorder(jnp.asarray(parents[t]))
            history = np.take_along_axis(history, parents[t][..., None], axis=1)
            history = np.concatenate([history, tokens[..., t + 1:t + 2]], axis=2)


def test_cross_attention_shortcut_equals_softmax_over_one_key(decoder):
    """The per-sequence shortcut is exactly attention over the single key the reference uses."""
    emb = jax.random.normal(jax.random.key(2), (2, 64))
    x = jax.random.normal(jax.random.key(3), (2, 5, 64))
    layer = nnx.merge(*_first_layer(decoder))
    attn = layer.encoder_decoder_attn
    full = attn(layer.encoder_decoder_attn_layer_norm(x), memory=emb[:, None, :])
    shortcut = layer.cross_attention_values(emb)
    np.testing.assert_allclose(full, jnp.broadcast_to(shortcut[:, None], full.shape), atol=1e-5)


def _first_layer(decoder):
    graphdef, state = nnx.split(decoder.layers)
    return graphdef, jax.tree.map(lambda v: v[0], state)


def test_remat_policies_give_identical_gradients():
    cfg = text_model_config("text_tiny", "encoder")
    tokens = jnp.array([[3100, 50, 60, 3, 0]])

    def grads(policy):
        model = TextEncoder(cfg.replace(remat_policy=policy), rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model)

        def loss(p):
            return jnp.sum(nnx.merge(graphdef, p)(tokens).sentence_embeddings ** 2)

        return jax.jit(jax.grad(loss))(params)

    base = grads("none")
    for policy in ("full", "dots", "attention"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), base,
                     grads(policy))


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    cfg = text_model_config("text_tiny", "encoder").replace(dtype="bfloat16")
    model = TextEncoder(cfg, rngs=nnx.Rngs(0))
    out = model(jnp.array([[3100, 50, 3]]))
    assert out.sentence_embeddings.dtype == jnp.float32
    assert out.encoded_seqs.dtype == jnp.bfloat16
    assert model.layers.ffn.inner_proj.kernel.dtype == jnp.float32
