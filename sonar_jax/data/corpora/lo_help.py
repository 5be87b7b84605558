"""LibreOffice help: paragraph-aligned bitext, larger than the UI set (training data).

`libreoffice-help-<locale>` ships about 2,500 HTML pages `usr/share/libreoffice/help/<Locale>/
text/**.html` whose paragraphs carry ids stable across languages (`<p id="par_id3156410">`),
so rows align by (page, id, occurrence). Untranslated paragraphs stay in English and are
dropped. Licence: MPL-2.0.
"""

from __future__ import annotations

import html.parser
import pathlib
from typing import Mapping, Sequence

from sonar_jax.data.corpora import debian
from sonar_jax.data.corpora.align import is_plain, multiway
from sonar_jax.data.corpora.layout import (DEFAULT_FRACTIONS, ENGLISH, nllb_codes, summary,
                                           write_corpus, write_notices)

ENGLISH_LOCALE = "en-us"
LOCALES = ("de", "fr", "es", "ru", "ja", "zh-cn", "ko", "tr", "vi")
_HELP = "usr/share/libreoffice/help"


class _Paragraphs(html.parser.HTMLParser):
    """Text of every `<p id=...>`, markup removed, keyed by (id, occurrence on the page)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found: dict[tuple[str, int], str] = {}
        self._id, self._text, self._seen = None, [], {}

    def handle_starttag(self, tag, attrs):
        ident = dict(attrs).get("id")
        if tag == "p" and ident:
            self._seen[ident] = self._seen.get(ident, -1) + 1
            self._id, self._text = (ident, self._seen[ident]), []

    def handle_endtag(self, tag):
        if tag == "p" and self._id is not None:
            self.found[self._id] = "".join(self._text)
            self._id = None

    def handle_data(self, data):
        if self._id is not None:
            self._text.append(data)


def read_help(root: pathlib.Path) -> dict[tuple[str, str, int], str]:
    """{(page path under the locale folder, paragraph id, occurrence): text} of one language."""
    folders = [p for p in (root / _HELP).glob("*") if (p / "text").is_dir()]
    if len(folders) != 1:
        raise FileNotFoundError(f"expected one {_HELP}/<locale>/text folder under {root}")
    paragraphs = {}
    for page in sorted((folders[0] / "text").rglob("*.html")):
        parser = _Paragraphs()
        parser.feed(page.read_text(encoding="utf-8"))
        name = page.relative_to(folders[0]).as_posix()
        paragraphs.update(((name, *key), text) for key, text in parser.found.items())
    return paragraphs


def _paragraph(text: str, min_words: int = 5) -> bool:
    return len(text.split()) >= min_words and is_plain(text)


def build(out_dir: str | pathlib.Path, cache_dir: str | pathlib.Path,
          locales: Sequence[str] | None = None, fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
          limits: Mapping[str, int] | None = None) -> dict:
    """Fetch the help packs, align paragraphs on en-US, write the FLORES-layout corpus."""
    locales = [loc.lower() for loc in (locales or LOCALES) if loc.lower() != ENGLISH_LOCALE]
    names = [f"libreoffice-help-{loc}" for loc in (ENGLISH_LOCALE, *locales)]
    packages = debian.fetch(names, cache_dir)
    english = read_help(packages[names[0]].root)
    translations = {code: read_help(packages[name].root)
                    for code, name in zip(nllb_codes(locales), names[1:])}
    rows = list(multiway(english, translations, ENGLISH, keep=_paragraph).values())
    langs = [ENGLISH, *translations]
    splits = write_corpus(out_dir, rows, langs, fractions, limits)
    write_notices(out_dir, "LibreOffice help", list(packages.values()), "MPL-2.0")
    return summary(packages, langs, splits)
