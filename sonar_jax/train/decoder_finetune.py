"""Decoder fine-tuning on random interpolations (SONAR paper §3.1, "random interpolation
decoding"): the encoder is frozen, each pair (x, y) gives

    z = a·enc(x) + (1 − a)·enc(y),   a drawn per row,   L = CE(dec(z) -> y)

so the decoder learns to read the whole neighbourhood between a sentence's embedding and its
translation's, not only the points the encoder produced in training. The encoder is a frozen
part (never in the optimizer state or a checkpoint, bit-identical after training); only the
decoder is trained. The paper does not state the distribution of `a`: uniform on [low, high]
by default, or Beta(alpha, beta) (config `interpolation`).

Batch contract: the text pipeline's {"source", "target"} (noise off), see `train/text.py`.
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sonar_jax import sharding
from sonar_jax.data import batch_spec
from sonar_jax.models import registry
from sonar_jax.models.text_decoder import TextDecoder
from sonar_jax.models.text_encoder import TextEncoder
from sonar_jax.tokenizer import NllbTokenizer
from sonar_jax.train.loop import EvalHook, LoopResult, train
from sonar_jax.train.runs import (data_iterators, export_final, host_module, initial_params,
                                  loop_options, run_tokenizer, trained_module)
from sonar_jax.train.text import (ce_metrics, interleaved_embeddings, model_configs,
                                  summarize_ce, teacher_forced_ce)
from sonar_jax.train.state import StepContext
from sonar_jax.train.trainer import Trainer

DISTRIBUTIONS = ("uniform", "beta")


def check_interpolation(interpolation: Any) -> None:
    """Refuses an `interpolation` config section that names no valid distribution."""
    kind = interpolation.distribution
    if kind not in DISTRIBUTIONS:
        raise ValueError(f"interpolation.distribution {kind!r}: expected one of {DISTRIBUTIONS}")
    if kind == "uniform" and not 0.0 <= float(interpolation.low) <= float(interpolation.high) <= 1:
        raise ValueError(f"interpolation low/high must satisfy 0 <= low <= high <= 1, got "
                         f"{interpolation.low}, {interpolation.high}")


def interpolation_weights(rng: jax.Array, rows: int, interpolation: Any) -> jax.Array:
    """[rows] float32 weights `a` of enc(x) (1 − a goes to enc(y))."""
    check_interpolation(interpolation)
    if interpolation.distribution == "uniform":
        return jax.random.uniform(rng, (rows,), minval=float(interpolation.low),
                                  maxval=float(interpolation.high))
    return jax.random.beta(rng, float(interpolation.alpha), float(interpolation.beta), (rows,))


class DecoderFinetuneTrainer(Trainer):
    """CE of decoding y from random interpolations of the frozen encoder's enc(x) and enc(y)."""

    def __init__(self, cfg: Any, mesh: Mesh):
        self.enc_cfg, self.dec_cfg = model_configs(cfg)
        self.loss_cfg = cfg.loss
        self.interpolation = cfg.interpolation
        self.pad_idx = int(cfg.model.get("pad_idx", 0))
        self.eos_idx = int(cfg.model.get("eos_idx", 3))
        check_interpolation(self.interpolation)
        super().__init__(cfg, mesh, batch_spec=batch_spec.TEXT,
                         parts={"decoder": (TextDecoder, self.dec_cfg)},
                         frozen_parts={"encoder": (TextEncoder, self.enc_cfg)})

    def check_field(self, key: str, x) -> None:
        vocab = self.enc_cfg.vocab_size if key == "source" else min(self.enc_cfg.vocab_size,
                                                                    self.dec_cfg.vocab_size)
        if x.size and (x.min() < 0 or x.max() >= vocab):
            raise ValueError(f"batch[{key!r}] holds token ids outside [0, {vocab}): "
                             f"min {x.min()}, max {x.max()}")

    def _totals(self, batch: Mapping[str, jax.Array]) -> dict:
        return {"tokens": jnp.sum((batch["target"] != self.pad_idx).astype(jnp.float32))}

    def _loss(self, params: dict, batch: Mapping[str, jax.Array], totals: Mapping[str, Any],
              ctx: StepContext) -> tuple[jax.Array, dict, Any]:
        encoder = registry.bind(TextEncoder, self.enc_cfg, ctx.frozen["encoder"])
        decoder = registry.bind(TextDecoder, self.dec_cfg, params["decoder"])
        source, target = batch["source"], batch["target"]
        embeddings = jax.lax.stop_gradient(
            interleaved_embeddings(encoder, [source, target], self.pad_idx))  # [B, 2, D]
        a = interpolation_weights(ctx.rng, source.shape[0], self.interpolation)[:, None]
        z = a * embeddings[:, 0] + (1.0 - a) * embeddings[:, 1]
        label_w = (target != self.pad_idx).astype(jnp.float32)[:, None]
        ce = teacher_forced_ce(decoder, self.dec_cfg, z[:, None], target, label_w,
                               eos_idx=self.eos_idx,
                               label_smoothing=float(self.loss_cfg.label_smoothing),
                               chunk_size=int(self.loss_cfg.ce_chunk_size))
        loss = ce.loss[0] / jnp.maximum(totals["tokens"], 1.0)
        sums = {"loss": loss, "interp_loss": ce.loss[0], "interp_nll": ce.nll[0],
                "interp_correct": ce.correct[0], "interp_tokens": ce.weight[0]}
        return loss, sums, ctx.model_state

    def _metrics(self, sums: Mapping[str, jax.Array]) -> dict:
        return {"loss": sums["loss"], **ce_metrics(sums, ("interp",))}

    def summarize_eval(self, totals: Mapping[str, float]) -> dict:
        out, loss = summarize_ce(totals, {"interp": 1.0})
        out["loss"] = loss
        return out


def autoencode_hook(ae_cfg, trainer: DecoderFinetuneTrainer, tokenizer: NllbTokenizer
                    ) -> EvalHook:
    """Auto-encoding chrF++ / BLEU of the decoder being trained: each language's first
    `sentences` dev lines embedded by the frozen encoder and decoded back (greedy) into that
    language; reported averaged over languages."""
    from sonar_jax.evaluate.report import available_langs, read_split
    from sonar_jax.evaluate.translation import translation_scores
    from sonar_jax.pipelines import TextToTextModelPipeline

    encoder = host_module(TextEncoder, trainer.enc_cfg, trainer.frozen["encoder"])
    langs = (ae_cfg.langs.split(",") if ae_cfg.langs else available_langs(ae_cfg.path,
                                                                          ae_cfg.split))

    def hook(state, step: int) -> dict:
        decoder = trained_module(trainer, state, "decoder")
        pipeline = TextToTextModelPipeline(encoder, decoder, tokenizer)
        scores = []
        for lang in langs:
            sentences = read_split(ae_cfg.path, ae_cfg.split, lang)[:ae_cfg.sentences]
            outputs = pipeline.predict(sentences, source_lang=lang, target_lang=lang,
                                       beam_size=1)
            scores.append(translation_scores(outputs, sentences, lang))
        return {f"autoencode_{name}": float(np.mean([s[name] for s in scores]))
                for name in ("bleu", "chrf++")}

    return hook


def run(cfg, workdir: str | pathlib.Path, eval_hooks: Sequence[EvalHook] = ()) -> LoopResult:
    """Fine-tunes `init_from.decoder` (or a random decoder) on random interpolations of the
    frozen `init_from.encoder`'s embeddings; exports both (the encoder unchanged)."""
    if not cfg.init_from.encoder:
        raise ValueError("decoder fine-tuning needs init_from.encoder: the converted encoder "
                         "directory whose embedding space the decoder learns to read")
    workdir = pathlib.Path(workdir)
    tokenizer = run_tokenizer(cfg)
    trainer = DecoderFinetuneTrainer(cfg, sharding.make_mesh(cfg.mesh))
    loaded = initial_params(cfg)
    trainer.set_frozen({"encoder": loaded.pop("encoder")})
    train_batches, eval_batches = data_iterators(cfg, tokenizer, "text", noise=False)
    if cfg.eval.autoencode.path:
        eval_hooks = (*eval_hooks, autoencode_hook(cfg.eval.autoencode, trainer, tokenizer))
    result = train(trainer, workdir=workdir, options=loop_options(cfg),
                   train_batches=train_batches,
                   init_state=lambda: trainer.init(cfg.train.seed, init_params=loaded or None),
                   eval_batches=eval_batches, eval_hooks=eval_hooks)
    export_final(cfg, trainer, result, tokenizer, workdir, with_frozen=("encoder",))
    return result
