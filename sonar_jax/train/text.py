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

import pathlib
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sonar_jax import sharding
from sonar_jax.config import TextModelConfig
from sonar_jax.configs.architectures import text_model_config
from sonar_jax.data import batch_spec
from sonar_jax.models import registry
from sonar_jax.models.text_decoder import TextDecoder
from sonar_jax.models.text_encoder import TextEncoder
from sonar_jax.tokenizer import NllbTokenizer
from sonar_jax.train import losses
from sonar_jax.train.loop import EvalHook, LoopResult, train
from sonar_jax.train.runs import (data_iterators, export_final, initial_params, loop_options,
                                  run_tokenizer, trained_module)
from sonar_jax.train.state import StepContext
from sonar_jax.train.trainer import Trainer



def model_configs(cfg: Any) -> tuple[TextModelConfig, TextModelConfig]:
    """Encoder and decoder configs of the `model` section (architecture file + dtype/remat)."""
    m = cfg.model
    overrides = dict(dtype=m.dtype, param_dtype=m.param_dtype, remat_policy=m.remat_policy,
                     pad_idx=m.get("pad_idx", 0), attention=m.get("attention", "auto"))
    return (text_model_config(m.get("encoder_arch", m.arch), "encoder", **overrides),
            text_model_config(m.get("decoder_arch", m.arch), "decoder", **overrides))


def interleaved_embeddings(encoder: TextEncoder, inputs: list[jax.Array], pad_idx: int) -> jax.Array:
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



def teacher_forced_ce(decoder: TextDecoder, dec_cfg: TextModelConfig, embeddings: jax.Array,
                      target: jax.Array, label_w: jax.Array, *, eos_idx: int,
                      label_smoothing: float, chunk_size: int) -> losses.CESums:
    """Per-stream CE sums [n] of decoding `target` [B, L] from n embeddings per row [B, n, D].

    Teacher forcing feeds `[eos] + target[:-1]` and predicts `target` where `label_w` [B, n, L]
    is non-zero; the decoder runs once over all B*n streams, which share inputs and labels.
    """
    rows, n_dec = embeddings.shape[:2]
    dec_in = jnp.concatenate(
        [jnp.full((rows, 1), eos_idx, target.dtype), target[:, :-1]], axis=1)
    hidden = decoder.hidden_states(embeddings.reshape(rows * n_dec, -1),
                                   jnp.repeat(dec_in, n_dec, axis=0))
    # The tied projection's table, cast once to the compute dtype and whole along D.
    table = decoder.embed.embedding[...].astype(jnp.dtype(dec_cfg.dtype))
    table = sharding.constrain(table, ("vocab", None))
    ce = losses.chunked_cross_entropy(
        hidden, table, jnp.repeat(target, n_dec, axis=0), label_w.reshape(rows * n_dec, -1),
        label_smoothing=label_smoothing, chunk_size=chunk_size, per_row=True)
    return losses.CESums(*(jnp.sum(x.reshape(rows, n_dec), axis=0) for x in ce))


def ce_metrics(sums: Mapping[str, jax.Array], terms: tuple[str, ...]) -> dict:
    """loss / nll / accuracy per target token of each CE term of `sums` (`<term>_tokens` etc.)."""
    metrics = {}
    for term in terms:
        if f"{term}_tokens" in sums:
            n = jnp.maximum(sums[f"{term}_tokens"], 1.0)
            metrics[f"{term}_loss"] = sums[f"{term}_loss"] / n
            metrics[f"{term}_nll"] = sums[f"{term}_nll"] / n
            metrics[f"{term}_accuracy"] = sums[f"{term}_correct"] / n
            metrics[f"{term}_tokens"] = sums[f"{term}_tokens"]
    return metrics


def summarize_ce(totals: Mapping[str, float], terms: Mapping[str, float]) -> tuple[dict, float]:
    """Dataset-level CE figures of summed eval metrics, and their weighted loss ({term: weight})."""
    def ratio(num, den):
        return float(totals[num]) / max(float(totals[den]), 1.0)

    out, loss = {}, 0.0
    for term, weight in terms.items():
        if f"{term}_tokens_sum" in totals:
            out[f"{term}_loss"] = ratio(f"{term}_loss_sum", f"{term}_tokens_sum")
            out[f"{term}_nll"] = ratio(f"{term}_nll_sum", f"{term}_tokens_sum")
            out[f"{term}_accuracy"] = ratio(f"{term}_correct_sum", f"{term}_tokens_sum")
            out[f"{term}_tokens"] = float(totals[f"{term}_tokens_sum"])
            loss += float(weight) * out[f"{term}_loss"]
    return out, loss


class TextTrainer(Trainer):
    """The multi-loss step over a trained encoder and decoder (see the module docstring)."""

    def __init__(self, cfg: Any, mesh: Mesh):
        self.enc_cfg, self.dec_cfg = model_configs(cfg)
        self.loss_cfg = cfg.loss
        self.pad_idx = int(cfg.model.get("pad_idx", 0))
        self.eos_idx = int(cfg.model.get("eos_idx", 3))
        self.use_mse = float(cfg.loss.mse_weight) > 0
        self.use_dae = float(cfg.loss.dae_weight) > 0
        # noised_target is read when the denoising term is on: a training step needs it then,
        # an eval step without it reports the MT and MSE terms only.
        dae = ("noised_target",) if self.use_dae else ()
        super().__init__(cfg, mesh, batch_spec=batch_spec.TEXT.but(train_required=dae,
                                                                    optional=dae),
                         parts={"encoder": (TextEncoder, self.enc_cfg),
                                "decoder": (TextDecoder, self.dec_cfg)})

    # ------------------------------------------------------------------------------------------
    # Batches

    def check_field(self, key: str, x: np.ndarray) -> None:
        vocab = self.enc_cfg.vocab_size if key != "target" else min(
            self.enc_cfg.vocab_size, self.dec_cfg.vocab_size)
        if x.size and (x.min() < 0 or x.max() >= vocab):
            raise ValueError(f"batch[{key!r}] holds token ids outside [0, {vocab}): "
                             f"min {x.min()}, max {x.max()}")

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

    def _loss(self, params: dict, batch: Mapping[str, jax.Array], totals: Mapping[str, Any],
              ctx: StepContext) -> tuple[jax.Array, dict, Any]:
        """(loss contribution of these rows, sums, model state) with every term divided by
        `totals`.

        The encoder runs once over source, target and noised target (padded to one length and
        interleaved row by row, so the batch sharding is kept), and the decoder once over the MT
        and DAE rows, which share their decoder inputs and labels.
        """
        lc = self.loss_cfg
        encoder = registry.bind(TextEncoder, self.enc_cfg, params["encoder"])
        decoder = registry.bind(TextDecoder, self.dec_cfg, params["decoder"])
        target = batch["target"]
        weights = self._targets(batch)

        enc_inputs = [batch["source"]]  # then target (for the MSE), noised target (for DAE)
        if self.use_mse:
            enc_inputs.append(target)
        use_dae = self._dae(batch)
        if use_dae:
            enc_inputs.append(batch["noised_target"])
        embeddings = interleaved_embeddings(encoder, enc_inputs, self.pad_idx)  # [B, n, D]
        enc_x = embeddings[:, 0]

        dec_emb = jnp.stack([enc_x, embeddings[:, -1]], axis=1) if use_dae else enc_x[:, None]
        label_w = weights["label_w"][:, None]
        if use_dae:
            label_w = jnp.stack([weights["label_w"], weights["dae_w"]], axis=1)
        ce = teacher_forced_ce(decoder, self.dec_cfg, dec_emb, target, label_w,
                               eos_idx=self.eos_idx, label_smoothing=float(lc.label_smoothing),
                               chunk_size=int(lc.ce_chunk_size))

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
        return loss, sums, ctx.model_state

    def _totals(self, batch: Mapping[str, jax.Array]) -> dict:
        w = self._targets(batch)
        totals = {"mt_tokens": jnp.sum(w["label_w"]), "mse_rows": jnp.sum(w["mse_w"])}
        if self._dae(batch):
            totals["dae_tokens"] = jnp.sum(w["dae_w"])
        return totals

    def _metrics(self, sums: Mapping[str, jax.Array]) -> dict:
        metrics = {"loss": sums["loss"], **ce_metrics(sums, ("mt", "dae"))}
        if "mse_rows" in sums:
            metrics["mse_loss"] = sums["mse_loss"] / jnp.maximum(sums["mse_rows"], 1.0)
            metrics["mse_rows"] = sums["mse_rows"]
        return metrics

    # ------------------------------------------------------------------------------------------
    # Steps

    def summarize_eval(self, totals: Mapping[str, float]) -> dict:
        """Dataset-level dev metrics from eval_step metrics summed over batches: each term divided
        by the dev set's total tokens (rows for the MSE), not averaged per batch."""
        lc = self.loss_cfg
        out, loss = summarize_ce(totals, {"mt": lc.mt_weight, "dae": lc.dae_weight})
        if "mse_rows_sum" in totals:
            out["mse_loss"] = float(totals["mse_loss_sum"]) / max(float(totals["mse_rows_sum"]), 1)
            out["mse_rows"] = float(totals["mse_rows_sum"])
            loss += float(lc.mse_weight) * out["mse_loss"]
        out["loss"] = loss
        return out


def xsim_hook(xsim_cfg, trainer: TextTrainer, tokenizer: NllbTokenizer) -> EvalHook:
    """Dev xsim of the encoder being trained: every language of a FLORES-layout folder against
    the pivot, both directions, LASER's ratio margin; reported pooled over all queries (and
    xsim++ where the folder has augmented targets)."""
    from sonar_jax.evaluate.report import evaluate_text_retrieval
    from sonar_jax.pipelines import TextToEmbeddingModelPipeline

    def hook(state, step: int) -> dict:
        pipeline = TextToEmbeddingModelPipeline(trained_module(trainer, state, "encoder"),
                                                tokenizer)
        rows = evaluate_text_retrieval(pipeline, xsim_cfg.path, xsim_cfg.split,
                                       xsim_cfg.langs or None, pivot=xsim_cfg.pivot,
                                       batch_size=64)
        metrics = {}
        for task, name in (("xsim", "xsim_error_percent"), ("xsim++", "xsimpp_error_percent")):
            chosen = [r for r in rows if r["task"] == task]
            if chosen:
                errors = sum(r["errors"] for r in chosen)
                metrics[name] = 100.0 * errors / sum(r["total"] for r in chosen)
        return metrics

    return hook


def run(cfg, workdir: str | pathlib.Path, eval_hooks: Sequence[EvalHook] = ()) -> LoopResult:
    """Trains as `cfg` says, resuming from `workdir` when it holds checkpoints; exports the
    final models to `workdir/export/step_N/{encoder,decoder}` when `cfg.export.enabled`."""
    workdir = pathlib.Path(workdir)
    tokenizer = run_tokenizer(cfg)
    trainer = TextTrainer(cfg, sharding.make_mesh(cfg.mesh))
    train_batches, eval_batches = data_iterators(cfg, tokenizer, "text",
                                                  noise=float(cfg.loss.dae_weight) > 0)
    if cfg.eval.xsim.path:
        eval_hooks = (*eval_hooks, xsim_hook(cfg.eval.xsim, trainer, tokenizer))

    def init_state() -> Any:
        return trainer.init(cfg.train.seed, init_params=initial_params(cfg) or None)

    result = train(trainer, workdir=workdir, options=loop_options(cfg), train_batches=train_batches,
                   init_state=init_state, eval_batches=eval_batches, eval_hooks=eval_hooks)
    export_final(cfg, trainer, result, tokenizer, workdir)
    return result
