"""Text-data training runs from one config: tokenizer, mesh, trainer, data, loop, export.

`run_text_training` (configs/train_text.py, the multi-loss step) and `run_decoder_finetune`
(configs/train_decoder.py, random-interpolation decoding) share everything here; the sections
read are `tokenizer`, `init_from`, `data`, `eval_data`, `checkpoint`, `eval`, `log` and `export`
(the trainers read model/mesh/sharding/loss/optim/train). Called by sonar_jax/train/entry.py.
"""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

import jax
import numpy as np

from sonar_jax import sharding
from sonar_jax.data.pipeline import make_text_eval_iterator, make_text_train_iterator
from sonar_jax.model_dir import langs_from_arg, load_model, load_tokenizer, write_model_dir
from sonar_jax.tokenizer import NllbTokenizer
from sonar_jax.train.decoder_finetune import DecoderFinetuneTrainer
from sonar_jax.train.loop import EvalHook, LoopOptions, LoopResult, train
from sonar_jax.train.text_step import TextTrainer
from sonar_jax.train.trainer import Trainer


def run_tokenizer(cfg) -> NllbTokenizer:
    """The converted encoder's tokenizer when training starts from one, else `cfg.tokenizer`."""
    if cfg.init_from.encoder:
        return load_tokenizer(cfg.init_from.encoder)
    if not cfg.tokenizer.spm:
        raise ValueError("set tokenizer.spm (a SentencePiece model) or init_from.encoder (a "
                         "converted encoder directory, whose tokenizer is then used)")
    return NllbTokenizer(cfg.tokenizer.spm, langs_from_arg(cfg.tokenizer.langs or None))


def initial_params(cfg) -> dict:
    """Parameters of the converted directories in `cfg.init_from` (host numpy, any part)."""
    from flax import nnx

    params = {}
    for part in ("encoder", "decoder"):
        directory = cfg.init_from.get(part)
        if directory:
            model = load_model(directory, expected_kind=f"text_{part}")
            params[part] = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return params


def loop_options(cfg) -> LoopOptions:
    return LoopOptions(num_steps=cfg.train.num_steps, log_every=cfg.log.every_steps,
                       eval_every=cfg.eval.every_steps, checkpoint_every=cfg.checkpoint.every_steps,
                       keep_checkpoints=cfg.checkpoint.keep,
                       async_checkpoints=cfg.checkpoint.async_save,
                       tensorboard=cfg.log.tensorboard, progress_bar=cfg.log.progress_bar,
                       preemption_check_every=cfg.checkpoint.preemption_check_every)


def export_models(trainer: Trainer, state, tokenizer: NllbTokenizer | None,
                  out_dir: pathlib.Path, *, with_frozen: Sequence[str] = ()) -> None:
    """Writes the trained parts (and the frozen parts named in `with_frozen`, unchanged) as
    converted model directories (what the pipelines and the CLI load), parameters in float32:
    out_dir/encoder, out_dir/decoder, out_dir/speech_encoder. Every process must call it
    (sharded parameters are gathered); process 0 writes."""
    from jax.experimental import multihost_utils

    from sonar_jax.models.speech_encoder import SpeechEncoder
    from sonar_jax.models.text_decoder import TextDecoder
    from sonar_jax.models.text_encoder import TextEncoder

    exports = {TextEncoder: ("text_encoder", "encoder"), TextDecoder: ("text_decoder", "decoder"),
               SpeechEncoder: ("speech_encoder", "speech_encoder")}  # class -> (kind, folder)
    params = dict(trainer.export_params(state))
    params.update({part: trainer.frozen[part] for part in with_frozen})
    params = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() != 0:
        return
    for part, host in params.items():
        model_cls, part_cfg = {**trainer.parts, **trainer.frozen_parts}[part]
        kind, folder = exports[model_cls]
        write_model_dir(out_dir / folder, kind, part_cfg.replace(dtype="float32"), host,
                        None if kind == "speech_encoder" else tokenizer)


def text_batches(cfg, tokenizer: NllbTokenizer, *, noise: bool):
    """(training iterator, eval iterator factory or None) of the `data` / `eval_data` sections."""
    rows_multiple = jax.local_device_count() * int(cfg.train.grad_accum_steps)
    data_cfg = cfg.data.copy_and_resolve_references()
    data_cfg.noise.enabled = bool(data_cfg.noise.enabled) and noise
    train_batches = make_text_train_iterator(data_cfg, tokenizer, rows_multiple=rows_multiple,
                                             seed=cfg.train.seed)
    eval_batches = None
    if cfg.eval_data.path:
        eval_cfg = cfg.eval_data.copy_and_resolve_references()
        eval_cfg.noise.enabled = bool(eval_cfg.noise.enabled) and noise
        eval_batches = lambda: make_text_eval_iterator(  # noqa: E731
            eval_cfg, tokenizer, rows_multiple=rows_multiple)
    return train_batches, eval_batches


def host_module(model_cls, part_cfg, params):
    """A float32 module on this host from (possibly sharded) parameters, gathered from the mesh."""
    from flax import nnx
    from jax.experimental import multihost_utils

    params = multihost_utils.process_allgather(params, tiled=True)
    part_cfg = part_cfg.replace(dtype="float32")
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: model_cls(part_cfg, rngs=nnx.Rngs(0))))
    nnx.replace_by_pure_dict(abstract, jax.tree.map(jax.numpy.asarray, params))
    return nnx.merge(graphdef, abstract)


def encoder_module(trainer: TextTrainer, state):
    """The current encoder as a float32 TextEncoder on this host."""
    from sonar_jax.models.text_encoder import TextEncoder

    return host_module(TextEncoder, trainer.enc_cfg, trainer.export_params(state)["encoder"])


def xsim_hook(xsim_cfg, trainer: TextTrainer, tokenizer: NllbTokenizer) -> EvalHook:
    """Dev xsim of the encoder being trained: every language of a FLORES-layout folder against
    the pivot, both directions, LASER's ratio margin; reported pooled over all queries (and
    xsim++ where the folder has augmented targets)."""
    from sonar_jax.evaluate.report import evaluate_text_retrieval
    from sonar_jax.pipelines import TextToEmbeddingModelPipeline

    def hook(state, step: int) -> dict:
        pipeline = TextToEmbeddingModelPipeline(encoder_module(trainer, state), tokenizer)
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


def autoencode_hook(ae_cfg, trainer: DecoderFinetuneTrainer, tokenizer: NllbTokenizer
                    ) -> EvalHook:
    """Auto-encoding chrF++ / BLEU of the decoder being trained: each language's first
    `sentences` dev lines embedded by the frozen encoder and decoded back (greedy) into that
    language; reported averaged over languages."""
    from sonar_jax.evaluate.report import available_langs, read_split
    from sonar_jax.evaluate.translation import translation_scores
    from sonar_jax.models.text_decoder import TextDecoder
    from sonar_jax.models.text_encoder import TextEncoder
    from sonar_jax.pipelines import TextToTextModelPipeline

    encoder = host_module(TextEncoder, trainer.enc_cfg, trainer.frozen["encoder"])
    langs = (ae_cfg.langs.split(",") if ae_cfg.langs else available_langs(ae_cfg.path,
                                                                          ae_cfg.split))

    def hook(state, step: int) -> dict:
        decoder = host_module(TextDecoder, trainer.dec_cfg, trainer.export_params(state)["decoder"])
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


def run_decoder_finetune(cfg, workdir: str | pathlib.Path,
                         eval_hooks: Sequence[EvalHook] = ()) -> LoopResult:
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
    train_batches, eval_batches = text_batches(cfg, tokenizer, noise=False)
    if cfg.eval.autoencode.path:
        eval_hooks = (*eval_hooks, autoencode_hook(cfg.eval.autoencode, trainer, tokenizer))
    result = train(trainer, workdir=workdir, options=loop_options(cfg),
                   train_batches=train_batches,
                   init_state=lambda: trainer.init(cfg.train.seed, init_params=loaded or None),
                   eval_batches=eval_batches, eval_hooks=eval_hooks)
    export_final(cfg, trainer, result, tokenizer, workdir, with_frozen=("encoder",))
    return result


def export_final(cfg, trainer, result: LoopResult, tokenizer, workdir: pathlib.Path, **kw
                 ) -> None:
    """The final export of a completed run (workdir/export/step_N), once, if enabled."""
    export_dir = workdir / "export" / f"step_{result.step}"
    if cfg.export.enabled and result.stopped == "completed" and not export_dir.exists():
        export_models(trainer, result.state, tokenizer, export_dir, **kw)


def run_text_training(cfg, workdir: str | pathlib.Path,
                      eval_hooks: Sequence[EvalHook] = ()) -> LoopResult:
    """Trains as `cfg` says, resuming from `workdir` when it holds checkpoints; exports the
    final models to `workdir/export/step_N/{encoder,decoder}` when `cfg.export.enabled`."""
    workdir = pathlib.Path(workdir)
    tokenizer = run_tokenizer(cfg)
    trainer = TextTrainer(cfg, sharding.make_mesh(cfg.mesh))
    train_batches, eval_batches = text_batches(cfg, tokenizer,
                                               noise=float(cfg.loss.dae_weight) > 0)
    if cfg.eval.xsim.path:
        eval_hooks = (*eval_hooks, xsim_hook(cfg.eval.xsim, trainer, tokenizer))

    def init_state() -> Any:
        return trainer.init(cfg.train.seed, init_params=initial_params(cfg) or None)

    result = train(trainer, workdir=workdir, options=loop_options(cfg), train_batches=train_batches,
                   init_state=init_state, eval_batches=eval_batches, eval_hooks=eval_hooks)
    export_final(cfg, trainer, result, tokenizer, workdir)
    return result
