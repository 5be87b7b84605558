"""`jax.jit` for the inference programs (the embedding pipelines' encoders, text and speech,
and generation), with the XLA:CPU options measured to run them fastest.

Three defaults of XLA:CPU cost the Transformer programs here time, measured with jaxlib 0.10 on
2-core x86 hosts in alternating A/B rounds (`benchmarks/README.md`); jaxlib 0.11 and 0.12 know
the same options:

- Dots run as Eigen contractions, and a batched dot (attention's two products: one small GEMM
  per row and head) as a loop of them, on one thread in effect: 35 GFLOP/s for 512 products of
  128 x 128 x 64, against 56 with oneDNN and 61 for torch's `bmm`. With every dot handed to
  oneDNN (`xla_cpu_use_onednn`, fusion type `INDIVIDUAL_DOT`) the layers' GEMMs also run as fast
  as torch's (224 vs 178 GFLOP/s for Eigen at 8192 x 512 x 512). oneDNN takes its threads from
  XLA's intra-op pool, so the thread count is unchanged. The text encoder ran 3-9% faster than
  with the other two options alone; generation took 14% (greedy) and 27% (beam 5) less time
  than under jax.jit's defaults (32 sentences x 64 new tokens).
- YNNPACK takes dots, element-wise chains and reductions as large fused subgraphs. Without it
  (`xla_cpu_experimental_ynn_fusion_type` empty) the `small` text encoder ran 15-25% faster at
  128 × 64, 64 × 128 and 32 × 256 tokens; either sub-list (dots only, fusions of dots) was slower
  than none.
- The tree-reduction rewrite turns every reduction over more than 32 elements (each LayerNorm's
  mean and variance, each softmax's max and sum) into a reduce-window of 32 followed by a
  reduce. The reduce-window runs unfused, as its own pass over the data: a quarter of the
  encoder's traced kernel time at 32 × 256. Without the pass the reductions fuse with their
  neighbours: the text encoder ran 1-8% faster from 128 × 64 to 32 × 256 tokens and the speech
  encoder 8%.

Outputs stay within float32 rounding of the defaults' (the parity tests run these programs).
The scoring heads (BLASER, MuTox: three GEMMs on a few hundred rows) keep jax.jit's defaults,
under which they ran faster (BLASER, 256 rows: 66 ms vs 86 ms).

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
    "xla_cpu_use_onednn": True,
    "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
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
        self._fun, self.jit_kwargs = fun, jit_kwargs
        self._programs: dict[str, object] = {}
        functools.update_wrapper(self, fun)

    def program(self, backend: str | None = None):
        backend = jax.default_backend() if backend is None else backend
        if backend not in self._programs:
            self._programs[backend] = jax.jit(self._fun, compiler_options=compiler_options(backend),
                                              **self.jit_kwargs)
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
