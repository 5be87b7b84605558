"""What every sonar_jax trainer shares, so the text, speech and decoder trainers differ only in
their parts, batch fields and loss.

Parameters come in named parts (e.g. "encoder", "decoder", "student"). Trained parts live in the
TrainState (optimizer state and checkpoints included); frozen parts (a teacher, a fixed encoder)
are held by the trainer, placed on the mesh once and passed to the jitted steps as read-only
inputs, so they cost no optimizer memory, are never written to a checkpoint and cannot change.
Non-trained variables of trained parts (BatchNorm running statistics) are `TrainState.model_state`:
checkpointed, updated by the loss, not by the optimizer.

A subclass passes its `parts` / `frozen_parts` ({name: (module class, model config)}) and its
`batch_spec` (`sonar_jax.data.batch_spec`: the batch fields, shared with the input pipeline, the
AOT compiles and the loop) to `Trainer.__init__`, and implements

    _totals(batch)                        -> normalisers over the whole batch (all microbatches)
    _loss(params, batch, totals, ctx)     -> (loss, sums, new model_state)
    summarize_eval(totals)                -> dataset-level dev metrics from summed eval metrics

The base owns shardings, state creation and placement, the optimizer, the non-finite guard, the
export of trained parts and the jitted, donated steps the loop calls; the gradient of a batch
over its microbatches is `accumulation.py`, the state types `state.py`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sonar_jax import sharding
from sonar_jax.data.batch_spec import BatchSpec
from sonar_jax.train import accumulation, optim
from sonar_jax.train.state import (StepContext, TrainState, abstract_variables, merge_trees,
                                   pure_params)


class Trainer:
    """Builds every sharding, the optimizer and the jitted steps of a subclass's parts and loss."""

    def __init__(self, cfg: Any, mesh: Mesh, *, parts: Mapping[str, tuple[type, Any]],
                 batch_spec: BatchSpec, frozen_parts: Mapping[str, tuple[type, Any]] | None = None):
        self.parts, self.frozen_parts = dict(parts), dict(frozen_parts or {})
        self.batch_spec = batch_spec
        self.cfg = cfg
        self.mesh = mesh
        self.rules = sharding.rules_from_config(cfg.sharding)
        self.accum_steps = int(cfg.train.get("grad_accum_steps", 1))
        if self.accum_steps < 1:
            raise ValueError(f"train.grad_accum_steps must be >= 1, got {self.accum_steps}")
        self.seed = int(cfg.train.get("seed", 0))
        self.replicated = sharding.replicated(mesh)

        def variables(parts, kind):
            abstract, axes = {}, {}
            for name, (model_cls, model_cfg) in parts.items():
                tree, names = abstract_variables(model_cls, model_cfg, kind)
                if tree:
                    abstract[name], axes[name] = tree, names
            return abstract, axes, sharding.tree_shardings(abstract, axes, self.rules, mesh)

        self.abstract_params, self.param_axes, self.param_shardings = variables(
            self.parts, nnx.Param)
        self.abstract_model_state, _, self.model_state_shardings = variables(
            self.parts, nnx.BatchStat)
        self.abstract_frozen, _, self.frozen_shardings = variables(self.frozen_parts, nnx.Param)
        self.frozen: dict | None = None if self.frozen_parts else {}

        self.tx, self.schedule = optim.make_optimizer(cfg.optim)
        self.skip_nonfinite = bool(cfg.optim.get("skip_nonfinite", True))
        abstract_opt = jax.eval_shape(self.tx.init, self.abstract_params)
        opt_shardings = optax.tree_map_params(
            self.tx, lambda _, s: s, abstract_opt, self.param_shardings,
            transform_non_params=lambda _: self.replicated)
        self.state_shardings = TrainState(step=self.replicated, params=self.param_shardings,
                                          opt_state=opt_shardings,
                                          model_state=self.model_state_shardings)
        self.batch_sharding = NamedSharding(
            mesh, PartitionSpec(sharding.batch_axes(self.rules, mesh) or None))

        # XLA options for the step functions (e.g. {"xla_backend_optimization_level": 0} for
        # fast CPU tests). Not for init: jax allows them on top-level jits only, and `init` may
        # run under jax.eval_shape.
        options = cfg.train.get("compiler_options", None)
        options = dict(options.to_dict() if hasattr(options, "to_dict") else options or {})
        jit = lambda fn, **kw: jax.jit(fn, compiler_options=options or None, **kw)  # noqa: E731
        self._init_params = jax.jit(self._random_params, out_shardings=self.param_shardings)
        self._init_model_state = jax.jit(self._random_model_state,
                                         out_shardings=self.model_state_shardings)
        self._init_opt = jax.jit(self.tx.init, out_shardings=opt_shardings)
        self._train_step = jit(
            self._train_step_fn,
            in_shardings=(self.state_shardings, self.frozen_shardings, self.batch_sharding),
            out_shardings=(self.state_shardings, self.replicated), donate_argnums=0)
        self._eval_step = jit(
            self._eval_step_fn,
            in_shardings=(self.state_shardings, self.frozen_shardings, self.batch_sharding),
            out_shardings=self.replicated)

    # ------------------------------------------------------------------------------------------
    # State

    def _random_variables(self, key: jax.Array, kind) -> dict:
        keys = jax.random.split(key, len(self.parts))
        out = {}
        for part_key, (name, (model_cls, model_cfg)) in zip(keys, self.parts.items()):
            tree = nnx.to_pure_dict(nnx.state(model_cls(model_cfg, rngs=nnx.Rngs(part_key)), kind))
            if tree:
                out[name] = tree
        return out

    def _random_params(self, key: jax.Array) -> dict:
        return self._random_variables(key, nnx.Param)

    def _random_model_state(self) -> dict:
        return self._random_variables(jax.random.key(0), nnx.BatchStat)

    def init(self, seed: int, init_params: Mapping[str, Any] | None = None) -> TrainState:
        """A fresh state, created sharded. `init_params` may hold trees of any trained part (pure
        dicts, nnx.State or modules, e.g. from model_dir.load_model) that replace its random
        initialisation (a module's BatchNorm statistics come with it); shapes must match."""
        params = self._init_params(jax.random.key(seed))
        model_state = self._init_model_state()
        if init_params:
            unknown = sorted(set(init_params) - set(self.parts))
            if unknown:
                raise ValueError(f"init_params has unknown parts {unknown}; this trainer trains "
                                 f"{sorted(self.parts)}")
            params, model_state = dict(params), dict(model_state)
            for part, tree in init_params.items():
                params[part] = self._place(part, pure_params(tree), self.abstract_params,
                                           self.param_shardings)
                if part in self.abstract_model_state and isinstance(tree, nnx.Module):
                    model_state[part] = self._place(part, pure_params(tree, nnx.BatchStat),
                                                    self.abstract_model_state,
                                                    self.model_state_shardings)
        opt_state = self._init_opt(params)
        step = jax.jit(lambda: jnp.zeros((), jnp.int32), out_shardings=self.replicated)()
        return TrainState(step=step, params=params, opt_state=opt_state, model_state=model_state)

    def set_frozen(self, trees: Mapping[str, Any]) -> None:
        """Places the frozen parts' parameters (every one of `frozen_parts`) on the mesh."""
        missing = sorted(set(self.frozen_parts) - set(trees))
        unknown = sorted(set(trees) - set(self.frozen_parts))
        if missing or unknown:
            raise ValueError(f"frozen parts: expected {sorted(self.frozen_parts)}, got "
                             f"{sorted(trees)}")
        self.frozen = {part: self._place(part, pure_params(tree), self.abstract_frozen,
                                         self.frozen_shardings)
                       for part, tree in trees.items()}

    def _place(self, part: str, tree: Any, abstract: Mapping, shardings: Mapping) -> Any:
        """Puts a host or device tree onto this trainer's shardings (shapes checked, cast)."""
        expected = abstract[part]
        try:
            flat = jax.tree.map(lambda e, x: (e, x), expected, tree)
        except ValueError as err:
            raise ValueError(f"the {part!r} parameters do not have the structure the config "
                             f"builds: {err}") from None

        def put(path, pair, target):
            spec, x = pair
            if tuple(x.shape) != tuple(spec.shape):
                raise ValueError(f"{part}{jax.tree_util.keystr(path)} has shape "
                                 f"{tuple(x.shape)}, the config needs {tuple(spec.shape)}")
            if isinstance(x, jax.Array) and not x.is_fully_addressable:
                return jax.jit(lambda v: v.astype(spec.dtype), out_shardings=target)(x)
            host = np.asarray(x)
            return jax.make_array_from_callback(
                spec.shape, target, lambda idx: host[idx].astype(spec.dtype))

        return jax.tree_util.tree_map_with_path(put, flat, shardings[part],
                                                is_leaf=lambda p: isinstance(p, tuple))

    def init_abstract(self) -> TrainState:
        params = self._random_params(jax.random.key(0))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params),
                          model_state=self._random_model_state())

    def abstract_state(self) -> TrainState:
        """The state as ShapeDtypeStructs carrying their shardings (allocates nothing): the
        target for an orbax restore onto this mesh, or for AOT `train_step` lowering."""
        abstract = jax.eval_shape(self.init_abstract)
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, self.state_shardings)

    def _abstract_frozen_arrays(self) -> Any:
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            self.abstract_frozen, self.frozen_shardings)

    def lower_train_step(self, batch_shapes: Mapping[str, tuple[int, ...]]):
        """`jax.jit(...).lower` of the train step for global batch shapes {name: shape}, without
        any device memory (for AOT compile checks and memory analysis)."""
        batch = {k: jax.ShapeDtypeStruct(tuple(v), self.batch_spec.dtype(k),
                                         sharding=self.batch_sharding)
                 for k, v in batch_shapes.items()}
        return self._train_step.lower(self.abstract_state(), self._abstract_frozen_arrays(),
                                      batch)

    def export_params(self, state: TrainState, dtype: str | None = None) -> dict:
        """{part: pure-dict variables} of the trained parts (parameters and BatchNorm statistics;
        fresh copies, safe to keep while training goes on), as model directories store them."""
        def copy(x):
            if dtype is not None and jnp.issubdtype(x.dtype, jnp.floating):
                return x.astype(dtype)
            return x.copy()
        merged = {part: merge_trees(tree, state.model_state.get(part, {}))
                  for part, tree in state.params.items()}
        return jax.tree.map(copy, merged)

    def num_params(self) -> int:
        return sum(math.prod(x.shape) for x in jax.tree.leaves(self.abstract_params))

    # ------------------------------------------------------------------------------------------
    # Batches

    def check_field(self, key: str, x: np.ndarray) -> None:
        """Subclass hook: value checks of one batch field (e.g. token ids within the vocab)."""

    def shard_batch(self, host_batch: Mapping[str, np.ndarray]) -> dict:
        """Per-host numpy batch -> global jax.Arrays sharded over the batch axes (the fields a
        step reads, checked by the batch spec and `check_field`)."""
        out = self.batch_spec.check(host_batch)
        for key, x in out.items():
            self.check_field(key, x)
        rows = next(iter(out.values())).shape[0]
        sharding.check_batch_divisible(rows * jax.process_count(), self.rules, self.mesh,
                                       "global batch", self.accum_steps)
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, v)
                for k, v in out.items()}

    # ------------------------------------------------------------------------------------------
    # Loss plumbing

    def _totals(self, batch: Mapping[str, jax.Array]) -> dict:
        raise NotImplementedError

    def _loss(self, params: dict, batch: Mapping[str, jax.Array], totals: Mapping[str, Any],
              ctx: StepContext) -> tuple[jax.Array, dict, Any]:
        raise NotImplementedError

    def _loss_and_grads(self, params: dict, batch: Mapping[str, jax.Array], with_grads: bool,
                        *, frozen: Any = None, model_state: Any = None, rng: jax.Array | None = None
                        ) -> tuple[dict, Any, Any]:
        """(sums, gradients or None, new model_state) of a whole batch."""
        return accumulation.loss_and_grads(
            self._loss, self._totals(batch), params, batch, accum_steps=self.accum_steps,
            with_grads=with_grads, frozen={} if frozen is None else frozen,
            model_state={} if model_state is None else model_state,
            rng=jax.random.key(self.seed) if rng is None else rng,
            param_shardings=self.param_shardings)

    def _metrics(self, sums: Mapping[str, jax.Array]) -> dict:
        """Per-step metrics from the sums of the loss (subclasses add their ratios)."""
        return {"loss": sums["loss"]}

    # ------------------------------------------------------------------------------------------
    # Steps

    def _train_step_fn(self, state: TrainState, frozen: Any, batch: Mapping[str, jax.Array]):
        with sharding.activation_rules(self.mesh, self.rules):
            rng = jax.random.fold_in(jax.random.key(self.seed), state.step)
            sums, grads, model_state = self._loss_and_grads(
                state.params, batch, with_grads=True, frozen=frozen,
                model_state=state.model_state, rng=rng)
            grads = jax.tree.map(jax.lax.with_sharding_constraint, grads, self.param_shardings)
            grad_norm = optax.tree.norm(grads)
            updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            metrics = self._metrics(sums)
            finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
            if self.skip_nonfinite:
                keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
                params = jax.tree.map(keep, params, state.params)
                opt_state = jax.tree.map(keep, opt_state, state.opt_state)
                model_state = jax.tree.map(keep, model_state, state.model_state)
            metrics.update(grad_norm=grad_norm, learning_rate=self.schedule(state.step),
                           update_skipped=(~finite).astype(jnp.float32) * self.skip_nonfinite)
            new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                                   model_state=model_state)
        return new_state, metrics

    def _eval_step_fn(self, state: TrainState, frozen: Any, batch: Mapping[str, jax.Array]):
        with sharding.activation_rules(self.mesh, self.rules):
            sums, _, _ = self._loss_and_grads(state.params, batch, with_grads=False,
                                              frozen=frozen, model_state=state.model_state)
            metrics = self._metrics(sums)
            # Raw sums too, so a loop can aggregate a dev set over many batches exactly.
            metrics.update({f"{k}_sum": v for k, v in sums.items() if k != "loss"})
        return metrics

    def _check_ready(self, batch: Mapping[str, Any], *, training: bool) -> None:
        if self.frozen is None:
            raise RuntimeError(f"the frozen parts {sorted(self.frozen_parts)} are not set; call "
                               "trainer.set_frozen({...}) first")
        self.batch_spec.missing(batch, training=training)

    def train_step(self, state: TrainState, batch: Mapping[str, jax.Array]
                   ) -> tuple[TrainState, dict]:
        """One optimizer step (jitted; `state` is donated: use only the returned one)."""
        self._check_ready(batch, training=True)
        return self._train_step(state, self.frozen, dict(batch))

    def eval_step(self, state: TrainState, batch: Mapping[str, jax.Array]) -> dict:
        """Losses and counts of a batch without updating (jitted, nothing donated)."""
        self._check_ready(batch, training=False)
        return self._eval_step(state, self.frozen, dict(batch))

    def summarize_eval(self, totals: Mapping[str, float]) -> dict:
        raise NotImplementedError
