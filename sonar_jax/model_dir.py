"""Converted model directories: self-contained, written atomically, loaded without torch.

Layout:
    config.json        {"format": 2, "kind": "text_encoder"|"text_decoder"|"speech_encoder"|
                        "blaser"|"mutox", "model": {...}}
    params/            orbax parameter tree (sonar_jax.checkpoint)
    tokenizer.model    the SentencePiece model (text models only)
    langs.txt          the language list, one code a line (its order fixes the language ids;
                       text models only: a speech encoder reads audio, not tokens, and the
                       scoring heads read embeddings)

`config.json` also lists every other file with its size ("files"), so a truncated or missing
file is named when the directory is opened, before anything reads it. Text, speech and scoring
models are also found by their released SONAR names in a local model store
(`sonar_jax.model_store`). Format 2 stores each attention's q/k/v projections fused (`qkv_proj`, see
`sonar_jax.models.qkv_layout`); format-1 directories, which hold them apart, are fused when loaded.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any, Sequence

from flax import nnx

from sonar_jax import checkpoint
from sonar_jax.model_store import locate
from sonar_jax.models import qkv_layout, registry
from sonar_jax.outputs import atomic_directory
from sonar_jax.tokenizer import NllbTokenizer

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)  # 1: q/k/v projections stored apart
CONFIG_FILE, PARAMS_DIR, SPM_FILE, LANGS_FILE = "config.json", "params", "tokenizer.model", "langs.txt"


def write_model_dir(out_dir: str | pathlib.Path, kind: str, cfg: Any, params: Any,
                    tokenizer: NllbTokenizer | None, overwrite: bool = False) -> pathlib.Path:
    """Writes a converted model directory (replacing one only with `overwrite`, once the new one
    is complete); a text model's tokenizer must match its vocabulary, other kinds have none."""
    if (tokenizer is None) == registry.kind(kind).has_tokenizer:
        raise ValueError(f"a {kind} directory " + ("has no tokenizer" if tokenizer is not None
                                                    else "needs its tokenizer"))
    if tokenizer is not None:
        check_vocabulary(tokenizer, cfg.vocab_size, f"being written to {out_dir}")
    with atomic_directory(out_dir, overwrite) as tmp:
        checkpoint.save_params(tmp / PARAMS_DIR, params)
        if tokenizer is not None:
            shutil.copyfile(tokenizer.spm_path, tmp / SPM_FILE)
            (tmp / LANGS_FILE).write_text("\n".join(tokenizer.langs) + "\n")
        files = {path.relative_to(tmp).as_posix(): path.stat().st_size
                 for path in sorted(tmp.rglob("*")) if path.is_file()}
        config = {"format": FORMAT_VERSION, "kind": kind, "model": cfg.to_dict(), "files": files}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return pathlib.Path(out_dir)


def _read_config_file(model_dir: pathlib.Path) -> dict:
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a converted sonar_jax model directory (no "
                                f"{CONFIG_FILE}); make one with `sonar-jax convert`")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}): {_DAMAGED}") from None
    if not isinstance(config, dict) or config.get("format") not in READABLE_FORMATS:
        found = config.get("format") if isinstance(config, dict) else config
        raise ValueError(f"{path}: format {found!r} is not supported "
                         f"(this sonar_jax reads formats {READABLE_FORMATS})")
    if config.get("kind") not in registry.KINDS:
        raise ValueError(f"{path}: unknown model kind {config.get('kind')!r}; this sonar_jax "
                         f"reads {sorted(registry.KINDS)}")
    _check_files(model_dir, config.get("files", {}))
    return config


_DAMAGED = "the directory is incomplete or damaged; convert the model again"


def _check_files(model_dir: pathlib.Path, sizes: dict[str, int]) -> None:
    """Every file the directory was written with, at its written size (directories converted
    before sizes were recorded have none to check)."""
    for name, size in sizes.items():
        path = model_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{model_dir}: {name} is missing; {_DAMAGED}")
        if path.stat().st_size != size:
            raise ValueError(f"{model_dir}: {name} has {path.stat().st_size} bytes, not the "
                             f"{size} it was written with; {_DAMAGED}")


def read_config(model_dir: str | pathlib.Path) -> tuple[str, Any]:
    """(kind, config) of a converted directory (a path or a released name in the model store),
    with errors that say what is wrong."""
    model_dir = locate(model_dir)
    config = _read_config_file(model_dir)
    config_class = registry.KINDS[config["kind"]].config
    try:
        return config["kind"], config_class.from_dict(config["model"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{model_dir / CONFIG_FILE}: the model settings are not a valid "
                         f"{config_class.__name__} ({error}); {_DAMAGED}") from None


def load_params(model_dir: str | pathlib.Path, *, dtype: str | None = None,
                sharding: Any = None) -> dict:
    """The parameter tree of a converted directory in the current layout (format-1 directories
    get their q/k/v projections fused); dtype and sharding as in `checkpoint.restore_params`."""
    model_dir = locate(model_dir)
    fused = _read_config_file(model_dir)["format"] != 1
    try:
        params = checkpoint.restore_params(model_dir / PARAMS_DIR, dtype=dtype,
                                           sharding=sharding if fused else None)
    except FileNotFoundError:
        raise
    except Exception as error:  # orbax / TensorStore: a damaged directory of an older format
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        reason = reason.split(" See full TensorStore details")[0]
        raise ValueError(f"{model_dir}: cannot read the parameters ({reason[:200]}); "
                         f"{_DAMAGED}") from error
    if fused:
        return params
    import jax
    import jax.numpy as jnp

    params = qkv_layout.fuse_tree(params, jnp)
    if sharding is None:
        return params
    if callable(sharding):
        return jax.tree.map(
            lambda x: jax.device_put(x, sharding(jax.ShapeDtypeStruct(x.shape, x.dtype))), params)
    return jax.device_put(params, sharding)


def load_tokenizer(model_dir: str | pathlib.Path) -> NllbTokenizer:
    """The tokenizer of a converted text model, checked against the model's vocabulary."""
    model_dir = locate(model_dir)
    kind, cfg = read_config(model_dir)
    if not registry.kind(kind).has_tokenizer:
        raise ValueError(f"{model_dir} holds a {kind}, which has no tokenizer; pass a text "
                         "model's directory (for speech to text: the decoder's)")
    for name in (SPM_FILE, LANGS_FILE):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"{model_dir}: {name} is missing; {_DAMAGED}")
    tokenizer = NllbTokenizer(model_dir / SPM_FILE, (model_dir / LANGS_FILE).read_text().split())
    check_vocabulary(tokenizer, cfg.vocab_size, str(model_dir))
    return tokenizer


def check_vocabulary(tokenizer: NllbTokenizer, vocab_size: int, model: str) -> None:
    """Refuses a tokenizer whose ids do not fit the model's embedding table one to one."""
    if tokenizer.vocab_size != vocab_size:
        raise ValueError(
            f"the tokenizer ({tokenizer.spm_path} with {len(tokenizer.langs)} languages) has "
            f"{tokenizer.vocab_size} ids but the model {model} has {vocab_size} embedding rows; "
            "pass the SentencePiece model and language list it was trained with")


def load_model(model_dir: str | pathlib.Path, *, expected_kind: str | None = None,
               dtype: str | None = None, param_dtype: str | None = None,
               sharding: Any = None, **config_overrides: Any) -> nnx.Module:
    """Builds the model of a converted directory and fills it with the saved parameters.

    dtype: compute dtype (default: as saved); param_dtype: cast parameters while restoring;
    sharding: as in `checkpoint.restore_params`. No random initialisation happens: the module is
    built abstractly and its state replaced by the restored arrays.
    """
    model_dir = locate(model_dir)
    kind, cfg = read_config(model_dir)
    if expected_kind is not None and kind != expected_kind:
        raise ValueError(f"{model_dir} holds a {kind}, but a {expected_kind} was asked for")
    overrides = dict(config_overrides)
    if dtype is not None:
        overrides["dtype"] = dtype
    if param_dtype is not None:
        overrides["param_dtype"] = param_dtype
    cfg = cfg.replace(**overrides)
    return registry.bind(kind, cfg, load_params(model_dir, dtype=cfg.param_dtype,
                                                sharding=sharding))


def langs_from_arg(langs: str | Sequence[str] | None) -> list[str] | None:
    """`--langs` value: None (the released list), 'a,b,c', or a file with one code a line."""
    if langs is None or not isinstance(langs, str):
        return None if langs is None else list(langs)
    if os.path.isfile(langs):
        return pathlib.Path(langs).read_text().split()
    return [code.strip() for code in langs.split(",") if code.strip()]
