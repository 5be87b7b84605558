"""Meshes, logical-axis rules, sharded init, and sharded train steps equal to the 1-device step."""

import json
import math
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from sonar_jax.configs.text import get_config
from sonar_jax import sharding
from sonar_jax.tokenizer import NllbTokenizer
from sonar_jax.train import text as text_recipe

# Unoptimised CPU code generation: compiles ~3x faster; each test compares like with like.
FAST_CPU_COMPILE = {"xla_backend_optimization_level": 0}


def _config(preset="fsdp", **mesh):
    cfg = get_config("tiny")
    cfg.sharding.preset = preset
    cfg.mesh.update({**dict(data=1, fsdp=-1, tensor=1), **mesh})
    cfg.optim.warmup_steps = 0  # a real update on the first step
    cfg.train.compiler_options = FAST_CPU_COMPILE
    return cfg


def _batch(fixtures_dir, rows=8):
    """Real token rows: English sources, French targets, noised = target minus one token."""
    tok = NllbTokenizer(fixtures_dir / "spm" / "udhr.spm.model")
    sentences = json.loads((fixtures_dir / "spm" / "udhr_sentences.json").read_text())
    by_lang = {}
    for item in sentences:
        by_lang.setdefault(item["lang"], []).append(item["text"])
    src = [tok.encode(t[:80], "eng_Latn") for t in by_lang["eng_Latn"]]
    tgt = [tok.encode(t[:60], lang) for lang, texts in sorted(by_lang.items())
           if lang != "eng_Latn" for t in texts]
    src = (src * rows)[:rows]
    tgt = (tgt * rows)[:rows]
    noised = [t[:1] + t[2:] for t in tgt]

    def pad(seqs):
        width = max(map(len, seqs))
        return np.array([s + [0] * (width - len(s)) for s in seqs], np.int32)
    return {"source": pad(src), "target": pad(tgt), "noised_target": pad(noised)}


def _one_step(cfg, mesh, batch):
    trainer = text_recipe.TextTrainer(cfg, mesh)
    state = trainer.init(0)
    new_state, metrics = trainer.train_step(state, trainer.shard_batch(batch))
    return trainer, new_state, jax.tree.map(np.asarray, metrics)


# ----------------------------------------------------------------------------------------------
# Rules and meshes


def test_logical_to_spec_resolution():
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
    rules = sharding.normalize_rules(sharding.PRESETS["tensor"])
    spec = lambda names, shape: sharding.logical_to_spec(names, shape, rules, mesh)  # noqa: E731
    assert spec(("layers", "embed", "mlp"), (3, 8, 16)) == P(None, "fsdp", "tensor")
    assert spec(("vocab", "embed"), (10, 8)) == P("tensor", "fsdp")
    assert spec(("vocab", "embed"), (11, 8)) == P(None, "fsdp")  # 11 rows do not split in 2
    assert spec(("batch", "length", "act_embed"), (4, 5, 8)) == P(("data", "fsdp"))
    assert spec(("norm",), (8,)) == P()
    # A mesh axis is used at most once per array: the second "embed" stays whole.
    assert spec(("embed", "embed"), (8, 8)) == P("fsdp")
    # Size-1 mesh axes are left out of the specs.
    flat = sharding.make_mesh(dict(data=1, fsdp=8, tensor=1))
    assert sharding.logical_to_spec(("batch", None), (8, 3), rules, flat) == P("fsdp")
    with pytest.raises(ValueError, match="do not match"):
        spec(("embed",), (8, 8))
    with pytest.raises(ValueError, match="unknown mesh axes"):
        sharding.normalize_rules((("embed", "model"),))


def test_make_mesh_sizes_and_errors():
    mesh = sharding.make_mesh(dict(data=2, fsdp=-1, tensor=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert dict(sharding.make_mesh(dict(data=1, fsdp=1, tensor=1),
                                   devices=jax.devices()[:1]).shape) == \
        {"data": 1, "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match="make 6 devices"):
        sharding.make_mesh(dict(data=3, fsdp=2, tensor=1))
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        sharding.make_mesh(dict(data=-1, fsdp=-1, tensor=1))
    with pytest.raises(ValueError, match="not divisible"):
        sharding.make_mesh(dict(data=3, fsdp=-1, tensor=1))
    # This host is one process (one granule): a multi-slice/host split of 2 cannot be made.
    with pytest.raises(ValueError, match="dcn"):
        sharding.make_mesh(dict(data=1, fsdp=-1, tensor=1, dcn_data=2))


def test_constrain_is_identity_without_rules():
    x = np.ones((2, 3), np.float32)
    assert sharding.constrain(x, ("batch", "act_embed")) is x


def test_every_parameter_has_logical_axes():
    cfg = _config()
    trainer = text_recipe.TextTrainer(cfg, sharding.make_mesh(cfg.mesh))
    names = jax.tree.leaves(trainer.param_axes, is_leaf=lambda x: isinstance(x, tuple))
    shapes = jax.tree.leaves(trainer.abstract_params)
    assert len(names) == len(shapes) > 0
    assert all(len(n) == len(s.shape) for n, s in zip(names, shapes))
    layers = trainer.param_axes["decoder"]["layers"]
    assert layers["ffn"]["inner_proj"]["kernel"] == ("layers", "embed", "mlp")
    assert layers["self_attn"]["qkv_proj"]["kernel"] == ("layers", "embed", None, "heads")
    assert trainer.param_axes["encoder"]["embed"]["embedding"] == ("vocab", "embed")


def test_speech_parameters_shard_like_the_text_layers_under_tensor_parallelism():
    """The Conformer's FFNs and convolution module split their inner dimension over 'tensor',
    as the text FFNs do, and its attention splits heads."""
    from sonar_jax.configs import get_config as recipe_config
    from sonar_jax.train.speech_distill import SpeechDistillTrainer

    cfg = recipe_config("speech_distill", "tiny")
    cfg.sharding.preset = "tensor"
    cfg.mesh.update(dict(data=2, fsdp=2, tensor=2))
    trainer = SpeechDistillTrainer(cfg, sharding.make_mesh(cfg.mesh))
    block = trainer.param_axes["student"]["layers"]
    assert block["ffn1"]["inner_proj"]["kernel"] == ("layers", "embed", "mlp")
    assert block["conv"]["pointwise_conv1"]["kernel"] == ("layers", "embed", "mlp")
    assert block["conv"]["pointwise_conv2"]["kernel"] == ("layers", "mlp", "embed")
    specs = trainer.param_shardings["student"]["layers"]
    assert specs["ffn1"]["inner_proj"]["kernel"].spec == P(None, "fsdp", "tensor")
    assert specs["self_attn"]["qkv_proj"]["kernel"].spec == P(None, "fsdp", None, "tensor")


def test_parameter_axis_names_must_be_known():
    from flax import nnx

    from sonar_jax.models.layers import axes_metadata

    class Odd(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(np.zeros((2, 3), np.float32), **axes_metadata("embed", "hidden"))

    with pytest.raises(ValueError, match=r"\['hidden'\] are not among"):
        sharding.logical_axes_of_state(nnx.state(Odd()))


def test_batch_not_divisible_by_mesh_is_a_clear_error(fixtures_dir):
    cfg = _config("data_parallel", data=8, fsdp=1)
    trainer = text_recipe.TextTrainer(cfg, sharding.make_mesh(cfg.mesh))
    batch = _batch(fixtures_dir, rows=6)
    with pytest.raises(ValueError, match="cannot be split over the mesh's batch axes"):
        trainer.shard_batch(batch)
    cfg.train.grad_accum_steps = 2
    trainer = text_recipe.TextTrainer(cfg, sharding.make_mesh(cfg.mesh))
    with pytest.raises(ValueError, match="multiple of 16 rows"):
        trainer.shard_batch(_batch(fixtures_dir, rows=8))


# ----------------------------------------------------------------------------------------------
# Sharded init


def test_init_is_sharded_at_creation():
    cfg = _config("fsdp", fsdp=8)
    trainer = text_recipe.TextTrainer(cfg, sharding.make_mesh(cfg.mesh))
    compiled = trainer._init_params.lower(jax.random.key(0)).compile()
    # The init is one jit whose outputs are already the sharded parameters...
    for got, want in zip(jax.tree.leaves(compiled.output_shardings),
                         jax.tree.leaves(trainer.param_shardings)):
        assert got.spec == want.spec
    # ...and no device ever holds (or builds) the whole parameter set.
    total = sum(math.prod(x.shape) * x.dtype.itemsize
                for x in jax.tree.leaves(trainer.abstract_params))
    mem = compiled.memory_analysis()
    if mem is not None:
        assert mem.output_size_in_bytes < total / 4
        assert mem.output_size_in_bytes + mem.temp_size_in_bytes < total / 2

    state = trainer.init(0)
    kernel = state.params["encoder"]["layers"]["ffn"]["inner_proj"]["kernel"]  # [L, D, F]
    assert kernel.sharding.spec == P(None, "fsdp")
    assert kernel.addressable_shards[0].data.shape == (2, 64 // 8, 128)
    # Adam moments follow the parameters; the step count is replicated.
    adam = state.opt_state[1][0]
    assert adam.mu["encoder"]["layers"]["ffn"]["inner_proj"]["kernel"].sharding.spec == \
        P(None, "fsdp")
    assert adam.count.sharding.spec == P()


# ----------------------------------------------------------------------------------------------
# The same step on every layout


@pytest.fixture(scope="module")
def reference(fixtures_dir):
    cfg = _config()
    mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    batch = _batch(fixtures_dir)
    _, state, metrics = _one_step(cfg, mesh, batch)
    return batch, jax.tree.map(np.asarray, state.params), metrics


SPECS = {
    # The layouts: dp=8, fsdp=8, dp=2 x fsdp=2 x tensor=2.
    # preset, mesh, {param path: expected spec}
    "dp8": ("data_parallel", dict(data=8, fsdp=1),
            {("encoder", "layers", "ffn", "inner_proj", "kernel"): P()}),
    "fsdp8": ("fsdp", dict(data=1, fsdp=8),
              {("encoder", "layers", "ffn", "inner_proj", "kernel"): P(None, "fsdp"),
               ("decoder", "embed", "embedding"): P(None, "fsdp")}),
    "dp2_fsdp2_tensor2": ("tensor", dict(data=2, fsdp=2, tensor=2),
                          {("encoder", "layers", "ffn", "inner_proj", "kernel"):
                               P(None, "fsdp", "tensor"),
                           ("decoder", "layers", "self_attn", "output_proj", "kernel"):
                               P(None, "tensor", "fsdp"),
                           ("decoder", "layers", "self_attn", "qkv_proj", "bias"):
                               P(None, None, "tensor"),
                           ("decoder", "layers", "self_attn", "qkv_proj", "kernel"):
                               P(None, "fsdp", None, "tensor"),
                           ("decoder", "embed", "embedding"): P("tensor", "fsdp")}),
}


@pytest.mark.parametrize("layout", sorted(SPECS))
def test_sharded_step_matches_one_device(layout, reference):
    batch, ref_params, ref_metrics = reference
    preset, mesh_sizes, expected_specs = SPECS[layout]
    cfg = _config(preset, **mesh_sizes)
    trainer, state, metrics = _one_step(cfg, sharding.make_mesh(cfg.mesh), batch)

    for path, spec in expected_specs.items():
        leaf = state.params
        for key in path:
            leaf = leaf[key]
        assert leaf.sharding.spec == spec, path
    for name in ("loss", "mt_loss", "mse_loss", "dae_loss", "grad_norm", "mt_tokens"):
        np.testing.assert_allclose(metrics[name], ref_metrics[name], rtol=2e-5, err_msg=name)
    # fp32 reductions in another order (3 mesh axes split the gradient sums differently):
    # updated parameters agree to 5e-6 absolute (Adam's first step moves them by ~lr = 1e-3).
    got = jax.tree.map(np.asarray, state.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=5e-6, rtol=1e-5),
                 got, ref_params)


@pytest.mark.parametrize("preset", ["fsdp", "tensor"])
def test_released_shapes_lower_without_memory(preset):
    """The 'basic' recipe (24+24 layers, 256,206-row vocabulary, bf16, remat) traces and lowers
    on an 8-device mesh from abstract state alone; its large parameters are sharded."""
    cfg = get_config("basic")
    cfg.sharding.preset = preset
    cfg.mesh.update(dict(data=1, fsdp=-1, tensor=1) if preset == "fsdp" else
                    dict(data=1, fsdp=2, tensor=4))
    trainer = text_recipe.TextTrainer(cfg, sharding.make_mesh(cfg.mesh))
    assert trainer.num_params() == 2 * 24 * (4 * 1024 * 1025 + 2 * 1024 * 8192 + 8192 + 1024
                                             + 4 * 1024) + 24 * (4 * 1024 * 1025 + 2 * 1024) \
        + 2 * (256206 * 1024 + 2 * 1024)
    state = trainer.abstract_state()
    embedding = state.params["decoder"]["embed"]["embedding"]
    assert embedding.sharding.spec == P(None, "fsdp")  # 256206 rows split neither 4 nor 8 ways
    inner = state.params["decoder"]["layers"]["ffn"]["inner_proj"]["kernel"]
    assert inner.sharding.spec == (P(None, "fsdp") if preset == "fsdp" else
                                   P(None, "fsdp", "tensor"))
    lowered = trainer.lower_train_step({"source": (64, 128), "target": (64, 128),
                                        "noised_target": (64, 128)})
    assert "sharding" in lowered.as_text()[:200000]


# TPU ahead-of-time compiles (libtpu on a CPU host): tests/test_aot_compile.py.


_WORKER = r"""
import os, sys
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                           process_id=pid)
import json
import numpy as np
sys.path[:0] = [sys.argv[4], os.path.join(sys.argv[4], "tests")]
from test_sharding import _multihost_case
trainer, batch = _multihost_case(dcn_data=2)
assert [d.process_index for d in trainer.mesh.devices[0].flat] == [0] * 4
rows = batch["source"].shape[0] // 2
local = {k: v[pid * rows:(pid + 1) * rows] for k, v in batch.items()}
state, metrics = trainer.train_step(trainer.init(0), trainer.shard_batch(local))
if pid == 0:
    with open(out, "w") as f:
        json.dump({k: float(v) for k, v in metrics.items()}, f)
jax.distributed.shutdown()
"""


def _multihost_case(**mesh):
    cfg = _config("fsdp", **{**dict(data=1, fsdp=-1), **mesh})
    rng = np.random.default_rng(0)
    batch = {k: rng.integers(4, 3000, (16, n)).astype(np.int32)
             for k, n in (("source", 20), ("target", 17), ("noised_target", 15))}
    return text_recipe.TextTrainer(cfg, sharding.make_mesh(cfg.mesh)), batch


def test_two_processes_with_dcn_axis_match_one_process(tmp_path):
    """2 processes x 4 CPU devices over loopback, data split across processes (dcn_data=2,
    create_hybrid_device_mesh), each feeding its half of the rows: the same step as 1 process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    out = tmp_path / "metrics.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, str(script), str(i), str(port), str(out),
                               str(pathlib.Path(__file__).parent.parent)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(2)]
    logs = [p.communicate(timeout=600)[0].decode(errors="replace") for p in procs]
    assert all(p.returncode == 0 for p in procs), logs[0][-3000:] + logs[1][-3000:]

    trainer, batch = _multihost_case(data=2, fsdp=4)
    _, metrics = trainer.train_step(trainer.init(0), trainer.shard_batch(batch))
    got = json.loads(out.read_text())
    for name in ("loss", "mt_loss", "mse_loss", "dae_loss", "grad_norm"):
        np.testing.assert_allclose(got[name], float(metrics[name]), rtol=2e-5, err_msg=name)
