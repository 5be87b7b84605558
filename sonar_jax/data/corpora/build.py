"""`build_corpus`: the one entry point the CLI (`sonar-jax data build`) calls."""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Callable, Mapping, Sequence

from sonar_jax.data.corpora import espeak, fillets, firefox, libreoffice, lo_help

BUILDERS: dict[str, Callable[..., dict]] = {
    "libreoffice": libreoffice.build,
    "firefox": firefox.build,
    "fillets": fillets.build,
    "lo-help": lo_help.build,
    "espeak": espeak.build,
}


def build_corpus(name: str, out_dir: str | pathlib.Path, cache_dir: str | pathlib.Path,
                 langs: Sequence[str] | None = None, *,
                 fractions: Mapping[str, float] | None = None,
                 limits: Mapping[str, int] | None = None, overwrite: bool = False,
                 **options) -> dict:
    """Build corpus `name` into `out_dir` (downloads are cached in `cache_dir`).

    `langs`: the source's locale codes, e.g. `pt-br` (espeak: NLLB codes; default: the
    builder's set); `fractions`: the share of rows per split (default dev 0.2, devtest 0.2,
    train 0.6); `limits`: at most this many rows per split, a stable subset (how the committed
    sample is cut). `options` go to the builder: `speech` (fillets: locales with recordings),
    `source` and `workers` (espeak). Returns the build summary, also saved as
    `out_dir/corpus.json`.
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown corpus {name!r}; choose from {', '.join(sorted(BUILDERS))}")
    out = pathlib.Path(out_dir)
    if "source" in options:
        source = pathlib.Path(options["source"]).resolve()
        if out.resolve() in (source, *source.parents):
            raise ValueError(f"the output {out} must not hold the source corpus {source}")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True "
                                  "(--overwrite) to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if fractions is not None:
        options["fractions"] = dict(fractions)
    summary = BUILDERS[name](out, cache_dir, langs, limits=limits, **options)
    summary = {"corpus": name, **summary}
    (out / "corpus.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n",
                                     encoding="utf-8")
    return summary


# The committed sample (data/sample): every language of the two UI corpora, small enough to
# commit (about 3 MB) and to train and evaluate a small text model offline.
SAMPLE_LIMITS = {
    "libreoffice": {"dev": 200, "devtest": 200, "train": 700},
    "firefox": {"dev": 100, "devtest": 100, "train": 0},
}


def build_sample(out_dir: str | pathlib.Path, cache_dir: str | pathlib.Path) -> dict[str, dict]:
    """(Re)build the committed sample: `out_dir/<corpus>/` for each corpus of SAMPLE_LIMITS."""
    return {name: build_corpus(name, pathlib.Path(out_dir) / name, cache_dir, limits=limits,
                               overwrite=True)
            for name, limits in SAMPLE_LIMITS.items()}
