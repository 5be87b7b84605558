"""The training command line, shared by `launch/train.py` and `sonar-jax train`.

    --config=RECIPE[:VARIANT]        a packaged recipe (text, decoder_finetune, speech_distill;
                                     sonar_jax/configs/) or an ml_collections config FILE[:VARIANT]
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


def run_training(cfg, workdir: str):
    """Runs the recipe `cfg.kind` names: `sonar_jax.train.<kind>.run(cfg, workdir)`."""
    import importlib

    from sonar_jax.configs import check_recipe

    if not cfg.get("kind"):
        raise ValueError("the config has no `kind`: set cfg.kind to the recipe it configures "
                         "(text, decoder_finetune or speech_distill)")
    kind = check_recipe(cfg.kind)
    return importlib.import_module(f"sonar_jax.train.{kind}").run(cfg, workdir)


def resolve_config_flag(argv: Sequence[str]) -> list[str]:
    """argv with a packaged recipe in --config (`--config=text:tiny`) replaced by its file, which
    ml_collections' config flag reads (a path to one's own config file is kept)."""
    from sonar_jax.configs import config_file

    out, args = [], list(argv)
    while args:
        arg = args.pop(0)
        if arg.startswith("--config="):
            arg = "--config=" + config_file(arg.split("=", 1)[1])
        elif arg == "--config" and args:
            out.append(arg)
            arg = config_file(args.pop(0))
        out.append(arg)
    return out


def parse_flags(flag_values: flags.FlagValues, argv: Sequence[str], required: str) -> None:
    """Parses argv (argv[0] is the program name; a packaged recipe in --config resolved) into
    `flag_values`; usage errors (a bad flag, a stray argument, a required flag missing: `required`
    says which) are absl UsageErrors."""
    try:
        rest = flag_values(resolve_config_flag(argv))
    except flags.Error as error:
        raise app.UsageError(str(error)) from None
    if len(rest) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(rest[1:])}")
    missing = [name for name in required.split() if flag_values[name].value in (None, "")]
    if missing:
        hint = " (--config=RECIPE[:VARIANT], e.g. text:tiny)" if "config" in missing else ""
        raise app.UsageError(f"{', '.join('--' + m for m in missing)} required{hint}")


def run_from_flags(argv: Sequence[str]):
    """Parses `argv` (argv[0] is the program name) and runs the training it describes."""
    parse_flags(_FLAGS, argv, "config workdir")
    from sonar_jax.train.distributed import maybe_initialize

    maybe_initialize(_DISTRIBUTED.value)
    result = run_training(_CONFIG.value, _WORKDIR.value)
    print(f"sonar-jax train: {result.stopped} at step {result.step} (workdir {_WORKDIR.value})",
          file=sys.stderr)
    return result
