"""Released PyTorch checkpoints -> converted sonar_jax model directories, without torch."""

from __future__ import annotations

import pathlib

from sonar_jax.convert import speech, text
from sonar_jax.convert.torch_pickle import open_checkpoint
from sonar_jax.model_dir import write_model_dir
from sonar_jax.tokenizer import NllbTokenizer

KINDS = ("text_encoder", "text_decoder", "speech_encoder")


def convert_checkpoint(src: str | pathlib.Path, out_dir: str | pathlib.Path, kind: str, *,
                       tokenizer: str | pathlib.Path | None = None,
                       langs: list[str] | None = None, num_heads: int = 16,
                       dtype: str = "float32") -> pathlib.Path:
    """Converts a released `.pt` file into a self-contained directory at `out_dir`.

    Text models need their SentencePiece model (`tokenizer`); speech encoders have none. Released
    speech files also hold training state (optimizer, config objects): those objects are skipped
    without being imported, and only the model's tensors are read. Nothing is written at
    `out_dir` unless the whole conversion succeeds.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown --model {kind!r}; expected one of {list(KINDS)}")
    if kind == "speech_encoder":
        if tokenizer is not None or langs is not None:
            raise ValueError("a speech encoder has no tokenizer: drop --tokenizer/--langs (the "
                             "text decoder used for speech-to-text brings its own)")
        with open_checkpoint(src, skip_unknown=True) as ckpt:
            state_dict = text.find_state_dict(ckpt.root, str(src))
            cfg, params = speech.convert_state_dict(state_dict, num_heads=num_heads, dtype=dtype,
                                                    source=str(src))
        return write_model_dir(out_dir, kind, cfg, params, None)
    if tokenizer is None:
        raise ValueError(f"a {kind} needs its SentencePiece model: pass --tokenizer")
    nllb = NllbTokenizer(tokenizer, langs)
    with open_checkpoint(src) as ckpt:
        state_dict = text.find_state_dict(ckpt.root, str(src))
        cfg, params = text.convert_state_dict(state_dict, kind, num_heads=num_heads,
                                              dtype=dtype, source=str(src),
                                              vocab_size=nllb.vocab_size)
    return write_model_dir(out_dir, kind, cfg, params, nllb)
