"""Released PyTorch checkpoints -> converted sonar_jax model directories, without torch."""

from __future__ import annotations

import pathlib

from sonar_jax.convert import heads, speech, text
from sonar_jax.convert.torch_pickle import open_checkpoint
from sonar_jax.errors import UsageError
from sonar_jax.model_dir import write_model_dir
from sonar_jax.models import registry
from sonar_jax.outputs import check_existing_directory
from sonar_jax.tokenizer import NllbTokenizer


def convert_checkpoint(src: str | pathlib.Path, out_dir: str | pathlib.Path, kind: str, *,
                       tokenizer: str | pathlib.Path | None = None,
                       langs: list[str] | None = None, num_heads: int = 16,
                       dtype: str = "float32", embedding_dim: int | None = None,
                       overwrite: bool = False) -> pathlib.Path:
    """Converts a released `.pt` file into a self-contained directory at `out_dir`.

    Text models need their SentencePiece model (`tokenizer`); speech encoders and the scoring
    heads (BLASER, MuTox) have none. Released speech files also hold training state (optimizer,
    config objects): such objects are skipped without being imported, and only the model's
    tensors are read. `embedding_dim` settles a BLASER file whose input width fits both its
    forms (`heads.blaser_input_form`). Nothing is written at `out_dir` unless the whole
    conversion succeeds; an existing `out_dir` is refused before any reading, or with
    `overwrite` replaced once the new directory is complete.
    """
    check_existing_directory(out_dir, overwrite)
    if kind not in registry.KINDS:
        raise UsageError(f"unknown --model {kind!r}; expected one of {list(registry.KINDS)}")
    if embedding_dim is not None and kind != "blaser":
        raise UsageError("--embedding-dim is for --model blaser only")
    if not registry.KINDS[kind].has_tokenizer:
        if tokenizer is not None or langs is not None:
            raise UsageError(f"a {kind} has no tokenizer (it reads "
                             f"{'audio' if kind == 'speech_encoder' else 'embeddings'}): drop "
                             "--tokenizer/--langs (the text model used with it brings its own)")
        with open_checkpoint(src, skip_unknown=True) as ckpt:
            state_dict = text.find_state_dict(ckpt.root, str(src))
            if kind == "speech_encoder":
                cfg, params = speech.convert_state_dict(state_dict, num_heads=num_heads,
                                                        dtype=dtype, source=str(src))
            else:
                cfg, params = heads.convert_state_dict(state_dict, kind,
                                                       embedding_dim=embedding_dim, dtype=dtype,
                                                       source=str(src))
        return write_model_dir(out_dir, kind, cfg, params, None, overwrite)
    if tokenizer is None:
        raise UsageError(f"a {kind} needs its SentencePiece model: pass --tokenizer")
    nllb = NllbTokenizer(tokenizer, langs)
    with open_checkpoint(src) as ckpt:
        state_dict = text.find_state_dict(ckpt.root, str(src))
        cfg, params = text.convert_state_dict(state_dict, kind, num_heads=num_heads,
                                              dtype=dtype, source=str(src),
                                              vocab_size=nllb.vocab_size)
    return write_model_dir(out_dir, kind, cfg, params, nllb, overwrite)
