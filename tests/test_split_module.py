"""`sonar_jax.split.SplitModule`: an nnx module handed to jitted programs batch after batch
without hashing its graph or walking its state on every call."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sonar_jax.configs.architectures import text_model_config
from sonar_jax.models.layers import unstacked
from sonar_jax.models.text_encoder import TextEncoder
from sonar_jax.split import SplitModule


def _encoder(num_layers=2):
    cfg = text_model_config("text_tiny", "encoder").replace(num_layers=num_layers)
    return unstacked(TextEncoder(cfg, rngs=nnx.Rngs(0)))


@jax.jit
def _embed(encoder: SplitModule, tokens, lengths):
    return encoder()(tokens, lengths).sentence_embeddings


def _inputs():
    return jnp.full((3, 7), 5, jnp.int32), jnp.array([7, 4, 2], jnp.int32)


def test_a_split_module_computes_what_the_module_computes():
    model = _encoder()
    tokens, lengths = _inputs()
    np.testing.assert_array_equal(_embed(SplitModule.of(model), tokens, lengths),
                                  jax.jit(lambda t, n: model(t, n).sentence_embeddings)(tokens,
                                                                                        lengths))


def test_calls_hash_the_graph_once_not_per_call(monkeypatch):
    """The graph definition is hashed when the module is split, never by the calls after (jit
    hashes a static argument on every call; an nnx GraphDef hashes its node tree each time)."""
    split = SplitModule.of(_encoder())
    graphdef_type = type(split.structure.graphdef)
    hashes = []
    original = graphdef_type.__hash__
    monkeypatch.setattr(graphdef_type, "__hash__", lambda self: hashes.append(1) or original(self))
    tokens, lengths = _inputs()
    for _ in range(3):
        jax.block_until_ready(_embed(split, tokens, lengths))
    assert hashes == []
    jax.block_until_ready(_embed(SplitModule.of(_encoder()), tokens, lengths))
    assert len(hashes) == 1  # a new split hashes its graph once


def test_equal_splits_share_a_program_and_other_graphs_compile_their_own():
    tokens, lengths = _inputs()
    jax.block_until_ready(_embed(SplitModule.of(_encoder()), tokens, lengths))
    before = _embed._cache_size()
    jax.block_until_ready(_embed(SplitModule.of(_encoder()), tokens, lengths))  # same structure
    assert _embed._cache_size() == before
    jax.block_until_ready(_embed(SplitModule.of(_encoder(num_layers=3)), tokens, lengths))
    assert _embed._cache_size() == before + 1


def test_a_split_module_is_a_pytree_of_its_arrays():
    model = _encoder()
    split = SplitModule.of(model)
    assert len(jax.tree.leaves(split)) == len(jax.tree.leaves(nnx.state(model)))
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), split)
    assert isinstance(abstract, SplitModule) and abstract.structure is split.structure
    tokens, lengths = _inputs()
    assert _embed.lower(abstract, tokens, lengths).compile() is not None
