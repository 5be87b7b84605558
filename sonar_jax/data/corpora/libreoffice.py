"""LibreOffice UI translations: an N-way corpus of software-domain sentences.

`libreoffice-l10n-<locale>` ships gettext catalogs `usr/lib/libreoffice/program/resource/
<locale>/LC_MESSAGES/<domain>.mo` whose msgid is the English source, so rows align exactly by
(domain, msgctxt\\x04msgid) with English as the pivot. Licence: MPL-2.0.
"""

from __future__ import annotations

import pathlib
from typing import Mapping, Sequence

from sonar_jax.data.corpora import debian
from sonar_jax.data.corpora.align import multiway
from sonar_jax.data.corpora.layout import (DEFAULT_FRACTIONS, ENGLISH, nllb_codes, summary,
                                           write_corpus, write_notices)
from sonar_jax.data.corpora.mo import read_mo
from sonar_jax.data.corpora.twins import write_twins

LOCALES = ("de", "fr", "es", "it", "pt-br", "ru", "uk", "pl", "el", "tr", "id", "eu", "zh-cn")
_RESOURCES = "usr/lib/libreoffice/program/resource"


def read_catalogs(root: pathlib.Path) -> dict[tuple[str, str], str]:
    """{(domain, msgctxt\\x04msgid): translation} of every catalog of an unpacked langpack."""
    files = sorted(root.glob(f"{_RESOURCES}/*/LC_MESSAGES/*.mo"))
    if not files:
        raise FileNotFoundError(f"no {_RESOURCES}/<locale>/LC_MESSAGES/*.mo under {root}")
    catalogs = {}
    for path in files:
        domain = path.stem
        catalogs.update(((domain, key), text) for key, text in read_mo(path).items())
    return catalogs


def build(out_dir: str | pathlib.Path, cache_dir: str | pathlib.Path,
          locales: Sequence[str] | None = None, fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
          limits: Mapping[str, int] | None = None) -> dict:
    """Fetch the langpacks, align, filter, write the FLORES-layout corpus and its xsim++
    negatives; returns the counts."""
    locales = [loc.lower() for loc in (locales or LOCALES)]
    packages = debian.fetch([f"libreoffice-l10n-{loc}" for loc in locales], cache_dir)
    translations = {code: read_catalogs(packages[f"libreoffice-l10n-{loc}"].root)
                    for code, loc in zip(nllb_codes(locales), locales)}
    english = {key: key[1].split("\x04")[-1] for catalog in translations.values()
               for key in catalog}
    rows = list(multiway(english, translations, ENGLISH).values())
    langs = [ENGLISH, *translations]
    splits = write_corpus(out_dir, rows, langs, fractions, limits)
    twins = write_twins(out_dir, splits, rows, langs)
    write_notices(out_dir, "LibreOffice UI translations", list(packages.values()), "MPL-2.0")
    return {**summary(packages, langs, splits), "xsimpp_negatives": twins}
