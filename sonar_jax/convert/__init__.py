"""Released PyTorch checkpoints -> converted sonar_jax model directories, without torch."""

from __future__ import annotations

import pathlib

from sonar_jax.convert import text
from sonar_jax.convert.torch_pickle import open_checkpoint
from sonar_jax.model_dir import write_model_dir
from sonar_jax.tokenizer import NllbTokenizer

CONVERTERS = {"text_encoder": text.convert_state_dict, "text_decoder": text.convert_state_dict}


def convert_checkpoint(src: str | pathlib.Path, out_dir: str | pathlib.Path, kind: str, *,
                       tokenizer: str | pathlib.Path, langs: list[str] | None = None,
                       num_heads: int = 16, dtype: str = "float32") -> pathlib.Path:
    """Converts a released `.pt` file into a self-contained directory at `out_dir`.

    Nothing is written at `out_dir` unless the whole conversion succeeds.
    """
    if kind not in CONVERTERS:
        raise ValueError(f"unknown --model {kind!r}; expected one of {sorted(CONVERTERS)}")
    nllb = NllbTokenizer(tokenizer, langs)
    with open_checkpoint(src) as ckpt:
        state_dict = text.find_state_dict(ckpt.root, str(src))
        cfg, params = CONVERTERS[kind](state_dict, kind, num_heads=num_heads, dtype=dtype,
                                       source=str(src), vocab_size=nllb.vocab_size)
    return write_model_dir(out_dir, kind, cfg, params, nllb)
