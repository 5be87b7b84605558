"""What the recipes' runs share (`run` of `sonar_jax.train.text`, `decoder_finetune`,
`speech_distill`): the tokenizer and initial parameters of the `tokenizer` / `init_from`
sections, the text batches of `data` / `eval_data`, the loop options of `train` / `checkpoint`
/ `eval` / `log`, host copies of the trained models for evaluation hooks, and the export.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

import jax

from sonar_jax.model_dir import langs_from_arg, load_model, load_tokenizer, write_model_dir
from sonar_jax.models import registry
from sonar_jax.tokenizer import NllbTokenizer
from sonar_jax.train.loop import LoopOptions, LoopResult
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

    params = dict(trainer.export_params(state))
    params.update({part: trainer.frozen[part] for part in with_frozen})
    params = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() != 0:
        return
    for part, host in params.items():
        model_cls, part_cfg = {**trainer.parts, **trainer.frozen_parts}[part]
        kind = registry.kind(model_cls)
        write_model_dir(out_dir / kind.export_folder, kind.name,
                        part_cfg.replace(dtype="float32"), host,
                        tokenizer if kind.has_tokenizer else None)


def data_iterators(cfg, tokenizer: NllbTokenizer, modality: str, *, noise: bool = True):
    """(training iterator, eval iterator factory or None) of the `data` / `eval_data` sections
    (`sonar_jax.data.make_iterator`; the eval one when its path / manifest is set). noise False
    turns the text sections' denoising noise off."""
    from sonar_jax.data import make_iterator

    rows_multiple = jax.local_device_count() * int(cfg.train.grad_accum_steps)

    def section(name: str):
        resolved = cfg[name].copy_and_resolve_references()
        if "noise" in resolved:
            resolved.noise.enabled = bool(resolved.noise.enabled) and noise
        return resolved

    train_batches = make_iterator(section("data"), tokenizer, modality, training=True,
                                  rows_multiple=rows_multiple, seed=cfg.train.seed)
    eval_cfg = section("eval_data")
    eval_batches = None
    if eval_cfg.get("path") or eval_cfg.get("manifest"):
        eval_batches = lambda: make_iterator(  # noqa: E731
            eval_cfg, tokenizer, modality, training=False, rows_multiple=rows_multiple)
    return train_batches, eval_batches


def host_module(model_cls, part_cfg, params):
    """A float32 module on this host from (possibly sharded) parameters, gathered from the mesh."""
    from jax.experimental import multihost_utils

    params = multihost_utils.process_allgather(params, tiled=True)
    return registry.bind(model_cls, part_cfg.replace(dtype="float32"),
                         jax.tree.map(jax.numpy.asarray, params))


def trained_module(trainer: Trainer, state, part: str):
    """The current `part` of a training state as a float32 module on this host."""
    model_cls, part_cfg = trainer.parts[part]
    return host_module(model_cls, part_cfg, trainer.export_params(state)[part])


def export_final(cfg, trainer, result: LoopResult, tokenizer, workdir: pathlib.Path, **kw
                 ) -> None:
    """The final export of a completed run (workdir/export/step_N), once, if enabled."""
    export_dir = workdir / "export" / f"step_{result.step}"
    if cfg.export.enabled and result.stopped == "completed" and not export_dir.exists():
        export_models(trainer, result.state, tokenizer, export_dir, **kw)


