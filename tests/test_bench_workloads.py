"""Parts of the benchmark workloads that only a GPU run reaches, run here on the CPU so that a
lent GPU's time is not spent finding their bugs."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import encode, suites
from sonar_jax import pipelines
from sonar_jax.config import TextModelConfig
from sonar_jax.models.text_encoder import TextEncoder


def test_the_xla_attention_variant_is_the_pipelines_encoder_under_another_graph():
    """On a GPU the encode workload also times the encoder with XLA's attention forced: the
    pipeline's arrays under the graph of that config. Both run (on CPU both are XLA's
    attention) and agree."""
    cfg = TextModelConfig(model_dim=64, num_layers=2, num_heads=4, ffn_dim=128,
                          vocab_size=suites.tokenizer().vocab_size, max_seq_len=514)
    t2e = pipelines.TextToEmbeddingModelPipeline(TextEncoder(cfg, rngs=nnx.Rngs(0)),
                                                 suites.tokenizer())
    programs = encode.variants(t2e, backend="gpu")
    assert set(programs) == {"ours", "ours_xla_attention"}
    forced = programs["ours_xla_attention"]
    assert forced().cfg.attention == "xla"
    assert all(a is b for a, b in zip(forced.leaves, t2e._encoder.leaves, strict=True))
    ids, lengths = jnp.full((4, 16), 5, jnp.int32), jnp.array([16, 9, 3, 16], jnp.int32)
    np.testing.assert_allclose(pipelines.encode_program(forced, ids, lengths),
                               pipelines.encode_program(programs["ours"], ids, lengths),
                               rtol=0, atol=1e-6)
    assert set(encode.variants(t2e, backend="cpu")) == {"ours"}
