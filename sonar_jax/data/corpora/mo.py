"""Reading compiled gettext catalogs (.mo) without gettext's private state.

`gettext.GNUTranslations` keeps its messages in a private `_catalog`; parsing the documented
file format directly is as short and keeps message contexts (`msgctxt\\x04msgid`) as keys.
"""

from __future__ import annotations

import pathlib
import re
import struct

_MAGIC = 0x950412DE


def read_mo(path: str | pathlib.Path) -> dict[str, str]:
    """{msgid or "msgctxt\\x04msgid": translation} of a .mo file, singular messages only
    (plural entries and the header are left out; untranslated entries have no row)."""
    data = pathlib.Path(path).read_bytes()
    for order in "<>":
        if len(data) >= 20 and struct.unpack(order + "I", data[:4])[0] == _MAGIC:
            break
    else:
        raise ValueError(f"{path} is not a gettext .mo file (bad magic number)")
    revision, count, originals, translations = struct.unpack(order + "4I", data[4:20])
    if revision >> 16 > 1:
        raise ValueError(f"{path}: unsupported .mo major revision {revision >> 16}")

    def strings(table: int) -> list[bytes]:
        entries = list(struct.iter_unpack(order + "2I", data[table:table + 8 * count]))
        if len(entries) != count or any(offset + length > len(data) for length, offset in entries):
            raise ValueError(f"{path} is truncated (its string table runs past the end)")
        return [data[offset:offset + length] for length, offset in entries]

    pairs = list(zip(strings(originals), strings(translations)))
    charset = "utf-8"
    for original, translated in pairs:
        if original == b"":
            found = re.search(rb"charset=([\w.-]+)", translated)
            charset = found.group(1).decode("ascii") if found else charset
    catalog = {}
    for original, translated in pairs:
        if original and b"\x00" not in original and translated:
            catalog[original.decode(charset)] = translated.decode(charset)
    return catalog
