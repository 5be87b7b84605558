"""The functional API: the same numbers as the modules, under the caller's own jax.jit."""

import jax
import jax.numpy as jnp
import numpy as np

from sonar_jax import checkpoint, functional
from sonar_jax.generate import GenerationConfig
from sonar_jax.model_dir import read_config


def test_encode_and_decode_inside_jit(fixtures_dir, tiny_text_dirs):
    enc_dir, dec_dir = tiny_text_dirs["encoder"], tiny_text_dirs["decoder"]
    enc_params = checkpoint.restore_params(enc_dir / "params")
    dec_params = checkpoint.restore_params(dec_dir / "params")
    _, enc_cfg = read_config(enc_dir)
    _, dec_cfg = read_config(dec_dir)
    io = np.load(fixtures_dir / "text" / "tiny_text_encoder_io.npz")
    tokens = jnp.asarray(io["tokens"])

    @jax.jit
    def embed(p, t, pad):
        return functional.encode(p, t, pad, config=enc_cfg).sentence_embeddings

    np.testing.assert_allclose(embed(enc_params, tokens, tokens == 0),
                               io["sentence_embeddings"], atol=1e-5)

    dec_io = np.load(fixtures_dir / "text" / "tiny_text_decoder_io.npz")
    logits = jax.jit(lambda p, e, t: functional.decode(p, e, t, config=dec_cfg))(
        dec_params, jnp.asarray(dec_io["embeddings"]), jnp.asarray(dec_io["tgt_tokens"]))
    for row, length in enumerate(dec_io["tgt_lens"]):
        np.testing.assert_allclose(logits[row, :length], dec_io["logits"][row, :length],
                                   atol=1e-5)

    out = jax.jit(lambda p, e, l: functional.generate(
        p, e, l, config=dec_cfg, generation=GenerationConfig(beam_size=2, capacity=8)))(
        dec_params, jnp.asarray(dec_io["embeddings"]), jnp.full((6,), 3047))
    assert out.tokens.shape == (6, 6) and bool((out.lengths >= 1).all())
