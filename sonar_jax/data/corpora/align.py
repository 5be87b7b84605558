"""N-way alignment of keyed message catalogs, keeping only sentence-like messages.

Software catalogs (gettext, Fluent, ...) give every message a key shared by all languages, so
rows align exactly by key. Most messages are labels ("Save", "%s items"); a row is kept only
when its English is a sentence and every requested language has a real translation of it.
"""

from __future__ import annotations

import re
from typing import Callable, Hashable, Mapping

# Format placeholders, markup, escapes and URLs: a message holding one is a template, not prose.
_PLACEHOLDER = re.compile(r"%[-+ #0-9.*]*[a-zA-Z]|%\d|\$\(|\$[A-Z]|[{}<>\\\t]|&[a-z]+;|https?:")


def normalize(text: str) -> str:
    """Collapse whitespace and remove `~` mnemonic markers (`~Save` -> `Save`)."""
    return " ".join(text.replace("~", "").split())


def is_plain(text: str) -> bool:
    """Non-empty text with no placeholder, markup or escape."""
    return bool(text) and not _PLACEHOLDER.search(text)


def is_sentence(text: str, min_words: int = 5) -> bool:
    """At least `min_words` words, capitalised, ending in . ? or !, with no placeholder."""
    return (len(text.split()) >= min_words and text[:1].isupper() and text[-1:] in ".?!"
            and is_plain(text))


def multiway(english: Mapping[Hashable, str], translations: Mapping[str, Mapping[Hashable, str]],
             english_code: str, keep: Callable[[str], bool] = is_sentence
             ) -> dict[Hashable, dict[str, str]]:
    """{key: row}, a row being {english_code: en, lang: translation, ...}, for the English
    messages that pass `keep` and are translated (plain, not the English) into every language.

    Keys are visited in sorted order and each English sentence is kept once, from its first key
    that is translated everywhere, so the result does not depend on dict order.
    """
    rows, seen = {}, set()
    for key in sorted(english):
        en = normalize(english[key])
        if en in seen or not keep(en):
            continue
        row = {english_code: en}
        for lang, catalog in translations.items():
            text = normalize(catalog.get(key, ""))
            if text == en or not is_plain(text):
                break
            row[lang] = text
        else:
            rows[key] = row
            seen.add(en)
    return rows
