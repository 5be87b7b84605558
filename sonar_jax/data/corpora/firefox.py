"""Firefox ESR langpacks: an N-way corpus with many scripts (Arabic, Thai, Hangul, Kana, ...).

`firefox-esr-l10n-<locale>` ships one `langpack-<Locale>@firefox-esr.mozilla.org.xpi` (a zip) of
Fluent `.ftl` and `.properties` files. Messages align by (file path with the locale folder
names replaced, message id[.attribute]). en-US lives only inside the browser package, so
British English (`en-gb`) is the English side. Licence: MPL-2.0.
"""

from __future__ import annotations

import pathlib
import re
import zipfile
from typing import Mapping, Sequence

from sonar_jax.data.corpora import debian
from sonar_jax.data.corpora.align import multiway
from sonar_jax.data.corpora.layout import (DEFAULT_FRACTIONS, ENGLISH, nllb_codes, summary,
                                           write_corpus, write_notices)
from sonar_jax.data.corpora.twins import write_twins

ENGLISH_LOCALE = "en-gb"
LOCALES = ("de", "fr", "es-es", "ru", "zh-cn", "ko", "tr", "el", "pl", "uk", "vi", "th", "kk",
           "ja", "ar")
_EXTENSIONS = "usr/lib/firefox-esr/browser/extensions"
_FTL_MESSAGE = re.compile(r"(-?[a-zA-Z][\w-]*) *= *(.*)")
_FTL_ATTRIBUTE = re.compile(r"\s+\.([a-zA-Z][\w-]*) *= *(.*)")
_PROPERTY = re.compile(r"([^=:\s]+)\s*[=:]\s*(.*)")
_UNICODE_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


def parse_ftl(text: str) -> dict[str, str]:
    """{id or id.attribute: value} of a Fluent file; multi-line values joined by spaces.

    Values with placeables (`{ ... }`) are kept verbatim; the sentence filter drops them.
    """
    messages: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            current = None
        elif (attribute := _FTL_ATTRIBUTE.fullmatch(line)) and current:
            current = f"{current.split('.')[0]}.{attribute[1]}"
            messages[current] = attribute[2]
        elif line[0].isspace():
            if current:
                messages[current] = f"{messages[current]} {line.strip()}".strip()
        elif message := _FTL_MESSAGE.fullmatch(line):
            current = message[1]
            messages[current] = message[2]
        else:
            current = None
    return {key: value for key, value in messages.items() if value}


def parse_properties(text: str) -> dict[str, str]:
    """{key: value} of a Java .properties file (\\uXXXX escapes decoded; other escapes kept,
    so the sentence filter drops values that hold them)."""
    messages = {}
    logical = re.sub(r"\\\n[ \t]*", "", text)  # a trailing backslash continues the line
    for line in logical.splitlines():
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        entry = _PROPERTY.fullmatch(line)
        if entry and entry[2]:
            messages[entry[1]] = _UNICODE_ESCAPE.sub(lambda m: chr(int(m[1], 16)), entry[2])
    return messages


def read_langpack(root: pathlib.Path) -> dict[tuple[str, str], str]:
    """{(path with locale folders as `LOC`, id): value} of the langpack unpacked at `root`."""
    packs = sorted(root.glob(f"{_EXTENSIONS}/langpack-*.xpi"))
    if len(packs) != 1:
        raise FileNotFoundError(f"expected one {_EXTENSIONS}/langpack-*.xpi under {root}, "
                                f"found {len(packs)}")
    locale = packs[0].name[len("langpack-"):].split("@")[0]
    messages = {}
    with zipfile.ZipFile(packs[0]) as xpi:
        for name in xpi.namelist():
            parser = {".ftl": parse_ftl, ".properties": parse_properties}.get(
                pathlib.PurePosixPath(name).suffix)
            if parser is None:
                continue
            path = "/".join("LOC" if part == locale else part for part in name.split("/"))
            text = xpi.read(name).decode("utf-8")
            messages.update(((path, key), value) for key, value in parser(text).items())
    return messages


def build(out_dir: str | pathlib.Path, cache_dir: str | pathlib.Path,
          locales: Sequence[str] | None = None, fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
          limits: Mapping[str, int] | None = None) -> dict:
    """Fetch the langpacks, align on en-GB, filter, write the FLORES-layout corpus and its
    xsim++ negatives; returns the counts."""
    locales = [loc.lower() for loc in (locales or LOCALES) if loc.lower() != ENGLISH_LOCALE]
    names = [f"firefox-esr-l10n-{loc}" for loc in (ENGLISH_LOCALE, *locales)]
    packages = debian.fetch(names, cache_dir)
    english = read_langpack(packages[names[0]].root)
    translations = {code: read_langpack(packages[name].root)
                    for code, name in zip(nllb_codes(locales), names[1:])}
    rows = list(multiway(english, translations, ENGLISH).values())
    langs = [ENGLISH, *translations]
    splits = write_corpus(out_dir, rows, langs, fractions, limits)
    twins = write_twins(out_dir, splits, rows, langs)
    write_notices(out_dir, "Firefox ESR langpacks", list(packages.values()), "MPL-2.0")
    return {**summary(packages, langs, splits), "xsimpp_negatives": twins}
