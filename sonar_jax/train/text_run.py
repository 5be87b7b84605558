"""A text training run from one config: tokenizer, mesh, trainer, data, loop, export.

Shared by `launch/train.py` and `sonar-jax train`. The config is configs/train_text.py's; the
sections read here are `tokenizer`, `init_from`, `data`, `eval_data`, `checkpoint`, `eval`, `log`
and `export` (the trainer reads model/mesh/sharding/loss/optim/train).
"""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

import jax

from sonar_jax import sharding
from sonar_jax.data.pipeline import make_text_eval_iterator, make_text_train_iterator
from sonar_jax.model_dir import langs_from_arg, load_model, load_tokenizer, write_model_dir
from sonar_jax.tokenizer import NllbTokenizer
from sonar_jax.train.loop import EvalHook, LoopOptions, LoopResult, train
from sonar_jax.train.text_step import TextTrainer


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


def export_models(trainer: TextTrainer, state, tokenizer: NllbTokenizer,
                  out_dir: pathlib.Path) -> None:
    """Writes the trained encoder and decoder as converted model directories (what the
    pipelines and the CLI load), parameters in float32. Every process must call it (sharded
    parameters are gathered); process 0 writes."""
    from jax.experimental import multihost_utils

    params = multihost_utils.process_allgather(trainer.export_params(state), tiled=True)
    if jax.process_index() != 0:
        return
    for part, part_cfg in (("encoder", trainer.enc_cfg), ("decoder", trainer.dec_cfg)):
        host = params[part]
        write_model_dir(out_dir / part, f"text_{part}", part_cfg.replace(dtype="float32"), host,
                        tokenizer)


def encoder_module(trainer: TextTrainer, state):
    """The current encoder as a float32 TextEncoder on this host (gathered from the mesh)."""
    from flax import nnx
    from jax.experimental import multihost_utils

    from sonar_jax.models.text_encoder import TextEncoder

    params = multihost_utils.process_allgather(trainer.export_params(state)["encoder"], tiled=True)
    cfg = trainer.enc_cfg.replace(dtype="float32")
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: TextEncoder(cfg, rngs=nnx.Rngs(0))))
    nnx.replace_by_pure_dict(abstract, jax.tree.map(jax.numpy.asarray, params))
    return nnx.merge(graphdef, abstract)


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


def run_text_training(cfg, workdir: str | pathlib.Path,
                      eval_hooks: Sequence[EvalHook] = ()) -> LoopResult:
    """Trains as `cfg` says, resuming from `workdir` when it holds checkpoints; exports the
    final models to `workdir/export/step_N/{encoder,decoder}` when `cfg.export.enabled`."""
    workdir = pathlib.Path(workdir)
    tokenizer = run_tokenizer(cfg)
    mesh = sharding.make_mesh(cfg.mesh)
    trainer = TextTrainer(cfg, mesh)
    rows_multiple = jax.local_device_count() * int(cfg.train.grad_accum_steps)
    data_cfg = cfg.data.copy_and_resolve_references()
    data_cfg.noise.enabled = bool(data_cfg.noise.enabled) and float(cfg.loss.dae_weight) > 0
    train_batches = make_text_train_iterator(data_cfg, tokenizer, rows_multiple=rows_multiple,
                                             seed=cfg.train.seed)
    eval_batches = None
    if cfg.eval_data.path:
        eval_batches = lambda: make_text_eval_iterator(  # noqa: E731
            cfg.eval_data, tokenizer, rows_multiple=rows_multiple)

    if cfg.eval.xsim.path:
        eval_hooks = (*eval_hooks, xsim_hook(cfg.eval.xsim, trainer, tokenizer))

    def init_state() -> Any:
        return trainer.init(cfg.train.seed, init_params=initial_params(cfg) or None)

    result = train(trainer, workdir=workdir, options=loop_options(cfg), train_batches=train_batches,
                   init_state=init_state, eval_batches=eval_batches, eval_hooks=eval_hooks)
    export_dir = workdir / "export" / f"step_{result.step}"
    if cfg.export.enabled and result.stopped == "completed" and not export_dir.exists():
        export_models(trainer, result.state, tokenizer, export_dir)
    return result
