"""NLLB-layout SentencePiece tokenizer, id-for-id identical to fairseq2's NLLB tokenizer.

Id layout for a SentencePiece model of n pieces (trained with unk 0, bos 1, eos 2, no pad):
pad 0, unk 1, bos 2, eos 3, piece i -> i + 1, `__lang__` -> n + 1 + index in the language list,
then the three data tags. Source mode is `[lang] pieces [eos]`; target mode `[eos, lang] pieces [eos]`.
"""

from __future__ import annotations

import difflib
import pathlib
from typing import Iterable, Sequence

import sentencepiece as spm

from sonar_jax.errors import UsageError

DEFAULT_LANGS_FILE = pathlib.Path(__file__).with_name("assets") / "nllb_langs.txt"
DATA_TAGS = ("<MINED_DATA>", "<MMT_BT_DATA>", "<SMT_BT_DATA>")
PAD, UNK, BOS, EOS = 0, 1, 2, 3


def read_langs(path: str | pathlib.Path = DEFAULT_LANGS_FILE) -> list[str]:
    """Language codes, one per line, in the order that fixes their token ids."""
    langs = [line.strip() for line in pathlib.Path(path).read_text().splitlines() if line.strip()]
    if len(set(langs)) != len(langs):
        dupes = sorted({code for code in langs if langs.count(code) > 1})
        raise ValueError(f"language list {path} repeats codes {dupes}")
    return langs


class UnknownLanguageError(UsageError):
    """A language code the tokenizer does not know (the message names the closest ones)."""


class NllbTokenizer:
    """Encodes text to NLLB ids and back. `langs` defaults to the released 202-language list."""

    def __init__(self, spm_path: str | pathlib.Path, langs: Sequence[str] | None = None):
        self.spm_path = pathlib.Path(spm_path)
        if not self.spm_path.is_file():
            raise FileNotFoundError(f"SentencePiece model {self.spm_path} does not exist")
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(self.spm_path))
        except RuntimeError as error:  # an empty, truncated or foreign file
            raise ValueError(f"{self.spm_path} is not a readable SentencePiece model ({error}); "
                             "pass the .model file the checkpoint was trained with") from None
        self.langs = list(langs) if langs is not None else read_langs()
        self._num_pieces = self._sp.get_piece_size()
        self._lang_base = self._num_pieces + 1
        self._lang_ids = {lang: self._lang_base + i for i, lang in enumerate(self.langs)}
        self.vocab_size = self._lang_base + len(self.langs) + len(DATA_TAGS)

    pad_idx, unk_idx, bos_idx, eos_idx = PAD, UNK, BOS, EOS

    def lang_id(self, lang: str) -> int:
        """Token id of `__lang__`; an unknown code raises naming it and the closest valid codes."""
        try:
            return self._lang_ids[lang]
        except KeyError:
            same_letters = [code for code in self.langs if code.lower() == str(lang).lower()]
            close = same_letters or difflib.get_close_matches(lang, self.langs, n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            if same_letters:
                hint += "; codes are case-sensitive"
            raise UnknownLanguageError(
                f"unknown language code {lang!r}{hint}. Codes look like 'eng_Latn' "
                f"(ISO 639-3 + script); this tokenizer knows {len(self.langs)} of them.") from None

    def data_tag_id(self, tag: str) -> int:
        return self._lang_base + len(self.langs) + DATA_TAGS.index(tag)

    def encode(self, text: str, lang: str, mode: str = "source") -> list[int]:
        """`[lang] pieces [eos]` (source) or `[eos, lang] pieces [eos]` (target)."""
        return self.encode_batch([text], lang, mode)[0]

    def encode_batch(self, texts: Iterable[str], lang: str, mode: str = "source"
                     ) -> list[list[int]]:
        """`encode` for many texts at once (SentencePiece encodes the list in one call)."""
        lang_id = self.lang_id(lang)
        if mode == "source":
            prefix = [lang_id]
        elif mode == "target":
            prefix = [EOS, lang_id]
        else:
            raise ValueError(f"unknown mode {mode!r}; expected 'source' or 'target'")
        return [prefix + [i + 1 for i in ids] + [EOS] for ids in self._sp.encode(list(texts))]

    def is_control(self, token: int) -> bool:
        """pad, bos, eos, language tags and data tags: dropped when decoding (unk is kept)."""
        return token in (PAD, BOS, EOS) or token >= self._lang_base

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, control tokens dropped; unk decodes as SentencePiece does (' ⁇ ')."""
        pieces = [int(i) - 1 for i in ids if not self.is_control(int(i))]
        bad = [i + 1 for i in pieces if not 0 <= i < self._num_pieces]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside this tokenizer's vocabulary "
                             f"of {self.vocab_size}")
        return self._sp.decode(pieces)


def train_sentencepiece(sentences: Iterable[str], path: str | pathlib.Path, *, vocab_size: int,
                        langs: Sequence[str] | None = None) -> NllbTokenizer:
    """Trains a unigram SentencePiece model on `sentences` (unk 0, bos 1, eos 2, no pad, as this
    layout expects) with as many pieces as make the NLLB vocabulary exactly `vocab_size` ids
    with `langs` (default: the released list), so it fits an architecture's embedding table.
    For models trained from scratch on a corpus that no released tokenizer was made for."""
    langs = list(langs) if langs is not None else read_langs()
    pieces = vocab_size - 1 - len(langs) - len(DATA_TAGS)
    if pieces < 16:
        raise ValueError(f"vocab_size {vocab_size} leaves {pieces} SentencePiece pieces after "
                         f"{len(langs)} language tags and the special ids; raise it")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=out, vocab_size=pieces,
            model_type="unigram", character_coverage=0.9995, unk_id=0, bos_id=1, eos_id=2,
            pad_id=-1, input_sentence_size=0, shuffle_input_sentence=False, num_threads=1,
            minloglevel=2)
    tokenizer = NllbTokenizer(path, langs)
    assert tokenizer.vocab_size == vocab_size
    return tokenizer
