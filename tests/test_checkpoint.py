"""Orbax params: round trips, dtype casts on restore, restoring onto a mesh."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sonar_jax import checkpoint
from sonar_jax.model_dir import load_model


def _tree():
    rng = np.random.default_rng(0)
    return {"embed": {"embedding": rng.standard_normal((16, 8), dtype=np.float32)},
            "layers": {"kernel": rng.standard_normal((2, 8, 32), dtype=np.float32),
                       "bias": np.zeros((2, 32), ml_dtypes.bfloat16)},
            "step": np.arange(3, dtype=np.int32)}


def test_round_trip_keeps_values_and_dtypes(tmp_path):
    params = _tree()
    checkpoint.save_params(tmp_path / "p", params)
    restored = checkpoint.to_numpy(checkpoint.restore_params(tmp_path / "p"))
    jax.tree.map(lambda a, b: (np.testing.assert_array_equal(a, b), a.dtype == b.dtype),
                 params, restored)
    assert restored["layers"]["bias"].dtype == ml_dtypes.bfloat16


def test_restore_casts_floats_only(tmp_path):
    checkpoint.save_params(tmp_path / "p", _tree())
    restored = checkpoint.restore_params(tmp_path / "p", dtype="bfloat16")
    assert restored["layers"]["kernel"].dtype == jnp.bfloat16
    assert restored["step"].dtype == jnp.int32


def test_save_refuses_to_overwrite(tmp_path):
    checkpoint.save_params(tmp_path / "p", _tree())
    with pytest.raises(FileExistsError):
        checkpoint.save_params(tmp_path / "p", _tree())


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        checkpoint.restore_params(tmp_path / "nowhere")


def test_restore_onto_a_mesh_of_8_devices(tmp_path):
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    checkpoint.save_params(tmp_path / "p", _tree())

    def by_leaf(leaf):  # shard the last axis over "model" when it divides, else replicate
        if leaf.ndim and leaf.shape[-1] % 2 == 0:
            return NamedSharding(mesh, P(*([None] * (leaf.ndim - 1)), "model"))
        return NamedSharding(mesh, P())

    restored = checkpoint.restore_params(tmp_path / "p", sharding=by_leaf)
    kernel = restored["layers"]["kernel"]
    assert kernel.sharding.spec == P(None, None, "model")
    assert kernel.addressable_shards[0].data.shape == (2, 8, 16)
    np.testing.assert_array_equal(np.asarray(kernel), _tree()["layers"]["kernel"])


def test_sharded_model_gives_the_same_embeddings(fixtures_dir, mid_text_dirs):
    """A converted model restored sharded over 8 devices computes what the 1-device one does."""
    out = mid_text_dirs["encoder"]
    io = np.load(fixtures_dir / "text" / "mid_text_encoder_io.npz")
    tokens = jnp.asarray(io["tokens"])
    single = load_model(out)(tokens).sentence_embeddings
    mesh = Mesh(np.array(jax.devices()), ("model",))

    def by_leaf(leaf):  # tensor-parallel style: shard the widest axis divisible by 8
        axes = [i for i, n in enumerate(leaf.shape) if n % 8 == 0]
        spec = [None] * len(leaf.shape)
        if axes:
            spec[max(axes, key=lambda i: leaf.shape[i])] = "model"
        return NamedSharding(mesh, P(*spec))

    model = load_model(out, sharding=by_leaf)
    assert len(model.layers.ffn.inner_proj.kernel.sharding.device_set) == 8
    graphdef, state = nnx.split(model)
    embed = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t).sentence_embeddings)
    sharded = embed(state, tokens)
    np.testing.assert_allclose(sharded, single, atol=1e-5)
