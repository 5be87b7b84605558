"""Corpus builders: .mo parsing, key alignment, the sentence filter, hash splits, locale codes,
near twins, the FLORES layout (read back by FloresSource) and the committed sample's integrity.

Offline: catalogs and langpacks are built in tmp_path and `debian.fetch` is replaced by a
function returning them. The slow tests download the real packages with apt-get.
"""

import gettext
import json
import pathlib
import wave
import random
import shutil
import struct
import zipfile

import pytest

from sonar_jax.data.text import FloresSource
from sonar_jax.data.corpora import build, debian, espeak, firefox, layout, lo_help, twins
from sonar_jax.data.corpora.align import is_sentence, multiway, normalize
from sonar_jax.data.corpora.mo import read_mo

SAMPLE = pathlib.Path(__file__).parent.parent / "data" / "sample"
NLLB = set((pathlib.Path(layout.__file__).parent.parent.parent / "assets" / "nllb_langs.txt")
           .read_text().split())


def write_mo(path: pathlib.Path, messages: dict[str, str], order: str = "<") -> None:
    """A .mo file in the GNU layout (sorted originals, then translations, then the strings)."""
    keys = sorted(messages)
    originals = [k.encode() for k in keys]
    translations = [messages[k].encode() for k in keys]
    start = 28 + 16 * len(keys)
    table, blob = [], b""
    for item in originals + translations:
        table.append((len(item), start + len(blob)))
        blob += item + b"\x00"
    header = struct.pack(order + "7I", 0x950412DE, 0, len(keys), 28, 28 + 8 * len(keys), 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + b"".join(struct.pack(order + "2I", *e) for e in table) + blob)


MO_MESSAGES = {
    "": "Content-Type: text/plain; charset=UTF-8\n",
    "Save the document.": "Speichert das Dokument.",
    "menu\x04Open": "Öffnen",
    "One file\x00%d files": "Eine Datei\x00%d Dateien",
    "Untranslated message.": "",
}


@pytest.mark.parametrize("order", ["<", ">"])
def test_read_mo(tmp_path, order):
    path = tmp_path / "x.mo"
    write_mo(path, MO_MESSAGES, order)
    assert read_mo(path) == {"Save the document.": "Speichert das Dokument.",
                             "menu\x04Open": "Öffnen"}
    if order == "<":  # the writer makes files the standard library accepts too
        with path.open("rb") as f:
            assert gettext.GNUTranslations(f).pgettext("menu", "Open") == "Öffnen"


def test_read_mo_rejects_other_files(tmp_path):
    (tmp_path / "bad.mo").write_bytes(b"not a catalog at all")
    with pytest.raises(ValueError, match="not a gettext .mo"):
        read_mo(tmp_path / "bad.mo")
    write_mo(tmp_path / "cut.mo", MO_MESSAGES)
    (tmp_path / "cut.mo").write_bytes((tmp_path / "cut.mo").read_bytes()[:60])
    with pytest.raises(ValueError, match="truncated"):
        read_mo(tmp_path / "cut.mo")


@pytest.mark.parametrize("text, keep", [
    ("Returns the inverse hyperbolic cosine of a number.", True),
    ("Are you sure you want to continue?", True),
    ("Save the document", False),                        # no final punctuation
    ("returns the cosine of a number.", False),          # not capitalised
    ("Too short here.", False),                          # under five words
    ("Deletes %s from the current list.", False),        # printf placeholder
    ("Deletes $(ARG1) from the current list.", False),   # LibreOffice placeholder
    ("Click <b>here</b> to open the file.", False),      # markup
    ("See https://example.org for all the details.", False),
    ("Shows { -brand-name } in the main window.", False),  # Fluent placeable
])
def test_sentence_filter(text, keep):
    assert is_sentence(text) is keep


def test_normalize_drops_mnemonics_and_spaces():
    assert normalize("  ~Save the   file\nnow. ") == "Save the file now."


def test_multiway_aligns_by_key_and_needs_every_language():
    english = {("a", "ctx\x04Open the file now please."): "Open the file now please.",
               ("b", "Open the file now please."): "Open the file now please.",
               ("a", "Close the window right now."): "Close the window right now.",
               ("a", "Print all the pages now."): "Print all the pages now.",
               ("a", "Label"): "Label"}
    de = {("a", "ctx\x04Open the file now please."): "Datei jetzt öffnen, bitte.",
          ("b", "Open the file now please."): "Öffne die Datei.",
          ("a", "Close the window right now."): "Fenster sofort schließen.",
          ("a", "Print all the pages now."): "Print all the pages now.",  # untranslated
          ("a", "Label"): "Beschriftung"}
    fr = {key: value + " (fr)" for key, value in de.items() if key[0] != "b"}
    fr.pop(("a", "Close the window right now."))
    rows = multiway(english, {"deu_Latn": de, "fra_Latn": fr}, "eng_Latn")
    # sorted keys: ("a", "Open...") first, so the English sentence comes from domain a
    assert rows == {("a", "ctx\x04Open the file now please."): {
                    "eng_Latn": "Open the file now please.",
                     "deu_Latn": "Datei jetzt öffnen, bitte.",
                     "fra_Latn": "Datei jetzt öffnen, bitte. (fr)"}}


@pytest.mark.parametrize("locale, code", [
    ("de", "deu_Latn"), ("pt-BR", "por_Latn"), ("pt_br", "por_Latn"), ("zh-CN", "zho_Hans"),
    ("zh-TW", "zho_Hant"), ("sr", "srp_Cyrl"), ("es-ES", "spa_Latn"), ("en-GB", "eng_Latn"),
    ("ar", "arb_Arab"), ("ne-NP", "npi_Deva"), ("fa", "pes_Arab"), ("kk", "kaz_Cyrl"),
])
def test_nllb_code(locale, code):
    assert layout.nllb_code(locale) == code


def test_nllb_code_table_uses_real_codes_and_rejects_unknown():
    table = set(layout._LANGUAGES.values()) | {c for c in layout._REGIONAL.values() if c}
    assert table <= NLLB
    for locale in ("sr-Latn", "tlh", "xx-yy"):
        with pytest.raises(KeyError, match="no NLLB"):
            layout.nllb_code(locale)
    with pytest.raises(ValueError, match="keep one"):
        layout.nllb_codes(["pt-br", "de", "pt"])


def test_splits_are_stable_and_disjoint():
    sentences = [f"Sentence number {i} of the corpus." for i in range(3000)]
    rows = [{"eng_Latn": s, "deu_Latn": s + " (de)"} for s in sentences]
    grouped = layout.assign_splits(rows)
    shuffled = random.Random(0).sample(rows, len(rows))
    assert layout.assign_splits(shuffled) == grouped  # order-free, deterministic
    sizes = {split: len(members) for split, members in grouped.items()}
    assert sum(sizes.values()) == 3000 and all(500 < sizes[s] < 700 for s in ("dev", "devtest"))
    # a sentence's split depends on itself only: dropping half the corpus moves nothing
    half = layout.assign_splits(rows[::2])
    for split, members in half.items():
        assert {r["eng_Latn"] for r in members} <= {r["eng_Latn"] for r in grouped[split]}
    # a limit keeps a stable subset: the first N rows in hash order
    limited = layout.assign_splits(rows, limits={"dev": 50, "train": 0})
    assert limited["dev"] == grouped["dev"][:50] and limited["train"] == []
    assert layout.split_of(sentences[0]) == layout.split_of(sentences[0])
    with pytest.raises(ValueError, match="sum to 1"):
        layout.assign_splits(rows, {"dev": 0.5, "train": 0.6})


def test_near_twins_match_brute_force():
    rng = random.Random(1)
    words = "the a smallest largest number value cell sheet returns shows of in".split()
    sentences = [" ".join(rng.choices(words, k=rng.randint(4, 9))) for _ in range(300)]
    found = {(i, j) for i, j, _ in twins.near_twins(sentences, 0.7)}

    def jaccard(a, b):
        a, b = set(a.split()), set(b.split())
        return len(a & b) / len(a | b)

    expected = {(i, j) for i in range(300) for j in range(i + 1, 300)
                if sentences[i] != sentences[j] and jaccard(sentences[i], sentences[j]) >= 0.7}
    assert found == expected and expected


def test_write_flores_rejects_bad_lines(tmp_path):
    with pytest.raises(ValueError, match="one FLORES line"):
        layout.write_flores(tmp_path, "dev", ["eng_Latn"], [{"eng_Latn": "two\tcells"}])
    with pytest.raises(ValueError, match="one FLORES line"):
        layout.write_flores(tmp_path, "dev", ["eng_Latn"], [{"eng_Latn": ""}])


def _fake_langpack(root: pathlib.Path, locale: str, messages: dict[str, str]) -> None:
    folder = root / "usr/lib/libreoffice/program/resource" / locale / "LC_MESSAGES"
    write_mo(folder / "sw.mo", messages)
    doc = root / "usr/share/doc" / f"libreoffice-l10n-{locale.lower()}"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("Files: *\nLicense: MPL-2.0\n")


def _offline(monkeypatch, roots: dict[str, pathlib.Path]) -> None:
    def fetch(names, cache_dir):
        return {name: debian.Package(name, "1.0", roots[name]) for name in names}
    monkeypatch.setattr(debian, "fetch", fetch)


def test_libreoffice_build_offline(tmp_path, monkeypatch):
    english = [f"Returns the value number {i} of the sheet." for i in range(60)]
    english += ["Returns the smallest number of the list.",
                "Returns the largest number of the list."]
    roots = {}
    for locale, suffix in (("de", "DE"), ("zh-CN", "ZH")):
        messages = {f"ctx{i}\x04{en}": f"{suffix} {en}" for i, en in enumerate(english)}
        messages["ctx\x04Label"] = f"{suffix} label"
        roots[f"libreoffice-l10n-{locale.lower()}"] = tmp_path / locale
        _fake_langpack(tmp_path / locale, locale, messages)
    _offline(monkeypatch, roots)
    out = tmp_path / "out"
    summary = build.build_corpus("libreoffice", out, tmp_path / "cache", ["de", "zh-CN"])
    assert summary["langs"] == ["eng_Latn", "deu_Latn", "zho_Hans"]
    assert sum(summary["rows"].values()) == len(english)
    source = FloresSource(out, "dev", ["eng_Latn-zho_Hans"])
    assert len(source) == summary["rows"]["dev"]
    for record in source:
        assert record["tgt_text"] == "ZH " + record["src_text"]
    assert "MPL-2.0" in (out / "NOTICE.md").read_text()
    assert (out / "licenses" / "libreoffice-l10n-de.copyright").is_file()
    with pytest.raises(FileExistsError, match="overwrite"):
        build.build_corpus("libreoffice", out, tmp_path / "cache", ["de", "zh-CN"])


def test_xsimpp_negatives_come_from_other_splits(tmp_path):
    pool = [{"eng_Latn": s, "deu_Latn": s + " (de)"} for s in (
        "Returns the smallest number of the list.", "Returns the largest number of the list.",
        "Opens a completely unrelated dialog window.", "Shows page 10 of the long document.",
        "Shows page 12 of the long document.")]
    splits = {"dev": [pool[0], pool[3]], "devtest": [pool[2]], "train": [pool[1], pool[4]]}
    counts = twins.write_twins(tmp_path, splits, pool, ["eng_Latn", "deu_Latn"])
    assert counts == {"dev": 2, "devtest": 0}
    negatives = (tmp_path / "dev_augmented/deu_Latn_augmented.dev").read_text().splitlines()
    assert negatives == [pool[1]["deu_Latn"], pool[4]["deu_Latn"]]
    errtypes = json.loads((tmp_path / "dev_augmented/deu_Latn_errtype.dev.json").read_text())
    assert errtypes == {pool[1]["deu_Latn"]: {"src": pool[0]["deu_Latn"], "errtype": "lexical"},
                        pool[4]["deu_Latn"]: {"src": pool[3]["deu_Latn"], "errtype": "number"}}
    assert not (tmp_path / "devtest_augmented").exists()


def test_error_types():
    assert twins.error_type("Do not save the file now.", "Do save the file now.") == "negation"
    assert twins.error_type("Page 3 of 9.", "Page 4 of 9.") == "number"
    assert twins.error_type("You can't undo this step.", "You can undo this step.") == "negation"


def test_fluent_and_properties_parsers():
    ftl = ("# Comment\n"
           "simple = Open a new window in private mode.\n"
           "multi =\n    First line of a long message\n    that goes on here.\n"
           "button =\n    .label = Save the page as a file.\n    .accesskey = S\n"
           "-brand = Firefox\n"
           "with-ref = Restart { -brand } to finish the update.\n")
    assert firefox.parse_ftl(ftl) == {
        "simple": "Open a new window in private mode.",
        "multi": "First line of a long message that goes on here.",
        "button.label": "Save the page as a file.", "button.accesskey": "S",
        "-brand": "Firefox", "with-ref": "Restart { -brand } to finish the update."}
    properties = ("# comment\n! other comment\nkey.one = Value with \\u00e9 accent.\n"
                  "key.two: Continued \\\n    line.\nempty =\n")
    assert firefox.parse_properties(properties) == {"key.one": "Value with é accent.",
                                                    "key.two": "Continued line."}


def test_firefox_langpack_keys_replace_every_locale_folder(tmp_path):
    for locale, text in (("en-GB", "Open the page in a new tab."), ("de", "Seite in neuem Tab.")):
        xpi = tmp_path / locale / f"usr/lib/firefox-esr/browser/extensions/langpack-{locale}@x.xpi"
        xpi.parent.mkdir(parents=True)
        with zipfile.ZipFile(xpi, "w") as z:
            z.writestr(f"chrome/{locale}/locale/{locale}/a.properties", f"open = {text}\n")
            z.writestr(f"localization/{locale}/b.ftl", f"open-tab = {text}\n")
    en = firefox.read_langpack(tmp_path / "en-GB")
    de = firefox.read_langpack(tmp_path / "de")
    assert set(en) == set(de) == {("chrome/LOC/locale/LOC/a.properties", "open"),
                                  ("localization/LOC/b.ftl", "open-tab")}


def test_fillets_build_offline(tmp_path, monkeypatch):
    game = "usr/share/games/fillets-ng"
    script = tmp_path / "data" / game / "script" / "wreck"
    script.mkdir(parents=True)
    dialogs = {"let-m-ship": ("What kind of strange ship is that?", "Co je to za loď?",
                              "Was ist das für ein Schiff?"),
               "let-v-eye": ('Can you see that \\"eye\\"?', 'Vidíš to \\"oko\\"?',
                             'Siehst du das \\"Auge\\"?'),
               "let-m-ok": ("OK.", "OK.", "OK.")}  # same everywhere: dropped
    en = "".join(f'dialogId("{i}", "font_small", "{t[0]}")\n' for i, t in dialogs.items())
    (script / "dialogs_en.lua").write_text(en)
    for column, locale in ((1, "cs"), (2, "de")):
        (script / f"dialogs_{locale}.lua").write_text("".join(
            f'dialogId("{i}", "font_small", "{t[0]}")\ndialogStr("{t[column]}")\n\n'
            for i, t in dialogs.items()))
    sound = tmp_path / "cs" / game / "sound" / "wreck" / "cs"
    sound.mkdir(parents=True)
    (sound / "let-m-ship.ogg").write_bytes(b"OggS fake clip")
    _offline(monkeypatch, {"fillets-ng-data": tmp_path / "data",
                           "fillets-ng-data-cs": tmp_path / "cs"})
    out = tmp_path / "out"
    summary = build.build_corpus("fillets", out, tmp_path / "cache", ["cs", "de"],
                                 fractions={"dev": 1.0, "devtest": 0.0, "train": 0.0},
                                 speech=["cs"])
    assert summary["rows"]["dev"] == 2 and summary["clips"] == {"ces_Latn": {
        "dev": 1, "devtest": 0, "train": 0}}
    assert 'Can you see that "eye"?' in (out / "dev/eng_Latn.dev").read_text().splitlines()
    header, row = (out / "speech/ces_Latn.dev.tsv").read_text().splitlines()
    assert header.split("\t") == ["audio", "transcription", "lang", "line", "id"]
    audio, text, lang, line, ident = row.split("\t")
    assert (out / "speech" / audio).read_bytes() == b"OggS fake clip"
    assert (out / "dev/ces_Latn.dev").read_text().splitlines()[int(line)] == text
    assert (lang, ident) == ("ces_Latn", "wreck/let-m-ship")
    assert "GPL-2+" in (out / "NOTICE.md").read_text()


def test_espeak_voices_are_fixed_and_checked():
    voice = espeak.voice_for("deu_Latn", "Hallo Welt.")
    assert voice == espeak.voice_for("deu_Latn", "Hallo Welt.") and voice[1].startswith("de")
    assert set(espeak.VOICES) <= NLLB
    with pytest.raises(KeyError, match="misreads"):
        espeak.voice_for("zho_Hans", "你好")


def test_espeak_build(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    source = tmp_path / "text"
    layout.write_flores(source, "dev", ["eng_Latn", "deu_Latn", "zho_Hans"], [
        {"eng_Latn": "-Good morning.", "deu_Latn": "Guten Morgen.", "zho_Hans": "早上好。"},
        {"eng_Latn": "See you tomorrow.", "deu_Latn": "Bis morgen.", "zho_Hans": "明天见。"}])
    summary = build.build_corpus("espeak", tmp_path / "out", None, limits={"dev": 1},
                                 source=source)
    assert summary["langs"] == ["deu_Latn", "eng_Latn"]  # no usable Chinese voice
    for lang in ("deu_Latn", "eng_Latn"):
        header, row = (tmp_path / "out/speech" / f"{lang}.dev.tsv").read_text().splitlines()
        with wave.open(str(tmp_path / "out/speech" / row.split("\t")[0])) as clip:
            assert clip.getnframes() / clip.getframerate() > 0.3
    assert (tmp_path / "out/dev/zho_Hans.dev").is_file()  # the text travels with the speech


def test_lo_help_paragraphs(tmp_path):
    page = tmp_path / "usr/share/libreoffice/help/de/text/scalc"
    page.mkdir(parents=True)
    (page / "f.html").write_text(
        '<h1 id="hd_1">Title</h1><p id="par_1" class="paragraph"><a name="x"></a>Gibt den '
        '<span class="emph">Kosinus</span> &amp; mehr zurück.</p><p>no id</p>'
        '<p id="par_1">Zweites Vorkommen.</p>')
    assert lo_help.read_help(tmp_path) == {
        ("text/scalc/f.html", "par_1", 0): "Gibt den Kosinus & mehr zurück.",
        ("text/scalc/f.html", "par_1", 1): "Zweites Vorkommen."}


def test_fetch_explains_a_missing_apt(tmp_path, monkeypatch):
    monkeypatch.setattr(debian.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get and dpkg-deb"):
        debian.fetch(["libreoffice-l10n-de"], tmp_path)


# --- the committed sample -------------------------------------------------------------------

def _sample_corpora():
    return sorted(p for p in SAMPLE.iterdir() if (p / "corpus.json").is_file())


def _size(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_sample_is_small_and_licensed():
    # Text under 3.5 MB, the real-speech clips (data/sample/speech) under 3.5 MB more.
    assert _size(SAMPLE) - _size(SAMPLE / "speech") < 3.5e6
    assert _size(SAMPLE / "speech") < 3.5e6
    assert (SAMPLE / "README.md").is_file()
    assert {p.name for p in _sample_corpora()} >= {"libreoffice"}
    for corpus in _sample_corpora():
        assert "MPL-2.0" in (corpus / "NOTICE.md").read_text()
        assert any((corpus / "licenses").glob("*.copyright"))


@pytest.mark.parametrize("corpus", ["libreoffice", "firefox"])
def test_sample_integrity(corpus):
    root = SAMPLE / corpus
    if not root.is_dir():
        pytest.skip(f"no {corpus} in the sample")
    seen: dict[str, str] = {}
    splits = [s for s in layout.SPLITS if (root / s).is_dir()]
    assert {"dev", "devtest"} <= set(splits)
    for split in splits:
        files = sorted((root / split).glob(f"*.{split}"))
        langs = [p.name.split(".")[0] for p in files]
        assert len(langs) >= 8 and "eng_Latn" in langs and set(langs) <= NLLB
        lines = {lang: p.read_text(encoding="utf-8").split("\n") for lang, p in zip(langs, files)}
        counts = {lang: len(text) - 1 for lang, text in lines.items()}
        assert len(set(counts.values())) == 1, counts
        for lang, text in lines.items():
            assert text[-1] == "" and all(line.strip() and "\t" not in line for line in text[:-1])
        for sentence in lines["eng_Latn"][:-1]:
            assert seen.setdefault(sentence, split) == split, f"{sentence!r} in two splits"
        pairs = FloresSource(root, split, ["*-eng_Latn"])
        assert len(pairs) == counts["eng_Latn"] * (len(langs) - 1)
        if split != "train":  # xsim++ negatives (LASER layout): aligned, outside the split
            folder = root / f"{split}_augmented"
            negatives = {lang: (folder / f"{lang}_augmented.{split}").read_text().splitlines()
                         for lang in langs}
            assert len({len(n) for n in negatives.values()}) == 1 and negatives["eng_Latn"]
            assert not set(negatives["eng_Latn"]) & set(lines["eng_Latn"])
            for lang in langs:
                errtypes = json.loads((folder / f"{lang}_errtype.{split}.json").read_text())
                assert set(errtypes) == set(negatives[lang])
                assert all(e["src"] in lines[lang] for e in errtypes.values())
    if corpus == "libreoffice":
        assert len(lines) == 14 and counts["eng_Latn"] >= 500  # train: a few thousand pairs


# --- real downloads ---------------------------------------------------------------------------

def _apt_or_skip():
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("needs apt-get and dpkg-deb (Debian or Ubuntu)")


@pytest.mark.slow
@pytest.mark.parametrize("corpus, min_rows, min_langs", [
    ("libreoffice", 4000, 14), ("firefox", 1000, 16), ("fillets", 1300, 11), ("lo-help", 8000, 10)])
def test_real_build(tmp_path, corpus, min_rows, min_langs):
    _apt_or_skip()
    summary = build.build_corpus(corpus, tmp_path / "out", tmp_path / "cache")
    assert sum(summary["rows"].values()) >= min_rows
    assert min(summary["rows"].values()) >= min_rows // 10
    assert len(summary["langs"]) >= min_langs
    FloresSource(tmp_path / "out", "devtest", ["*-*"])  # line-aligned
    if corpus == "fillets":  # real Czech and Dutch recordings for most rows
        for lang, share in (("ces_Latn", 0.9), ("nld_Latn", 0.75)):
            assert sum(summary["clips"][lang].values()) >= share * sum(summary["rows"].values())
