"""The text multi-loss training step (SONAR paper §3.1) as one jitted, sharded, donated function.

    L = w_mt·CE(dec(enc(x)) -> y) + w_mse·MSE(enc(x), enc(y)) + w_dae·CE(dec(enc(noise(y))) -> y)

Batch contract (per host, numpy int32, every row in encoder form `[lang, pieces..., eos]`
right-padded with pad 0): {"source": [B, Ls], "target": [B, Lt], "noised_target": [B, Ln]} (the
last only when the denoising weight is > 0). Teacher forcing feeds `[eos] + target[:-1]` (= [eos, lang, pieces]) and
predicts `target` (= [lang, pieces, eos]) where target != pad. All-pad rows count for nothing.

Normalisation: both CE terms are divided by their total number of target tokens in the whole batch
and the MSE by its number of non-empty rows, across all gradient-accumulation microbatches, so a
step with grad_accum_steps = k gives the gradient of the same batch in one piece.

    trainer = TextTrainer(cfg, mesh)
    state = trainer.init(seed)                      # sharded at creation (jit out_shardings)
    state, metrics = trainer.train_step(state, trainer.shard_batch(host_batch))
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sonar_jax import sharding
from sonar_jax.config import TextModelConfig, text_model_config
from sonar_jax.functional import bind
from sonar_jax.models.text_decoder import TextDecoder
from sonar_jax.models.text_encoder import TextEncoder
from sonar_jax.train import losses, optim

BATCH_KEYS = ("source", "target", "noised_target")


@flax.struct.dataclass
class TrainState:
    """step: [] int32; params: {"encoder", "decoder"} pure-dict pytrees; opt_state: optax state."""

    step: jax.Array
    params: Any
    opt_state: Any


def model_configs(cfg: Any) -> tuple[TextModelConfig, TextModelConfig]:
    """Encoder and decoder configs of the `model` section (architecture file + dtype/remat)."""
    m = cfg.model
    overrides = dict(dtype=m.dtype, param_dtype=m.param_dtype, remat_policy=m.remat_policy,
                     pad_idx=m.get("pad_idx", 0))
    return (text_model_config(m.get("encoder_arch", m.arch), "encoder", **overrides),
            text_model_config(m.get("decoder_arch", m.arch), "decoder", **overrides))


def _abstract_params(model_cls, model_cfg: TextModelConfig) -> tuple[Any, Any]:
    """(pure-dict tree of ShapeDtypeStructs, matching tree of logical axis names)."""
    _, state = nnx.split(nnx.eval_shape(lambda: model_cls(model_cfg, rngs=nnx.Rngs(0))))
    return nnx.to_pure_dict(state), sharding.logical_axes_of_state(state)


def _pure_params(tree: Any) -> Any:
    """A params pytree as a pure dict, from an nnx Module, an nnx.State or a (nested) dict."""
    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree, nnx.Param)
    if isinstance(tree, nnx.State):
        tree = nnx.to_pure_dict(tree)
    return tree


def _interleaved(encoder: TextEncoder, inputs: list[jax.Array], pad_idx: int) -> jax.Array:
    """Sentence embeddings [B, n, D] of n token arrays [B, L_i], in one encoder call.

    Rows are interleaved (row b*n + i is input i of pair b) so the result keeps the batch sharding.
    """
    length = max(x.shape[1] for x in inputs)
    padded = [jnp.pad(x, ((0, 0), (0, length - x.shape[1])), constant_values=pad_idx)
              for x in inputs]
    rows, n = inputs[0].shape[0], len(inputs)
    tokens = jnp.stack(padded, axis=1).reshape(rows * n, length)
    tokens = sharding.constrain(tokens, ("batch", "length"))
    return encoder(tokens).sentence_embeddings.reshape(rows, n, -1)


class TextTrainer:
    """Builds the models, the optimizer and every sharding; owns the jitted steps."""

    def __init__(self, cfg: Any, mesh: Mesh):
        self.cfg = cfg
        self.mesh = mesh
        self.enc_cfg, self.dec_cfg = model_configs(cfg)
        self.rules = sharding.rules_from_config(cfg.sharding)
        self.loss_cfg = cfg.loss
        self.accum_steps = int(cfg.train.get("grad_accum_steps", 1))
        if self.accum_steps < 1:
            raise ValueError(f"train.grad_accum_steps must be >= 1, got {self.accum_steps}")
        self.pad_idx = int(cfg.model.get("pad_idx", 0))
        self.eos_idx = int(cfg.model.get("eos_idx", 3))
        self.use_mse = float(cfg.loss.mse_weight) > 0
        self.use_dae = float(cfg.loss.dae_weight) > 0

        enc_abs, enc_axes = _abstract_params(TextEncoder, self.enc_cfg)
        dec_abs, dec_axes = _abstract_params(TextDecoder, self.dec_cfg)
        self.abstract_params = {"encoder": enc_abs, "decoder": dec_abs}
        self.param_axes = {"encoder": enc_axes, "decoder": dec_axes}
        self.param_shardings = sharding.tree_shardings(self.abstract_params, self.param_axes,
                                                       self.rules, mesh)

        self.tx, self.schedule = optim.make_optimizer(cfg.optim)
        self.skip_nonfinite = bool(cfg.optim.get("skip_nonfinite", True))
        abstract_opt = jax.eval_shape(self.tx.init, self.abstract_params)
        self.replicated = sharding.replicated(mesh)
        opt_shardings = optax.tree_map_params(
            self.tx, lambda _, s: s, abstract_opt, self.param_shardings,
            transform_non_params=lambda _: self.replicated)
        self.state_shardings = TrainState(step=self.replicated, params=self.param_shardings,
                                          opt_state=opt_shardings)
        self.batch_sharding = NamedSharding(
            mesh, PartitionSpec(sharding.batch_axes(self.rules, mesh) or None))

        # XLA options for the step functions (e.g. {"xla_backend_optimization_level": 0} for
        # fast CPU tests). Not for init: jax allows them on top-level jits only, and `init` may
        # run under jax.eval_shape.
        options = cfg.train.get("compiler_options", None)
        options = dict(options.to_dict() if hasattr(options, "to_dict") else options or {})
        jit = lambda fn, **kw: jax.jit(fn, compiler_options=options or None, **kw)  # noqa: E731
        self._init_params = jax.jit(self._random_params, out_shardings=self.param_shardings)
        self._init_opt = jax.jit(self.tx.init, out_shardings=opt_shardings)
        self._train_step = jit(self._train_step_fn,
                               in_shardings=(self.state_shardings, self.batch_sharding),
                               out_shardings=(self.state_shardings, self.replicated),
                               donate_argnums=0)
        self._eval_step = jit(self._eval_step_fn,
                              in_shardings=(self.state_shardings, self.batch_sharding),
                              out_shardings=self.replicated)

    # ------------------------------------------------------------------------------------------
    # State

    def _random_params(self, key: jax.Array) -> dict:
        enc_key, dec_key = jax.random.split(key)
        encoder = TextEncoder(self.enc_cfg, rngs=nnx.Rngs(enc_key))
        decoder = TextDecoder(self.dec_cfg, rngs=nnx.Rngs(dec_key))
        return {"encoder": nnx.to_pure_dict(nnx.state(encoder, nnx.Param)),
                "decoder": nnx.to_pure_dict(nnx.state(decoder, nnx.Param))}

    def init(self, seed: int, init_params: Mapping[str, Any] | None = None) -> TrainState:
        """A fresh state, created sharded. `init_params` may hold "encoder" and/or "decoder"
        parameter trees (pure dicts, nnx.State or modules, e.g. from model_dir.load_model) that
        replace the random initialisation of that part; shapes must match the config."""
        params = self._init_params(jax.random.key(seed))
        if init_params:
            unknown = sorted(set(init_params) - {"encoder", "decoder"})
            if unknown:
                raise ValueError(f"init_params has unknown parts {unknown}; expected 'encoder' "
                                 "and/or 'decoder'")
            params = dict(params)
            for part, tree in init_params.items():
                params[part] = self._place(part, _pure_params(tree))
        opt_state = self._init_opt(params)
        step = jax.jit(lambda: jnp.zeros((), jnp.int32), out_shardings=self.replicated)()
        return TrainState(step=step, params=params, opt_state=opt_state)

    def _place(self, part: str, tree: Any) -> Any:
        """Puts a host or device parameter tree onto this trainer's shardings (checked, cast)."""
        expected = self.abstract_params[part]
        try:
            flat = jax.tree.map(lambda e, x: (e, x), expected, tree)
        except ValueError as err:
            raise ValueError(f"init_params[{part!r}] does not have the {part}'s parameter "
                             f"structure: {err}") from None

        def put(path, pair, target):
            abstract, x = pair
            if tuple(x.shape) != tuple(abstract.shape):
                raise ValueError(f"init_params[{part!r}]{jax.tree_util.keystr(path)} has shape "
                                 f"{tuple(x.shape)}, the config needs {tuple(abstract.shape)}")
            if isinstance(x, jax.Array) and not x.is_fully_addressable:
                return jax.jit(lambda v: v.astype(abstract.dtype), out_shardings=target)(x)
            host = np.asarray(x)
            return jax.make_array_from_callback(
                abstract.shape, target, lambda idx: host[idx].astype(abstract.dtype))

        return jax.tree_util.tree_map_with_path(put, flat, self.param_shardings[part],
                                                is_leaf=lambda p: isinstance(p, tuple))

    def abstract_state(self) -> TrainState:
        """The state as ShapeDtypeStructs carrying their shardings (allocates nothing): the
        target for an orbax restore onto this mesh, or for AOT `train_step` lowering."""
        abstract = jax.eval_shape(self.init_abstract)
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, self.state_shardings)

    def init_abstract(self) -> TrainState:
        params = self._random_params(jax.random.key(0))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params))

    def lower_train_step(self, batch_shapes: Mapping[str, tuple[int, int]]):
        """`jax.jit(...).lower` of the train step for global batch shapes {name: (rows, length)},
        without any device memory (for AOT compile checks and memory analysis)."""
        batch = {k: jax.ShapeDtypeStruct(tuple(v), jnp.int32, sharding=self.batch_sharding)
                 for k, v in batch_shapes.items()}
        return self._train_step.lower(self.abstract_state(), batch)

    def export_params(self, state: TrainState, dtype: str | None = None) -> dict:
        """{"encoder", "decoder"} pure-dict params (fresh copies, safe to keep while training goes
        on), usable by sonar_jax.functional / checkpoint.save_params / the pipelines."""
        def copy(x):
            if dtype is not None and jnp.issubdtype(x.dtype, jnp.floating):
                return x.astype(dtype)
            return x.copy()
        return jax.tree.map(copy, state.params)

    # ------------------------------------------------------------------------------------------
    # Batches

    def shard_batch(self, host_batch: Mapping[str, np.ndarray]) -> dict:
        """Per-host numpy batch -> global jax.Arrays sharded over the batch axes (checked)."""
        missing = [k for k in ("source", "target") if k not in host_batch]
        if missing:
            raise KeyError(f"batch lacks {missing}; it has {sorted(host_batch)}")
        # noised_target is kept when the denoising term is on (train_step requires it then;
        # eval_step without it reports the MT and MSE terms only).
        needed = ["source", "target"] + (["noised_target"] if self.use_dae and
                                         "noised_target" in host_batch else [])
        unknown = sorted(set(host_batch) - set(BATCH_KEYS))
        if unknown:
            raise KeyError(f"batch has unknown fields {unknown}; expected {BATCH_KEYS}")
        rows = None
        out = {}
        for key in needed:
            x = np.asarray(host_batch[key])
            if x.ndim != 2 or not np.issubdtype(x.dtype, np.integer):
                raise ValueError(f"batch[{key!r}] must be a 2-D integer array, got "
                                 f"{x.dtype} {x.shape}")
            if rows is None:
                rows = x.shape[0]
            elif x.shape[0] != rows:
                raise ValueError(f"batch fields have different row counts: {key!r} has "
                                 f"{x.shape[0]}, 'source' has {rows}")
            vocab = self.enc_cfg.vocab_size if key != "target" else min(
                self.enc_cfg.vocab_size, self.dec_cfg.vocab_size)
            if x.size and (x.min() < 0 or x.max() >= vocab):
                raise ValueError(f"batch[{key!r}] holds token ids outside [0, {vocab}): "
                                 f"min {x.min()}, max {x.max()}")
            out[key] = x.astype(np.int32)
        global_rows = rows * jax.process_count()
        sharding.check_batch_divisible(global_rows, self.rules, self.mesh, "global batch",
                                       self.accum_steps)
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, v)
                for k, v in out.items()}

    # ------------------------------------------------------------------------------------------
    # Loss

    def _dae(self, batch: Mapping[str, Any]) -> bool:
        """Whether this batch gets the denoising term (static: a property of the batch's keys)."""
        return self.use_dae and "noised_target" in batch

    def _targets(self, batch: Mapping[str, jax.Array]) -> dict:
        """Decoder inputs, labels and the weights / counts of every term for the whole batch."""
        target = batch["target"]
        pad = self.pad_idx
        label_w = (target != pad).astype(jnp.float32)
        src_rows = jnp.any(batch["source"] != pad, axis=1)
        tgt_rows = jnp.any(target != pad, axis=1)
        out = {"label_w": label_w,
               "mse_w": (src_rows & tgt_rows).astype(jnp.float32)}
        if self._dae(batch):
            noised_rows = jnp.any(batch["noised_target"] != pad, axis=1)
            out["dae_w"] = label_w * noised_rows[:, None].astype(jnp.float32)
        return out

    def _loss(self, params: dict, batch: Mapping[str, jax.Array], totals: Mapping[str, Any]
              ) -> tuple[jax.Array, dict]:
        """(loss contribution of these rows, sums) with every term divided by `totals`.

        The encoder runs once over source, target and noised target (padded to one length and
        interleaved row by row, so the batch sharding is kept), and the decoder once over the MT
        and DAE rows, which share their decoder inputs and labels.
        """
        lc = self.loss_cfg
        encoder = bind(TextEncoder, params["encoder"], self.enc_cfg)
        decoder = bind(TextDecoder, params["decoder"], self.dec_cfg)
        target = batch["target"]
        rows = target.shape[0]
        weights = self._targets(batch)

        enc_inputs = [batch["source"]]  # then target (for the MSE), noised target (for DAE)
        if self.use_mse:
            enc_inputs.append(target)
        use_dae = self._dae(batch)
        if use_dae:
            enc_inputs.append(batch["noised_target"])
        embeddings = _interleaved(encoder, enc_inputs, self.pad_idx)  # [B, n, D]
        enc_x = embeddings[:, 0]

        dec_in = jnp.concatenate(
            [jnp.full((rows, 1), self.eos_idx, target.dtype), target[:, :-1]], axis=1)
        dec_emb = jnp.stack([enc_x, embeddings[:, -1]], axis=1) if use_dae else enc_x[:, None]
        n_dec = dec_emb.shape[1]  # 1 (MT) or 2 (MT, DAE)
        hidden = decoder.hidden_states(dec_emb.reshape(rows * n_dec, -1),
                                       jnp.repeat(dec_in, n_dec, axis=0))
        label_w = weights["label_w"][:, None]
        if use_dae:
            label_w = jnp.stack([weights["label_w"], weights["dae_w"]], axis=1)
        # The tied projection's table, cast once to the compute dtype and whole along D.
        table = decoder.embed.embedding[...].astype(jnp.dtype(self.dec_cfg.dtype))
        table = sharding.constrain(table, ("vocab", None))
        ce = losses.chunked_cross_entropy(
            hidden, table, jnp.repeat(target, n_dec, axis=0), label_w.reshape(rows * n_dec, -1),
            label_smoothing=float(lc.label_smoothing), chunk_size=int(lc.ce_chunk_size),
            per_row=True)
        ce = losses.CESums(*(jnp.sum(x.reshape(rows, n_dec), axis=0) for x in ce))  # [n_dec]

        loss = float(lc.mt_weight) * ce.loss[0] / jnp.maximum(totals["mt_tokens"], 1.0)
        sums = {"mt_loss": ce.loss[0], "mt_nll": ce.nll[0], "mt_correct": ce.correct[0],
                "mt_tokens": ce.weight[0]}
        if self.use_mse:
            enc_y = embeddings[:, 1]
            if lc.get("mse_stop_gradient_target", False):
                enc_y = jax.lax.stop_gradient(enc_y)
            mse, mse_rows = losses.mse_sums(enc_x, enc_y, weights["mse_w"])
            loss += float(lc.mse_weight) * mse / jnp.maximum(totals["mse_rows"], 1.0)
            sums.update(mse_loss=mse, mse_rows=mse_rows)
        if use_dae:
            loss += float(lc.dae_weight) * ce.loss[1] / jnp.maximum(totals["dae_tokens"], 1.0)
            sums.update(dae_loss=ce.loss[1], dae_nll=ce.nll[1], dae_correct=ce.correct[1],
                        dae_tokens=ce.weight[1])
        sums["loss"] = loss
        return loss, sums

    def _totals(self, batch: Mapping[str, jax.Array]) -> dict:
        w = self._targets(batch)
        totals = {"mt_tokens": jnp.sum(w["label_w"]), "mse_rows": jnp.sum(w["mse_w"])}
        if self._dae(batch):
            totals["dae_tokens"] = jnp.sum(w["dae_w"])
        return totals

    def _microbatches(self, batch: Mapping[str, jax.Array]) -> dict:
        """[B, L] -> [k, B/k, L]; microbatch i holds rows i, i+k, i+2k... so that each one is
        spread over every batch shard (a contiguous split would put it on a few devices)."""
        k = self.accum_steps

        def split(x):
            rows = x.shape[0]
            x = jnp.swapaxes(x.reshape(rows // k, k, *x.shape[1:]), 0, 1)
            return sharding.constrain(x, (None, "batch") + (None,) * (x.ndim - 2))
        return {key: split(v) for key, v in batch.items()}

    def _loss_and_grads(self, params: dict, batch: Mapping[str, jax.Array], with_grads: bool):
        totals = self._totals(batch)
        if with_grads:
            fn = jax.value_and_grad(self._loss, has_aux=True)
        else:
            def fn(p, b, t):
                return self._loss(p, b, t), None
        if self.accum_steps == 1:
            (_, sums), grads = fn(params, batch, totals)
            return sums, grads

        def body(carry, micro):
            acc_sums, acc_grads = carry
            (_, sums), grads = fn(params, micro, totals)
            acc_sums = jax.tree.map(jnp.add, acc_sums, sums)
            if with_grads:
                acc_grads = jax.tree.map(lambda a, g: a + g.astype(a.dtype), acc_grads, grads)
            return (acc_sums, acc_grads), None

        micro = self._microbatches(batch)
        first = jax.tree.map(lambda x: x[0], micro)
        sums0 = jax.tree.map(jnp.zeros_like, jax.eval_shape(
            lambda: self._loss(params, first, totals)[1]))
        grads0 = None
        if with_grads:
            grads0 = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
            grads0 = jax.tree.map(jax.lax.with_sharding_constraint, grads0, self.param_shardings)
        (sums, grads), _ = jax.lax.scan(body, (sums0, grads0), micro)
        return sums, grads

    @staticmethod
    def _metrics(sums: Mapping[str, jax.Array]) -> dict:
        metrics = {"loss": sums["loss"]}
        for term in ("mt", "dae"):
            if f"{term}_tokens" in sums:
                n = jnp.maximum(sums[f"{term}_tokens"], 1.0)
                metrics[f"{term}_loss"] = sums[f"{term}_loss"] / n
                metrics[f"{term}_nll"] = sums[f"{term}_nll"] / n
                metrics[f"{term}_accuracy"] = sums[f"{term}_correct"] / n
                metrics[f"{term}_tokens"] = sums[f"{term}_tokens"]
        if "mse_rows" in sums:
            metrics["mse_loss"] = sums["mse_loss"] / jnp.maximum(sums["mse_rows"], 1.0)
            metrics["mse_rows"] = sums["mse_rows"]
        return metrics

    # ------------------------------------------------------------------------------------------
    # Steps

    def _train_step_fn(self, state: TrainState, batch: Mapping[str, jax.Array]):
        with sharding.activation_rules(self.mesh, self.rules):
            sums, grads = self._loss_and_grads(state.params, batch, with_grads=True)
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
            metrics.update(grad_norm=grad_norm, learning_rate=self.schedule(state.step),
                           update_skipped=(~finite).astype(jnp.float32) * self.skip_nonfinite)
            new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    def _eval_step_fn(self, state: TrainState, batch: Mapping[str, jax.Array]):
        with sharding.activation_rules(self.mesh, self.rules):
            sums, _ = self._loss_and_grads(state.params, batch, with_grads=False)
            metrics = self._metrics(sums)
            # Raw sums too, so a loop can aggregate a dev set over many batches exactly.
            metrics.update({f"{k}_sum": v for k, v in sums.items() if k != "loss"})
        return metrics

    def train_step(self, state: TrainState, batch: Mapping[str, jax.Array]
                   ) -> tuple[TrainState, dict]:
        """One optimizer step (jitted; `state` is donated: use only the returned one)."""
        if self.use_dae and "noised_target" not in batch:
            raise KeyError("the denoising term is on (loss.dae_weight > 0) but the batch has no "
                           "'noised_target'")
        return self._train_step(state, dict(batch))

    def eval_step(self, state: TrainState, batch: Mapping[str, jax.Array]) -> dict:
        """Losses and counts of a batch without updating (jitted, nothing donated)."""
        return self._eval_step(state, dict(batch))

    def summarize_eval(self, totals: Mapping[str, float]) -> dict:
        """Dataset-level dev metrics from eval_step metrics summed over batches: each term divided
        by the dev set's total tokens (rows for the MSE), not averaged per batch."""
        def ratio(num, den):
            return float(totals[num]) / max(float(totals[den]), 1.0)

        lc = self.loss_cfg
        out: dict = {}
        loss = 0.0
        for term, weight in (("mt", lc.mt_weight), ("dae", lc.dae_weight)):
            if f"{term}_tokens_sum" in totals:
                out[f"{term}_loss"] = ratio(f"{term}_loss_sum", f"{term}_tokens_sum")
                out[f"{term}_nll"] = ratio(f"{term}_nll_sum", f"{term}_tokens_sum")
                out[f"{term}_accuracy"] = ratio(f"{term}_correct_sum", f"{term}_tokens_sum")
                out[f"{term}_tokens"] = float(totals[f"{term}_tokens_sum"])
                loss += float(weight) * out[f"{term}_loss"]
        if "mse_rows_sum" in totals:
            out["mse_loss"] = ratio("mse_loss_sum", "mse_rows_sum")
            out["mse_rows"] = float(totals["mse_rows_sum"])
            loss += float(lc.mse_weight) * out["mse_loss"]
        out["loss"] = loss
        return out

    def num_params(self) -> int:
        return sum(math.prod(x.shape) for x in jax.tree.leaves(self.abstract_params))
