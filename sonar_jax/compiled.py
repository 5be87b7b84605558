"""`jax.jit` for the inference programs (encoders, generation, scoring heads), with the XLA
options measured to run them fastest.

XLA:CPU in jaxlib 0.10-0.11 hands dots, element-wise chains and reductions to YNNPACK as large
fused subgraphs by default. For the Transformer layers here that is slower than XLA's own
kernels: with those fusions off (`xla_cpu_experimental_ynn_fusion_type` empty) the `small` text
encoder ran 15-25% faster at 128 × 64, 64 × 128 and 32 × 256 tokens on a 2-core x86 host, with
either sub-list (dots only, or fusions of dots) slower than none (alternating A/B rounds;
`benchmarks/README.md`). The option is a field of XLA's debug options that only the CPU
compiler reads, so the same programs compile unchanged for GPUs and TPUs. It is set per
program, never in the process-wide `XLA_FLAGS`, so a user's other JAX code is left as it is.
"""

from __future__ import annotations

import jax

INFERENCE_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def inference_jit(fun=None, **jit_kwargs):
    """`jax.jit(fun, **jit_kwargs)` with `INFERENCE_COMPILER_OPTIONS`; usable as a decorator
    (`@inference_jit` or `@functools.partial(inference_jit, static_argnames=...)`)."""
    if fun is None:
        return lambda f: inference_jit(f, **jit_kwargs)
    return jax.jit(fun, compiler_options=INFERENCE_COMPILER_OPTIONS, **jit_kwargs)
