"""Fish Fillets NG: 11-way conversational text, with real Czech and Dutch voice recordings.

`fillets-ng-data` holds `usr/share/games/fillets-ng/script/<level>/dialogs_<lang>.lua`: lines
`dialogId("<id>", "<font>", "<English>")`, followed in the translated files by
`dialogStr("<translation>")`. `fillets-ng-data-cs` / `-nl` hold voice-actor recordings
`sound/<level>/<lang>/<id>.ogg`, so rows align by (level, id) in text and speech alike.
Licence: GPL-2+.

Output: the FLORES-layout text, and for each recorded language `speech/<lang>.<split>.tsv`
(header `audio, transcription, lang, line, id`; `audio` relative to the manifest's folder,
`line` the row of `<split>/*.<split>` the clip says) with the clips copied to `speech/audio/`.
"""

from __future__ import annotations

import pathlib
import re
import shutil
from typing import Mapping, Sequence

from sonar_jax.data.corpora import debian
from sonar_jax.data.corpora.align import is_plain, multiway
from sonar_jax.data.corpora.layout import (DEFAULT_FRACTIONS, ENGLISH, check_sentence,
                                           nllb_code, nllb_codes, summary, write_corpus,
                                           write_notices)

LOCALES = ("cs", "de", "es", "fr", "it", "nl", "pl", "ru", "sv", "bg")
SPEECH_LOCALES = ("cs", "nl")
_GAME = "usr/share/games/fillets-ng"
_STRING = r'"((?:[^"\\]|\\.)*)"'
_DIALOG = re.compile(rf'dialogId\(\s*{_STRING}\s*,\s*{_STRING}\s*,\s*{_STRING}\s*\)'
                     rf'(?:\s*dialogStr\(\s*{_STRING}\s*\))?')


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: " " if m[1] in "nt" else m[1], text)


def read_dialogs(script_dir: pathlib.Path, locale: str) -> dict[tuple[str, str], str]:
    """{(level, dialog id): line} of one language (English from the dialogId itself)."""
    lines = {}
    for path in sorted(script_dir.glob(f"*/dialogs_{locale}.lua")):
        for dialog in _DIALOG.finditer(path.read_text(encoding="utf-8")):
            text = dialog[3] if locale == "en" else dialog[4]
            if text:
                lines[(path.parent.name, dialog[1])] = _unescape(text)
    return lines


def build(out_dir: str | pathlib.Path, cache_dir: str | pathlib.Path,
          locales: Sequence[str] | None = None, fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
          limits: Mapping[str, int] | None = None,
          speech: Sequence[str] = SPEECH_LOCALES) -> dict:
    """Fetch the game data, align the dialogues, write the text and the speech manifests of
    the `speech` locales; returns the counts."""
    locales = [loc for loc in (locales or LOCALES) if loc != "en"]  # as in dialogs_<loc>.lua
    missing = [loc for loc in speech if loc not in locales]
    if missing:
        raise ValueError(f"speech locales {missing} must also be text locales ({locales})")
    names = ["fillets-ng-data", *(f"fillets-ng-data-{loc.lower()}" for loc in speech)]
    packages = debian.fetch(names, cache_dir)
    script_dir = packages["fillets-ng-data"].root / _GAME / "script"
    if not script_dir.is_dir():
        raise FileNotFoundError(f"no {_GAME}/script in the unpacked fillets-ng-data")
    translations = {code: read_dialogs(script_dir, loc)
                    for code, loc in zip(nllb_codes(locales), locales)}
    keyed = multiway(read_dialogs(script_dir, "en"), translations, ENGLISH, keep=is_plain)
    langs = [ENGLISH, *translations]
    splits = write_corpus(out_dir, keyed.values(), langs, fractions, limits)
    key_of = {row[ENGLISH]: key for key, row in keyed.items()}
    clips = {}
    for loc in speech:
        sound = packages[f"fillets-ng-data-{loc.lower()}"].root / _GAME / "sound"
        clips[nllb_code(loc)] = _write_manifests(out_dir, splits, key_of, sound, loc)
    write_notices(out_dir, "Fish Fillets NG dialogues and voice recordings",
                  list(packages.values()), "GPL-2+")
    return {**summary(packages, langs, splits), "clips": clips}


def _write_manifests(out_dir, splits, key_of, sound: pathlib.Path, locale: str) -> dict[str, int]:
    """Copy the recordings of the rows of each split; write `speech/<lang>.<split>.tsv`."""
    lang = nllb_code(locale)
    folder = pathlib.Path(out_dir) / "speech"
    counts = {}
    for split, rows in splits.items():
        table = ["audio\ttranscription\tlang\tline\tid"]
        for line, row in enumerate(rows):
            level, dialog = key_of[row[ENGLISH]]
            clip = sound / level / locale / f"{dialog}.ogg"
            if not clip.is_file():
                continue
            relative = f"audio/{lang}/{level}/{dialog}.ogg"
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(clip, folder / relative)
            text = check_sentence(row[lang], f"{split} row {line} ({lang})")
            table.append(f"{relative}\t{text}\t{lang}\t{line}\t{level}/{dialog}")
        if rows:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{lang}.{split}.tsv").write_text("\n".join(table) + "\n", encoding="utf-8")
        counts[split] = len(table) - 1
    return counts
