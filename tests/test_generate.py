"""Jitted beam search against a literal transcription of fairseq2's algorithm (beam_reference),
on a random decoder small enough to run the slow reference; exact reference parity is in
test_generation_parity.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from beam_reference import beam_search_one
from sonar_jax.config import text_model_config
from sonar_jax.generate import GenerationConfig, TopPSampler, _truncate, generate
from sonar_jax.models.text_decoder import TextDecoder
from sonar_jax.tokenizer import EOS


@pytest.fixture(scope="module")
def decoder():
    """A random decoder edited so hypotheses differ: smaller token embeddings keep it from
    merely copying the last token, and a final-LayerNorm bias along the EOS row lets some
    hypotheses end early while others run to the limit."""
    model = TextDecoder(text_model_config("text_tiny", "decoder").replace(vocab_size=60),
                        rngs=nnx.Rngs(3))
    table = model.embed.embedding[...] * 0.2
    model.embed.embedding[...] = table
    model.layer_norm.bias[...] += 2.0 * table[EOS] / jnp.linalg.norm(table[EOS])
    return model


@pytest.mark.parametrize("beam, limit, min_gen_len", [(1, 10, 1), (3, 12, 1), (4, 9, 4)])
def test_beam_search_follows_fairseq2(decoder, beam, limit, min_gen_len):
    emb = jax.random.normal(jax.random.key(0), (5, 64)) * 3
    langs = jnp.array([50, 51, 52, 53, 54])
    out = generate(decoder, emb, langs, GenerationConfig(beam_size=beam, capacity=16,
                                                         min_gen_len=min_gen_len),
                   max_seq_len=limit)
    lengths = set()
    for i in range(5):
        ref_tokens, ref_score = beam_search_one(decoder, np.asarray(emb[i]), int(langs[i]),
                                                beam_size=beam, max_seq_len=limit,
                                                min_gen_len=min_gen_len)
        ours = np.asarray(out.tokens[i, : out.lengths[i]]).tolist()
        assert ours == ref_tokens
        assert float(out.scores[i]) == pytest.approx(float(ref_score), abs=1e-5)
        assert len(ours) >= min_gen_len and len(ours) <= limit - 2
        lengths.add(len(ours))
    assert len(lengths) > 1  # some hypotheses end early, others run to the limit


def test_top_p_keeps_the_smallest_set_reaching_p():
    lprobs = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = np.isfinite(np.asarray(_truncate(lprobs, TopPSampler(0.7))))
    assert kept.tolist() == [[True, True, False, False]]
    kept = np.isfinite(np.asarray(_truncate(lprobs, TopPSampler(0.5))))
    assert kept.tolist() == [[True, False, False, False]]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="prompt"):
        GenerationConfig(capacity=2)
    with pytest.raises(ValueError, match="temperature"):
        GenerationConfig(temperature=0)
