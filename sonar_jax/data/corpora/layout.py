"""Writing a multi-way corpus the way FLORES is laid out, and the rules that make it reusable.

- Locale codes of the sources (`de`, `pt-BR`, `zh_CN`, `es-ES`, ...) map to NLLB codes
  (`deu_Latn`, `por_Latn`, `zho_Hans`, ...), the codes the tokenizer and the xsim code expect.
- A row goes to dev / devtest / train by a sha256 of its English sentence alone, so a sentence
  never sits in two splits and keeps its split when the archive adds or drops other sentences.
  With the same fractions, a sentence found in two corpora (LibreOffice UI and help share
  many) gets the same split in both, so training on one and evaluating on the other is clean.
- `OUT/<split>/<lang_Script>.<split>` files are line-aligned (what `FloresSource` reads).
- The source packages' copyright files and licence texts travel with the output.
"""

from __future__ import annotations

import hashlib
import pathlib
import shutil
from typing import Iterable, Mapping, Sequence

from sonar_jax.data.corpora.debian import Package

ENGLISH = "eng_Latn"
SPLITS = ("dev", "devtest", "train")
DEFAULT_FRACTIONS = {"dev": 0.2, "devtest": 0.2, "train": 0.6}

# Language part of a locale -> NLLB code; a locale with a region or script is first looked up
# whole (in _REGIONAL), then by its language part.
_LANGUAGES = {
    "af": "afr_Latn", "am": "amh_Ethi", "ar": "arb_Arab", "as": "asm_Beng", "ast": "ast_Latn",
    "az": "azj_Latn", "be": "bel_Cyrl", "bg": "bul_Cyrl", "bn": "ben_Beng", "bo": "bod_Tibt",
    "bs": "bos_Latn", "ca": "cat_Latn", "ckb": "ckb_Arab", "cs": "ces_Latn", "cy": "cym_Latn",
    "da": "dan_Latn", "de": "deu_Latn", "dz": "dzo_Tibt", "el": "ell_Grek", "en": "eng_Latn",
    "eo": "epo_Latn", "es": "spa_Latn", "et": "est_Latn", "eu": "eus_Latn", "fa": "pes_Arab",
    "fi": "fin_Latn", "fo": "fao_Latn", "fr": "fra_Latn", "fur": "fur_Latn", "ga": "gle_Latn",
    "gd": "gla_Latn", "gl": "glg_Latn", "gn": "grn_Latn", "gu": "guj_Gujr", "he": "heb_Hebr",
    "hi": "hin_Deva", "hr": "hrv_Latn", "ht": "hat_Latn", "hu": "hun_Latn", "hy": "hye_Armn",
    "id": "ind_Latn", "ig": "ibo_Latn", "is": "isl_Latn", "it": "ita_Latn", "ja": "jpn_Jpan",
    "jv": "jav_Latn", "ka": "kat_Geor", "kab": "kab_Latn", "kk": "kaz_Cyrl", "km": "khm_Khmr",
    "kmr": "kmr_Latn", "kn": "kan_Knda", "ko": "kor_Hang", "ks": "kas_Arab", "ky": "kir_Cyrl",
    "lb": "ltz_Latn", "lij": "lij_Latn", "lo": "lao_Laoo", "lt": "lit_Latn", "lv": "lvs_Latn",
    "mai": "mai_Deva", "mk": "mkd_Cyrl", "ml": "mal_Mlym", "mn": "khk_Cyrl", "mni": "mni_Beng",
    "mr": "mar_Deva", "ms": "zsm_Latn", "mt": "mlt_Latn", "my": "mya_Mymr", "nb": "nob_Latn",
    "ne": "npi_Deva", "nl": "nld_Latn", "nn": "nno_Latn", "no": "nob_Latn", "nso": "nso_Latn",
    "oc": "oci_Latn", "om": "gaz_Latn", "or": "ory_Orya", "pa": "pan_Guru", "pl": "pol_Latn",
    "ps": "pbt_Arab", "pt": "por_Latn", "ro": "ron_Latn", "ru": "rus_Cyrl", "rw": "kin_Latn",
    "sa": "san_Deva", "sc": "srd_Latn", "sd": "snd_Arab", "si": "sin_Sinh", "sk": "slk_Latn",
    "sl": "slv_Latn", "sq": "als_Latn", "sr": "srp_Cyrl", "ss": "ssw_Latn", "st": "sot_Latn",
    "sv": "swe_Latn", "sw": "swh_Latn", "szl": "szl_Latn", "ta": "tam_Taml", "te": "tel_Telu",
    "tg": "tgk_Cyrl", "th": "tha_Thai", "tn": "tsn_Latn", "tr": "tur_Latn", "ts": "tso_Latn",
    "tt": "tat_Cyrl", "ug": "uig_Arab", "uk": "ukr_Cyrl", "ur": "urd_Arab", "uz": "uzn_Latn",
    "vec": "vec_Latn", "vi": "vie_Latn", "xh": "xho_Latn", "yo": "yor_Latn", "zu": "zul_Latn",
}
# Locales whose script or variety differs from the language default, or which have no default.
_REGIONAL = {
    "zh-cn": "zho_Hans", "zh-sg": "zho_Hans", "zh-hans": "zho_Hans",
    "zh-tw": "zho_Hant", "zh-hk": "zho_Hant", "zh-hant": "zho_Hant",
    "sr-latn": None, "sr-cyrl": "srp_Cyrl", "ca-valencia": None, "uz-cyrl": None,
}


def nllb_code(locale: str) -> str:
    """The NLLB code of a locale (`pt-BR`, `pt_BR` and `pt-br` are the same locale)."""
    key = locale.strip().lower().replace("_", "-")
    code = _REGIONAL[key] if key in _REGIONAL else _LANGUAGES.get(key.split("-")[0])
    if code is None:
        raise KeyError(f"locale {locale!r} has no NLLB language code (SONAR does not cover this "
                       "language, script or variety); leave it out of the language list")
    return code


def nllb_codes(locales: Sequence[str]) -> list[str]:
    """The NLLB codes of several locales, which must be distinct languages."""
    codes = [nllb_code(locale) for locale in locales]
    for code in set(codes):
        clash = [locale for locale, other in zip(locales, codes) if other == code]
        if len(clash) > 1:
            raise ValueError(f"locales {clash} are all {code}; keep one of them")
    return codes


def _unit(text: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}\x00{text}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split_of(english: str, fractions: Mapping[str, float] = DEFAULT_FRACTIONS) -> str:
    """The split of a row, from its English sentence only (stable under archive updates)."""
    point, edge = _unit(english, "split"), 0.0
    for split, share in fractions.items():
        edge += share
        if point < edge:
            return split
    return next(reversed(fractions))  # rounding at the top end


def assign_splits(rows: Iterable[Mapping[str, str]],
                  fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
                  limits: Mapping[str, int] | None = None) -> dict[str, list[Mapping[str, str]]]:
    """Rows grouped by split, each split ordered by a second hash of the English sentence.

    `limits` caps a split at its first N rows in that order: a stable subset (a sentence in the
    subset stays in it unless other sentences with a lower hash join the archive).
    """
    if abs(sum(fractions.values()) - 1.0) > 1e-9 or min(fractions.values()) < 0:
        raise ValueError(f"split fractions {dict(fractions)} must be >= 0 and sum to 1")
    unknown = set(limits or ()) - set(fractions)
    if unknown:
        raise ValueError(f"limits name splits {sorted(unknown)} that are not among "
                         f"{list(fractions)}")
    grouped: dict[str, list[Mapping[str, str]]] = {split: [] for split in fractions}
    for row in rows:
        grouped[split_of(row[ENGLISH], fractions)].append(row)
    for split, members in grouped.items():
        members.sort(key=lambda row: _unit(row[ENGLISH], "order"))
        if limits and split in limits:
            del members[limits[split]:]
    return grouped


_BREAKS = frozenset("\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")  # str.splitlines splits on these


def check_sentence(text: str, where: str) -> str:
    """A FLORES line: non-empty, no tab, no line break."""
    if not text or text != text.strip() or any(ch in _BREAKS for ch in text):
        raise ValueError(f"{where}: {text!r} cannot be one FLORES line (empty, padded, or holds a "
                         "tab or line break)")
    return text


def write_flores(out_dir: str | pathlib.Path, split: str, langs: Sequence[str],
                 rows: Sequence[Mapping[str, str]]) -> None:
    """`out_dir/<split>/<lang>.<split>` for each language, line i of each being row i."""
    folder = pathlib.Path(out_dir) / split
    folder.mkdir(parents=True, exist_ok=True)
    for lang in langs:
        lines = [check_sentence(row[lang], f"{split} row {i} ({lang})")
                 for i, row in enumerate(rows)]
        (folder / f"{lang}.{split}").write_text("".join(line + "\n" for line in lines),
                                               encoding="utf-8")


def write_notices(out_dir: str | pathlib.Path, corpus: str, packages: Sequence[Package],
                  licence: str) -> None:
    """NOTICE.md (source, packages, versions, licence) and `licenses/`: the packages' Debian
    copyright files (one copy per distinct text) and the licence's full text where the system
    has it (Debian keeps them in /usr/share/common-licenses)."""
    out = pathlib.Path(out_dir)
    licenses = out / "licenses"
    licenses.mkdir(parents=True, exist_ok=True)
    seen: dict[bytes, str] = {}
    lines = [f"# {corpus}", "", f"Derived from these Debian packages (licence {licence}, see the "
             "copyright files in licenses/):", ""]
    for package in packages:
        note = "no copyright file in the package"
        if package.copyright is not None:
            text = package.copyright.read_bytes()
            if text not in seen:
                seen[text] = f"{package.name}.copyright"
                (licenses / seen[text]).write_bytes(text)
            note = f"licenses/{seen[text]}"
        lines.append(f"- `{package.name}` {package.version} ({note})")
    common = pathlib.Path("/usr/share/common-licenses") / licence.rstrip("+")
    if common.is_file():
        shutil.copyfile(common, licenses / licence.rstrip("+"))
        lines += ["", f"The full {licence} text is in licenses/{licence.rstrip('+')}."]
    (out / "NOTICE.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_corpus(out_dir: str | pathlib.Path, rows: Iterable[Mapping[str, str]],
                 langs: Sequence[str], fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
                 limits: Mapping[str, int] | None = None) -> dict[str, list[Mapping[str, str]]]:
    """Split the rows and write every non-empty split; returns the rows of each split."""
    grouped = assign_splits(rows, fractions, limits)
    for split, members in grouped.items():
        if members:
            write_flores(out_dir, split, langs, members)
    return grouped


def summary(packages: Mapping[str, Package], langs: Sequence[str],
            splits: Mapping[str, Sequence]) -> dict:
    """What a builder reports (and build_corpus saves as corpus.json)."""
    return {"packages": {p.name: p.version for p in packages.values()}, "langs": list(langs),
            "rows": {split: len(rows) for split, rows in splits.items()}}
