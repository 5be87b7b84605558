"""`jax.jit` for the encoder programs of the embedding pipelines (text and speech), with the
XLA:CPU options measured to run them fastest.

Two defaults of XLA:CPU (jaxlib 0.10-0.11) cost the Transformer programs here time, measured on
2-core x86 hosts in alternating A/B rounds (`benchmarks/README.md`):

- YNNPACK takes dots, element-wise chains and reductions as large fused subgraphs. Without it
  (`xla_cpu_experimental_ynn_fusion_type` empty) the `small` text encoder ran 15-25% faster at
  128 × 64, 64 × 128 and 32 × 256 tokens; either sub-list (dots only, fusions of dots) was slower
  than none.
- The tree-reduction rewrite turns every reduction over more than 32 elements (each LayerNorm's
  mean and variance, each softmax's max and sum) into a reduce-window of 32 followed by a
  reduce. The reduce-window runs unfused, as its own pass over the data: a quarter of the
  encoder's traced kernel time at 32 × 256. Without the pass the reductions fuse with their
  neighbours: the text encoder ran 1-8% faster from 128 × 64 to 32 × 256 tokens and the speech
  encoder 8%; the embeddings stay within 1e-5 of the reference pipeline's. Generation is not
  compiled with these options: its beam search was slower with them.

The options are read by the CPU compiler only, so they are given to CPU compilations only: the
program is jitted once per backend (`jax.default_backend()` when it is first called there), and
on GPUs and TPUs it compiles with XLA's defaults (libtpu has a pass of the same name). They are
set per program, never in the process-wide `XLA_FLAGS`, so a user's other JAX code is left as
it is.
"""

from __future__ import annotations

import functools

import jax

CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "",
    "xla_disable_hlo_passes": "tree_reduction_rewriter",
}


def compiler_options(backend: str) -> dict:
    """The inference programs' XLA options for `backend` ('cpu', 'gpu', 'tpu', ...)."""
    return dict(CPU_COMPILER_OPTIONS) if backend == "cpu" else {}


class BackendJit:
    """`jax.jit(fun, compiler_options=compiler_options(backend))` for the default backend.

    Calls go to the program of `jax.default_backend()`; other attributes (`lower`, `trace`,
    cache statistics) are those of that program, so it is used like a `jax.jit` function.
    """

    def __init__(self, fun, jit_kwargs: dict):
        self._fun, self._jit_kwargs = fun, jit_kwargs
        self._programs: dict[str, object] = {}
        functools.update_wrapper(self, fun)

    def program(self, backend: str | None = None):
        backend = jax.default_backend() if backend is None else backend
        if backend not in self._programs:
            self._programs[backend] = jax.jit(self._fun, compiler_options=compiler_options(backend),
                                              **self._jit_kwargs)
        return self._programs[backend]

    def __call__(self, *args, **kwargs):
        return self.program()(*args, **kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.program(), name)


def inference_jit(fun, **jit_kwargs) -> BackendJit:
    """`BackendJit` of `fun`; a decorator as `@inference_jit` or
    `@functools.partial(inference_jit, static_argnames=...)`."""
    return BackendJit(fun, jit_kwargs)
