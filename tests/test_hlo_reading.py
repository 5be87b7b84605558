"""`benchmarks.hlo.kernels`: the kernels a compiled program launches and the bytes they move."""

import jax
import jax.numpy as jnp

from benchmarks import hlo

X = jnp.ones((64, 32), jnp.float32)
X_BYTES = 64 * 32 * 4


def _kernels(fun):
    return hlo.kernels(jax.jit(fun).lower(X).compile().as_text())


def test_one_fused_pass_reads_its_input_and_writes_its_result():
    [(count, moved)] = _kernels(lambda x: jnp.exp(x) * 2.0 + 1.0).values()
    assert (count, moved) == (1, 2 * X_BYTES)


def test_each_kernel_counts_its_own_operands_and_results():
    kinds = _kernels(lambda x: (jnp.exp(x), jnp.sum(x, axis=1)))
    assert sum(count for count, _ in kinds.values()) == 2
    # exp: x in, x out; the row sums: x in, 64 floats out (the reduction's 4-byte init value
    # is an operand too).
    assert sorted(moved for _, moved in kinds.values()) == [X_BYTES + 64 * 4 + 4, 2 * X_BYTES]


def test_tuple_shapes_count_every_element():
    assert hlo.array_bytes("(bf16[2,3]{1,0}, f32[4]{0}, s32[])") == 2 * 3 * 2 + 4 * 4 + 4


def test_gpu_programs_table_lists_every_kernel_kind_and_refuses_unknown_programs():
    import pytest

    from benchmarks import gpu_programs

    text = jax.jit(lambda x: (jnp.exp(x), jnp.sum(x, axis=1))).lower(X).compile().as_text()
    table = gpu_programs.table("probe", text)
    assert table.startswith("### probe: 2 kernels, ")
    assert all(f"| {kind} | 1 |" in table for kind in hlo.kernels(text))
    with pytest.raises(SystemExit):
        gpu_programs.main(["--only", "encode,training"])


def test_a_while_body_is_read_as_one_iteration():
    def loop(x):
        return jax.lax.fori_loop(0, 5, lambda i, y: jnp.exp(y) * 2.0, x)

    text = jax.jit(loop).lower(X).compile().as_text()
    (body,) = hlo.while_bodies(text)
    assert "while" in hlo.kernels(text)
    assert sum(count for count, _ in hlo.kernels(text, body).values()) >= 1


def test_gpu_programs_reads_the_generation_program_one_step_at_a_time():
    """The decode programs are built as on a GPU (abstract unrolled decoder, the pipelines'
    argument types); compiled here for the CPU, whose program has the same loop."""
    from benchmarks import gpu_programs
    from sonar_jax.configs.architectures import text_model_config
    from sonar_jax.generate import GenerationConfig

    cfg = text_model_config("text_tiny", "decoder").replace(num_layers=2)
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    text = gpu_programs.decoder_text(cfg, GenerationConfig(capacity=12, beam_size=2), 3, cpu)
    step = gpu_programs.step_loop(text)
    assert step in hlo.while_bodies(text)
    per_step = sum(count for count, _ in hlo.kernels(text, step).values())
    assert per_step != sum(count for count, _ in hlo.kernels(text).values())
    assert gpu_programs.table("decode", text, step).startswith(f"### decode: {per_step} kernels")
