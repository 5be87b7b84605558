"""The GPU suite's encoders, generation and train step compiled for an H100 on a machine without a
GPU, read kernel by kernel:

    python -m benchmarks.gpu_programs [--only encode,speech,decode,train] [--save DIR]

XLA compiles for a GPU from a description of the device alone (a deviceless topology), which
needs the CUDA plugin of the installed jaxlib and its CUDA wheels, in a separate environment
like the PyTorch peers (no driver, no GPU):

    python -m venv --system-site-packages GPUVENV
    GPUVENV/bin/pip install "jax-cuda12-plugin[with-cuda]==$(python -c 'import jaxlib; print(jaxlib.__version__)')"
    JAX_PLATFORMS=cpu GPUVENV/bin/python -m benchmarks.gpu_programs

For each program it prints the kernels one call launches (for generation: one step of its loop),
by kind, and the bytes each kind reads and writes (`hlo.kernels`). That is the structural half
of GPU performance work: fusion decisions, layouts, copies and custom calls are what a GPU
build with the same jaxlib makes.
Autotuning needs a device, so every GEMM shows up as a Triton fusion with default tiles; on a
GPU the autotuner may choose cuBLAS for some, and their bias or activation epilogues then run
as separate kernels. Times are for the device: `python -m benchmarks --suite gpu`.
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks import hlo, suites
from sonar_jax import generate, pipelines
from sonar_jax.generate import PROMPT_LEN, GenerationConfig
from sonar_jax.models.layers import unstacked
from sonar_jax.models.speech_encoder import SpeechEncoder
from sonar_jax.models.text_decoder import TextDecoder
from sonar_jax.models.text_encoder import TextEncoder
from sonar_jax.split import SplitModule

# The device description XLA compiles for: an H100 SXM (132 SMs, 50 MiB L2, HBM3 at
# 3.35 TB/s, compute capability 9.0) with CUDA 12.9 and cuDNN 9.10.
H100_TARGET = """
gpu_device_info {
  cuda_compute_capability { major: 9 minor: 0 }
  core_count: 132
  fpus_per_core: 128
  threads_per_block_limit: 1024
  threads_per_warp: 32
  threads_per_core_limit: 2048
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  shared_memory_per_block: 49152
  shared_memory_per_block_optin: 232448
  shared_memory_per_core: 233472
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  l2_cache_size: 52428800
  memory_bandwidth: 3352320000000
  clock_rate_ghz: 1.98
  device_memory_size: 84929347584
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 10 }
runtime_version { major: 12 minor: 9 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""

SPEECH_FRAMES_PER_SECOND = 100  # 10 ms fbank hop
PROGRAMS = ("encode", "speech", "decode", "train")


def h100():
    """A single H100 to compile for, with no device present."""
    import jaxlib
    from jax.experimental import topologies

    try:
        topology = topologies.get_topology_desc(platform="cuda", topology_name="h100",
                                                target_config=H100_TARGET, topology="1x1x1")
    except NotImplementedError as error:  # no CUDA plugin: JAX knows no "cuda" topology
        raise SystemExit(
            f"compiling for a GPU needs JAX's CUDA plugin ({error}); in a separate venv: pip "
            f"install 'jax-cuda12-plugin[with-cuda]=={jaxlib.__version__}' (see this module's "
            f"docstring)") from error
    return jax.sharding.SingleDeviceSharding(topology.devices[0])


def abstract_on(sharding, tree):
    """`tree` with every array abstract (shape and dtype) on `sharding`'s device."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)


def unrolled(model_cls, cfg, sharding) -> SplitModule:
    """`model_cls(cfg)` as the pipelines hold it (layers unrolled), abstract, on `sharding`."""
    model = nnx.eval_shape(lambda: unstacked(model_cls(cfg, rngs=nnx.Rngs(0))))
    return abstract_on(sharding, SplitModule.of(model))


def encoder_text(model_cls, cfg, args_shapes, sharding) -> str:
    """Optimized HLO of `pipelines.encode_program` for `model_cls(cfg)` as the pipelines hold it,
    compiled for `sharding`'s device from abstract weights and inputs."""
    args = [jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for shape, dtype in args_shapes]
    program = pipelines.encode_program.program("gpu")
    return program.lower(unrolled(model_cls, cfg, sharding), *args).compile().as_text()


def decoder_text(cfg, config: GenerationConfig, rows: int, sharding) -> str:
    """Optimized HLO of the pipelines' generation program (`generate`) for `rows` embeddings,
    decoder as the pipelines hold it, from abstract weights and inputs."""
    shape = jax.ShapeDtypeStruct
    inputs = abstract_on(sharding, (shape((rows, cfg.model_dim), jnp.float32),
                                    shape((rows,), jnp.int32), shape((), jnp.int32),
                                    jax.eval_shape(lambda: jax.random.key(0))))
    program = generate._generate_jit.program("gpu")
    return program.lower(unrolled(TextDecoder, cfg, sharding), *inputs, config).compile().as_text()


def step_loop(text: str) -> str:
    """The generation program's step loop: the while body with the most instructions."""
    computations, _ = hlo.parse(text)
    return max(hlo.while_bodies(text), key=lambda name: len(computations[name]))


def train_text(suite: suites.Suite, rows: int, length: int, sharding) -> str:
    """Optimized HLO of the training workload's step (the suite's recipe variant, cuDNN
    attention, a [rows, length] batch) on `sharding`'s device, lowered from abstract state as
    `sonar_jax.train.aot` lowers it for TPUs. Needs ml-collections (the recipe config)."""
    from sonar_jax import sharding as mesh_rules
    from sonar_jax.configs.text import get_config
    from sonar_jax.train.aot import batch_shapes
    from sonar_jax.train.text import TextTrainer

    cfg = get_config(suite.train_variant)
    cfg.model.attention = "cudnn"
    trainer = TextTrainer(cfg, mesh_rules.make_mesh(cfg.mesh, devices=list(sharding.device_set)))
    return trainer.lower_train_step(batch_shapes(trainer, rows, length)).compile().as_text()


def programs(suite: suites.Suite, only: set[str]):
    """(name, thunk giving the optimized HLO, the computation to read: None for the entry) of
    every program of the suite's encoders and decoder and of its train step; a decoder program
    is read one generation step at a time (its loop body), the train step at its top level (a
    layer scan counts as one `while`). Attention is cuDNN's, which "auto" picks on a GPU for these
    bf16, aligned shapes (the choice is made from the default backend, here the CPU, so it is
    set explicitly)."""
    sharding = h100()
    if "encode" in only:
        cfg = suites.text_config(suite, "encoder").replace(attention="cudnn")
        for rows, length in suite.encode_shapes:
            yield f"encode {rows}x{length}", lambda rows=rows, length=length: encoder_text(
                TextEncoder, cfg, [((rows, length), jnp.int32), ((rows,), jnp.int32)], sharding), None
    if "speech" in only:
        cfg = suites.speech_config(suite).replace(attention="cudnn")
        rows, seconds = suite.speech_batch
        frames = int(seconds * SPEECH_FRAMES_PER_SECOND)
        yield f"speech {rows}x{seconds:g}s", lambda: encoder_text(
            SpeechEncoder, cfg, [((rows, frames, cfg.num_fbank_channels), jnp.bfloat16),
                                 ((rows,), jnp.int32)], sharding), None
    if "decode" in only:
        cfg = suites.text_config(suite, "decoder")
        for rows, new, beam in suite.decode:
            config = GenerationConfig(capacity=PROMPT_LEN + new, beam_size=beam, min_gen_len=new)
            name = f"decode {'greedy' if beam == 1 else f'beam {beam}'} {rows}x{new}, one step"
            yield name, lambda config=config, rows=rows: decoder_text(cfg, config, rows,
                                                                      sharding), step_loop
    if "train" in only:
        rows, length = suite.train_batches[0]
        yield (f"train step {suite.train_variant} {rows}x{length}x3",
               lambda: train_text(suite, rows, length, sharding), None)


def table(name: str, text: str, computation: str | None = None) -> str:
    """Markdown: the kernels of the program's `computation` (default: the entry) by kind, most
    bytes first."""
    kinds = sorted(hlo.kernels(text, computation).items(), key=lambda item: -item[1][1])
    count = sum(n for _, (n, _) in kinds)
    moved = sum(b for _, (_, b) in kinds)
    rows = [f"### {name}: {count} kernels, {moved / 1e9:.2f} GB read + written",
            "", "| kernel kind | count | GB |", "|---|---|---|"]
    rows += [f"| {kind} | {n} | {b / 1e9:.3f} |" for kind, (n, b) in kinds]
    return "\n".join(rows) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(PROGRAMS),
                        help=f"comma-separated programs of {PROGRAMS}")
    parser.add_argument("--save", type=pathlib.Path,
                        help="also write each program's optimized HLO into this folder")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    unknown = only - set(PROGRAMS)
    if unknown:
        parser.error(f"unknown programs {sorted(unknown)}; expected some of {PROGRAMS}")
    for name, compile_text, computation in programs(suites.SUITES["gpu"], only):
        text = compile_text()
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            file_name = "".join(c if c.isalnum() else "_" for c in name)
            (args.save / f"{file_name}.hlo.txt").write_text(text)
        print(table(name, text, computation and computation(text)), flush=True)


if __name__ == "__main__":
    main()
