"""Converted model directories: self-contained, written atomically, loaded without torch.

Layout:
    config.json        {"format": 2, "kind": "text_encoder"|"text_decoder"|"speech_encoder"|
                        "blaser"|"mutox", "model": {...}}
    params/            orbax parameter tree (sonar_jax.checkpoint)
    tokenizer.model    the SentencePiece model (text models only)
    langs.txt          the language list, one code a line (its order fixes the language ids;
                       text models only: a speech encoder reads audio, not tokens, and the
                       scoring heads read embeddings)

Format 2 stores each attention's q/k/v projections fused (`qkv_proj`, see
`sonar_jax.models.qkv_layout`); format-1 directories, which hold them apart, are fused when loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Iterator, Sequence

from flax import nnx

from sonar_jax import checkpoint
from sonar_jax.models import qkv_layout, registry
from sonar_jax.tokenizer import NllbTokenizer

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)  # 1: q/k/v projections stored apart
CONFIG_FILE, PARAMS_DIR, SPM_FILE, LANGS_FILE = "config.json", "params", "tokenizer.model", "langs.txt"


@contextlib.contextmanager
def atomic_directory(out_dir: str | pathlib.Path) -> Iterator[pathlib.Path]:
    """Yields a temporary sibling of `out_dir` that is renamed to it only if the block succeeds.

    An interrupted or failed write leaves nothing at `out_dir` (the temporary folder is removed),
    and an existing `out_dir` is never touched.
    """
    out_dir = pathlib.Path(out_dir).absolute()
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; choose a new output directory or "
                              "remove it first")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield tmp
        os.rename(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_model_dir(out_dir: str | pathlib.Path, kind: str,
                    cfg: Any, params: Any, tokenizer: NllbTokenizer | None) -> pathlib.Path:
    """Writes a converted model directory; a text model's tokenizer must match its vocabulary,
    other kinds have none."""
    if (tokenizer is None) == registry.kind(kind).has_tokenizer:
        raise ValueError(f"a {kind} directory " + ("has no tokenizer" if tokenizer is not None
                                                    else "needs its tokenizer"))
    if tokenizer is not None and tokenizer.vocab_size != cfg.vocab_size:
        raise ValueError(
            f"the tokenizer ({tokenizer.spm_path.name} with {len(tokenizer.langs)} languages) has "
            f"{tokenizer.vocab_size} ids but the model has {cfg.vocab_size} embedding rows; pass "
            "the SentencePiece model and language list this checkpoint was trained with")
    with atomic_directory(out_dir) as tmp:
        checkpoint.save_params(tmp / PARAMS_DIR, params)
        if tokenizer is not None:
            shutil.copyfile(tokenizer.spm_path, tmp / SPM_FILE)
            (tmp / LANGS_FILE).write_text("\n".join(tokenizer.langs) + "\n")
        config = {"format": FORMAT_VERSION, "kind": kind, "model": cfg.to_dict()}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return pathlib.Path(out_dir)


def _read_config_file(model_dir: str | pathlib.Path) -> dict:
    path = pathlib.Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a converted sonar_jax model directory (no "
                                f"{CONFIG_FILE}); make one with `sonar-jax convert`")
    config = json.loads(path.read_text())
    if config.get("format") not in READABLE_FORMATS:
        raise ValueError(f"{path}: format {config.get('format')!r} is not supported "
                         f"(this sonar_jax reads formats {READABLE_FORMATS})")
    if config.get("kind") not in registry.KINDS:
        raise ValueError(f"{path}: unknown model kind {config.get('kind')!r}; this sonar_jax "
                         f"reads {sorted(registry.KINDS)}")
    return config


def read_config(model_dir: str | pathlib.Path
                ) -> tuple[str, Any]:
    """(kind, config) of a converted directory, with errors that say what is wrong."""
    config = _read_config_file(model_dir)
    return config["kind"], registry.KINDS[config["kind"]].config.from_dict(config["model"])


def load_params(model_dir: str | pathlib.Path, *, dtype: str | None = None,
                sharding: Any = None) -> dict:
    """The parameter tree of a converted directory in the current layout (format-1 directories
    get their q/k/v projections fused); dtype and sharding as in `checkpoint.restore_params`."""
    params_dir = pathlib.Path(model_dir) / PARAMS_DIR
    if _read_config_file(model_dir)["format"] != 1:
        return checkpoint.restore_params(params_dir, dtype=dtype, sharding=sharding)
    import jax
    import jax.numpy as jnp

    params = qkv_layout.fuse_tree(checkpoint.restore_params(params_dir, dtype=dtype), jnp)
    if sharding is None:
        return params
    if callable(sharding):
        return jax.tree.map(
            lambda x: jax.device_put(x, sharding(jax.ShapeDtypeStruct(x.shape, x.dtype))), params)
    return jax.device_put(params, sharding)


def load_tokenizer(model_dir: str | pathlib.Path) -> NllbTokenizer:
    model_dir = pathlib.Path(model_dir)
    if not (model_dir / SPM_FILE).is_file():
        raise FileNotFoundError(f"{model_dir} has no {SPM_FILE}: it is not a converted text "
                                "model (speech encoders have no tokenizer; pass the decoder's)")
    return NllbTokenizer(model_dir / SPM_FILE, (model_dir / LANGS_FILE).read_text().split())


def load_model(model_dir: str | pathlib.Path, *, expected_kind: str | None = None,
               dtype: str | None = None, param_dtype: str | None = None,
               sharding: Any = None, **config_overrides: Any) -> nnx.Module:
    """Builds the model of a converted directory and fills it with the saved parameters.

    dtype: compute dtype (default: as saved); param_dtype: cast parameters while restoring;
    sharding: as in `checkpoint.restore_params`. No random initialisation happens: the module is
    built abstractly and its state replaced by the restored arrays.
    """
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
