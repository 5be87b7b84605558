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

def _training_flags(argv: Sequence[str]) -> tuple[flags.FlagValues, dict]:
    """Fresh flag values for parsing `argv` (absl's are otherwise process-global: a second
    in-process run would inherit the first one's --workdir; ml_collections finds the --config.*
    overrides in the argv it is given at definition)."""
    fv = flags.FlagValues()
    holders = {
        "config": config_flags.DEFINE_config_file(
            "config", None, "training config file[:variant]", lock_config=True, flag_values=fv,
            sys_argv=resolve_config_flag(argv)),
        "workdir": flags.DEFINE_string("workdir", None, "checkpoints, metrics and exports go "
                                       "here", flag_values=fv),
        "distributed": flags.DEFINE_enum(
            "distributed", "auto", ["auto", "on", "off"], "call jax.distributed.initialize(): "
            "auto = when the environment shows several processes", flag_values=fv),
    }
    return fv, holders


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
    except (AttributeError, KeyError) as error:  # ml_collections: an override of no field
        raise app.UsageError(_unknown_field(argv, str(error).strip("\"'"))) from None
    if len(rest) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(rest[1:])}")
    missing = [name for name in required.split() if flag_values[name].value in (None, "")]
    if missing:
        hint = " (--config=RECIPE[:VARIANT], e.g. text:tiny)" if "config" in missing else ""
        raise app.UsageError(f"{', '.join('--' + m for m in missing)} required{hint}")


def _unknown_field(argv: Sequence[str], name: str) -> str:
    """The message for a --config.a.b=VALUE override naming a field the config lacks, with the
    fields it has there when the config is a packaged recipe."""
    overrides = [arg.split("=", 1)[0] for arg in argv if arg.startswith("--config.")]
    flag = next((o for o in overrides if name in o.split(".")[1:]), "a --config.* override")
    message = f"{flag}: the config has no field {name!r}"
    spec = next((arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")), "")
    recipe, _, variant = spec.partition(":")
    from sonar_jax.configs import RECIPES, get_config

    if recipe in RECIPES and flag.startswith("--config."):
        section = get_config(recipe, variant or "basic")
        for part in flag.split(".")[1:-1]:
            section = section.get(part) if hasattr(section, "get") else None
        if hasattr(section, "keys"):
            message += f"; fields there: {', '.join(sorted(section.keys()))}"
    return message


def run_from_flags(argv: Sequence[str]):
    """Parses `argv` (argv[0] is the program name) and runs the training it describes."""
    fv, holders = _training_flags(argv)
    parse_flags(fv, argv, "config workdir")
    from sonar_jax.train.distributed import maybe_initialize

    maybe_initialize(holders["distributed"].value)
    workdir = holders["workdir"].value
    result = run_training(holders["config"].value, workdir)
    print(f"sonar-jax train: {result.stopped} at step {result.step} (workdir {workdir})",
          file=sys.stderr)
    return result
