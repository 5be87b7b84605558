"""sonar_jax/train/aot.py: the train step compiled ahead of time for a TPU slice from a CPU host."""

import importlib.util
import json
import math

import jax
import pytest

from benchmarks import hlo
from sonar_jax.configs.text import get_config
from sonar_jax import sharding
from sonar_jax.train import aot
from sonar_jax.train.text import TextTrainer


needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu is not installed: TPU ahead-of-time compiles need it (pip install -e '.[tpu]')")


def test_topology_names():
    assert aot.parse_topology("v5p:4x4x2") == ("v5p", "v5p:4x4x2")
    assert aot.parse_topology("v5e:2x2") == ("v5e", "v5e:2x2")
    # Accelerator types: v4 / v5p count TensorCores (2 per chip), v5e / v6e count chips.
    assert aot.parse_topology("v5p-64") == ("v5p", "v5p:2x4x4")
    assert aot.parse_topology("v5e-256") == ("v5e", "v5e:16x16")
    assert aot.parse_topology("v5litepod-16") == ("v5e", "v5e:4x4")
    assert aot.parse_topology("v4-32") == ("v4", "v4:2x2x4")
    assert aot.parse_topology("v6e-64") == ("v6e", "v6e:8x8")
    assert aot.accelerator_type("v5p", 32) == "v5p-64"
    with pytest.raises(ValueError, match="power-of-two"):
        aot.parse_topology("v5e-24")
    with pytest.raises(ValueError, match="unknown TPU generation"):
        aot.parse_topology("v9x:2x2")


@needs_libtpu
def test_tiny_train_step_compiles_for_v5e_2x2():
    """The tiny model's real train step (FSDP over 4 chips, bf16, donated state) compiles for a
    v5e 2x2 slice; per-chip memory and FLOPs come back, and each chip holds a part of the state."""
    cfg = get_config("tiny")
    cfg.model.dtype = "bfloat16"
    cfg.mesh.update(dict(data=1, fsdp=-1, tensor=1))
    record = aot.run(cfg, "v5e:2x2", batch_rows=8, length=32, out=None)

    assert (record["chips"], record["devices"], record["mesh"]["fsdp"]) == (4, 4, 4)
    assert record["batch_arrays"] == ["noised_target", "source", "target"]
    step = record["compile"]
    mem = step["memory_per_chip"]
    assert step["fits"] and step["flops_per_chip"] > 0
    assert min(mem["argument_bytes"], mem["output_bytes"], mem["temp_bytes"]) > 0
    # The state is donated (outputs aliased to arguments) and sharded over the 4 chips.
    assert mem["alias_bytes"] > 0
    assert mem["argument_bytes"] < record["train_state_bytes"] / 2
    assert mem["total_bytes"] == (mem["argument_bytes"] + mem["output_bytes"] - mem["alias_bytes"]
                                  + mem["temp_bytes"] + mem["generated_code_bytes"])
    assert record["hbm_bytes_per_chip"] == 16 * 2 ** 30
    assert math.isclose(step["flops_total"], 4 * step["flops_per_chip"])
    assert jax.default_backend() == "cpu"  # compiled for TPU; jax itself stays on the CPU


def test_max_batch_search_doubles_then_bisects(monkeypatch):
    """The search logic on a stand-in for the compiler: 1 GiB fixed + 10 MiB per row."""
    compiled = []

    def fake_compile(trainer, rows, length, hbm):
        compiled.append(rows)
        total = 2 ** 30 + rows * 10 * 2 ** 20
        return {"rows": rows, "length": length, "fits": total <= hbm,
                "memory_per_chip": {"total_bytes": total}, "compile_seconds": 0.0}

    monkeypatch.setattr(aot, "compile_step", fake_compile)
    monkeypatch.setattr(aot, "_batch_shards", lambda trainer: 8)
    trainer = type("T", (), {"accum_steps": 1})()
    hbm = 16 * 2 ** 30  # fits up to 1536 rows
    found = aot.find_max_batch(trainer, 128, 256, hbm, bisect_steps=3, log=lambda _: 0)
    # 256, 512, 1024 fit, 2048 does not; then 1536 (fits), 1792, 1664.
    assert compiled == [256, 512, 1024, 2048, 1536, 1792, 1664]
    assert (found["largest_fit_rows"], found["smallest_nonfit_rows"]) == (1536, 1664)
    assert found["resolution_rows"] == 128 and found["row_multiple"] == 8
    # Starting above the limit halves first; the compile budget bounds the search.
    compiled.clear()
    found = aot.find_max_batch(trainer, 128, 4096, hbm, bisect_steps=5, max_compiles=4,
                                       log=lambda _: 0)
    assert compiled == [4096, 2048, 1024, 1536]
    assert (found["largest_fit_rows"], found["smallest_nonfit_rows"]) == (1536, 2048)


@needs_libtpu
def test_entry_writes_the_search_record(monkeypatch, tmp_path):
    """The command line end to end (topology, mesh from --config.mesh.*, the search started from
    the first compile's estimate, the JSON record), on a stand-in for the compiler."""
    def fake_compile(trainer, rows, length, hbm):
        mem = {"argument_bytes": 2 ** 30, "output_bytes": 2 ** 29, "alias_bytes": 2 ** 29,
               "temp_bytes": rows * 2 ** 20, "generated_code_bytes": 0}
        mem["total_bytes"] = 2 ** 30 + rows * 2 ** 20
        return {"rows": rows, "length": length, "memory_per_chip": mem, "lower_seconds": 0.0,
                "compile_seconds": 0.0, "flops_per_chip": 1.0, "flops_total": 4.0,
                "fits": mem["total_bytes"] <= hbm}

    monkeypatch.setattr(aot, "compile_step", fake_compile)
    out = tmp_path / "record.json"
    record = aot.main(["aot_compile", "--config=text:tiny",
                               "--topology=v5litepod-4", "--config.mesh.data=2",
                               "--batch_rows=16", "--length=32", "--find_max_batch",
                               "--bisect_steps=3", f"--out={out}"])
    saved = json.loads(out.read_text())
    assert saved["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1} == record["mesh"]
    assert saved["accelerator_type"] == "v5e-4" and saved["topology"] == "v5e:2x2"
    found = saved["max_batch"]
    # 16 GiB fit 15,360 rows, which the estimate from the compile of 16 rows finds (the
    # temporaries are all per row here); doubling fails, three bisection steps follow.
    assert found["start_rows"] == 15360
    assert [p["rows"] for p in found["probes"]] == [16, 15360, 17280, 19200, 23040, 30720]
    assert (found["largest_fit_rows"], found["smallest_nonfit_rows"]) == (15360, 17280)
    assert found["resolution_rows"] == 1920


@needs_libtpu
def test_multislice_mesh(monkeypatch):
    """--num_slices: the slices are the granules of the config's dcn_* axes."""
    monkeypatch.setattr(aot, "compile_step", lambda trainer, rows, length, hbm: {
        "rows": rows, "length": length, "lower_seconds": 0.0, "compile_seconds": 0.0,
        "fits": False, "compile_error": "stand-in", "mesh": trainer.mesh})
    record = aot.main(["aot_compile", "--config=text:tiny",
                               "--topology=v5e:2x2", "--num_slices=2",
                               "--config.mesh.dcn_data=2", "--out=-"])
    assert record["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
    assert (record["chips"], record["accelerator_type"]) == (8, "v5e-4")
    mesh = record["compile"]["mesh"]
    # Each 'data' index holds one whole slice: the fsdp collectives stay inside a slice.
    assert [{d.slice_index for d in mesh.devices[i].flat} for i in range(2)] == [{0}, {1}]


@needs_libtpu
def test_products_over_the_vocabulary_run_in_bfloat16():
    """With bf16 compute, every matrix product over the 3,206-way vocabulary of the tiny train
    step (the tied logits, and the cross-entropy's gradients into the hidden states and into the
    table) has bf16 operands in the optimized program. (Compiled for a TPU: XLA:CPU upcasts every
    bf16 product to float32, so its HLO cannot show this.)"""
    cfg = get_config("tiny")
    cfg.model.dtype = "bfloat16"
    cfg.mesh.update(dict(data=1, fsdp=-1, tensor=1))
    devices = aot.topology_devices("v5e:2x2")
    trainer = TextTrainer(cfg, sharding.make_mesh(cfg.mesh, devices))
    shapes = {k: (8, 32) for k in ("source", "target", "noised_target")}
    text = trainer.lower_train_step(shapes).compile().as_text()
    vocab = str(trainer.dec_cfg.vocab_size)
    over_vocab = [(i, operands) for i, operands in hlo.dots(text)
                  if any(vocab in shape for shape in [i.shape, *operands])]
    assert len(over_vocab) >= 3  # forward logits, d_hidden, d_table
    for instruction, operands in over_vocab:
        assert all(shape.startswith("bf16") for shape in operands), (instruction.shape, operands)
