"""SONAR's released asset names (`text_sonar_basic_encoder`, `sonar_speech_encoder_eng`,
`blaser_2_0_qe`, ...) resolved to converted directories in a local model store.

The store is a folder holding converted directories under the asset names: the `store`
argument, else `$SONAR_JAX_MODELS`, else `~/.cache/sonar_jax/models`. Nothing is downloaded:
a name that is not in the store is an error that gives the `sonar-jax convert` command making
it from the released file.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

STORE_ENV = "SONAR_JAX_MODELS"
DEFAULT_STORE = "~/.cache/sonar_jax/models"

_SONAR = "https://dl.fbaipublicfiles.com/SONAR/"
_TOKENIZER = _SONAR + "sentencepiece.source.256000.model"
# The speech encoders of SONAR's cards, by checkpoint generation (`spenc.<generation>.<lang>.pt`).
_SPEECH_V3AP = ("arb cat cym dan deu est fin fra ind ita kor nld pes por ron spa swh tgl tur "
                "uzn").split()
_SPEECH_V5AP = ("asm bel ben bos bul ces cmn guj heb hin hrv jpn kan lao lit lvs mal mar mkd mlt "
                "npi ory pan pol rus slk slv snd srp tam tel tha ukr urd vie yue").split()


@dataclasses.dataclass(frozen=True)
class Asset:
    """A released model: its kind (`sonar_jax.models.registry`), the file it is released as and
    the SentencePiece model text models need."""
    name: str
    kind: str
    checkpoint: str
    tokenizer: str | None = None

    def convert_command(self, out_dir: pathlib.Path) -> str:
        command = f"sonar-jax convert {self.checkpoint.rsplit('/', 1)[-1]} {out_dir} " \
                  f"--model {self.kind}"
        if self.tokenizer is not None:
            command += f" --tokenizer {self.tokenizer.rsplit('/', 1)[-1]}"
        return command


def _released() -> dict[str, Asset]:
    assets = [
        Asset("text_sonar_basic_encoder", "text_encoder", _SONAR + "sonar_text_encoder.pt",
              _TOKENIZER),
        Asset("text_sonar_basic_decoder", "text_decoder", _SONAR + "sonar_text_decoder.pt",
              _TOKENIZER),
        Asset("text_sonar_finetuned_decoder", "text_decoder", _SONAR + "finetuned_decoder.pt",
              _TOKENIZER),
        Asset("sonar_speech_encoder_eng", "speech_encoder", _SONAR + "spenc.eng.pt"),
        Asset("blaser_2_0_ref", "blaser",
              "https://huggingface.co/facebook/blaser-2.0-ref/resolve/main/model.pt"),
        Asset("blaser_2_0_qe", "blaser",
              "https://huggingface.co/facebook/blaser-2.0-qe/resolve/main/model.pt"),
        Asset("sonar_mutox", "mutox", "https://dl.fbaipublicfiles.com/seamless/models/mutox.pt"),
    ]
    for generation, langs in (("v3ap", _SPEECH_V3AP), ("v5ap", _SPEECH_V5AP)):
        assets += [Asset(f"sonar_speech_encoder_{lang}", "speech_encoder",
                         f"{_SONAR}spenc.{generation}.{lang}.pt") for lang in langs]
    return {asset.name: asset for asset in assets}


ASSETS = _released()


def store_dir(store: str | os.PathLike | None = None) -> pathlib.Path:
    """The model store: `store`, else $SONAR_JAX_MODELS, else ~/.cache/sonar_jax/models."""
    chosen = store if store is not None else os.environ.get(STORE_ENV) or DEFAULT_STORE
    return pathlib.Path(chosen).expanduser()


def locate(model: str | os.PathLike, store: str | os.PathLike | None = None) -> pathlib.Path:
    """The converted directory `model` names: an existing path as given, else a released asset
    name found in the store; anything else is an error that says what to do."""
    path = pathlib.Path(model)
    if path.exists():
        return path
    name = os.fspath(model)
    asset = ASSETS.get(name)
    if asset is None:
        import difflib

        close = difflib.get_close_matches(name, ASSETS, n=3) if os.sep not in name else []
        near = f" (released names like it: {', '.join(close)})" if close else ""
        raise FileNotFoundError(f"model {name} not found: it is neither a converted model "
                                f"directory nor a released SONAR asset name{near}")
    folder = store_dir(store)
    if (folder / name).exists():
        return folder / name
    where = f"the model store {folder}" + ("" if store is not None else
                                           f" (set {STORE_ENV} to use another)")
    released = asset.checkpoint + (f" and {asset.tokenizer}" if asset.tokenizer else "")
    raise FileNotFoundError(
        f"{name} is not in {where}; nothing is downloaded: make it from the released files "
        f"({released}) with: {asset.convert_command(folder / name)}")
