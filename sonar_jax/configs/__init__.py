"""The package's configs: model architectures by name (`architectures`), the sections every
training recipe shares (`sections`), and one ml_collections config per recipe, named as the
recipe is everywhere (config kind, `sonar_jax.train.<recipe>` module, `sonar-jax train
--config=<recipe>:<variant>`):

    text               the text multi-loss objective (paper §3.1)
    decoder_finetune   the decoder on random interpolations of a frozen encoder's embeddings
    speech_distill     a speech encoder distilled from a frozen text encoder (paper §3.2)
"""

from __future__ import annotations

import importlib
import pathlib

RECIPES = ("text", "decoder_finetune", "speech_distill")
_HERE = pathlib.Path(__file__).resolve().parent
# The checkout this package sits in, when it is one (an editable install or a source tree).
_CHECKOUT = _HERE.parents[1]


def get_config(recipe: str, variant: str = "basic"):
    """`get_config(variant)` of a packaged recipe."""
    return importlib.import_module(f"sonar_jax.configs.{check_recipe(recipe)}").get_config(variant)


def check_recipe(recipe: str) -> str:
    if recipe not in RECIPES:
        raise ValueError(f"unknown training recipe {recipe!r}; expected one of {list(RECIPES)}")
    return recipe


def config_file(spec: str) -> str:
    """A `--config` value with a packaged recipe name ("text:tiny") turned into its file path
    ("…/sonar_jax/configs/text.py:tiny"); a path to a config file of one's own is kept."""
    name, sep, variant = spec.partition(":")
    if name in RECIPES:
        return f"{_HERE / name}.py{sep}{variant}"
    if not pathlib.Path(name).is_file():
        raise FileNotFoundError(f"no config file or recipe {name!r}: give a recipe name "
                                f"({', '.join(RECIPES)}, e.g. --config=text:tiny) or the path "
                                "of a config file that defines get_config(variant)")
    return spec


def sample_path(relative: str) -> str:
    """A path of the repository's committed sample data (`data/sample/...`, `tests/fixtures/...`),
    which the small recipe variants train on: inside the checkout that holds this package, or
    relative to the working directory when the package is installed elsewhere (then pass the
    data paths as --config overrides)."""
    inside = _CHECKOUT / relative
    return str(inside) if inside.exists() else relative
