"""The training command line, shared by `launch/train.py` and `sonar-jax train`.

    --config=FILE[:VARIANT]          an ml_collections config file (its get_config(VARIANT))
    --config.section.field=VALUE     override any field
    --workdir=DIR                    checkpoints, metrics, exports; rerunning resumes from it
    --distributed=auto|on|off        jax.distributed.initialize() (auto: when the environment
                                     shows several processes: Slurm, a TPU pod, JAX_COORDINATOR_*)
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import app, flags
from ml_collections import config_flags

_FLAGS = flags.FlagValues()
_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file[:variant]",
                                          lock_config=True, flag_values=_FLAGS)
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, metrics and exports go here",
                               flag_values=_FLAGS)
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "call jax.distributed.initialize(): auto = when the environment shows several processes",
    flag_values=_FLAGS)


RUNS = {"text": ("sonar_jax.train.text_run", "run_text_training"),
        "decoder_finetune": ("sonar_jax.train.text_run", "run_decoder_finetune"),
        "speech_distill": ("sonar_jax.train.speech_run", "run_speech_distillation")}


def run_training(cfg, workdir: str):
    """Runs the recipe `cfg.kind` names (configs/train_text.py, train_decoder.py,
    train_speech.py); a config without `kind` is a text multi-loss run."""
    import importlib

    kind = cfg.get("kind", "text")
    if kind not in RUNS:
        raise ValueError(f"config kind {kind!r}: expected one of {sorted(RUNS)}")
    module, function = RUNS[kind]
    return getattr(importlib.import_module(module), function)(cfg, workdir)


def run_from_flags(argv: Sequence[str]):
    """Parses `argv` (argv[0] is the program name) and runs the training it describes."""
    try:
        rest = _FLAGS(list(argv))
    except flags.Error as error:
        raise app.UsageError(str(error)) from None
    if len(rest) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(rest[1:])}")
    if _CONFIG.value is None or not _WORKDIR.value:
        raise app.UsageError("--config=FILE[:VARIANT] and --workdir=DIR are required")
    from sonar_jax.train.distributed import maybe_initialize

    maybe_initialize(_DISTRIBUTED.value)
    result = run_training(_CONFIG.value, _WORKDIR.value)
    print(f"sonar-jax train: {result.stopped} at step {result.step} (workdir {_WORKDIR.value})",
          file=sys.stderr)
    return result
