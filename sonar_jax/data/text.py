"""Parallel-text sources: random-access lists of {src_text, src_lang, tgt_text, tgt_lang} records.

Each source has `len` and `__getitem__` (what grain's `MapDataset.source` needs) and, where it is
cheap to know, `langs` (the language codes it uses, checked against the tokenizer before training).

- `TsvSource`: tab-separated files, indexed once and read line by line on demand.
- `FloresSource`: FLORES-layout folders (`ROOT/<split>/<lang_Script>.<split>`, line-aligned),
  every requested language pair.
- `TfdsSource`: a tensorflow-datasets translation dataset through `tfds.data_source` (random
  access over ArrayRecord), for corpora larger than host memory.
"""

from __future__ import annotations

import itertools
import os
import pathlib
from typing import Sequence

import numpy as np

TSV_COLUMNS = ("src_text", "tgt_text", "src_lang", "tgt_lang")


def _check_lang_code(code: str, where: str) -> str:
    if not code or any(ch.isspace() for ch in code):
        raise ValueError(f"{where}: {code!r} is not a language code (expected e.g. 'eng_Latn')")
    return code


class TsvSource:
    """Pairs from tab-separated UTF-8 files; each line is one pair.

    Columns, by header or by position:
    - header line (optional): names from `src_text, tgt_text, src_lang, tgt_lang` in any order;
      other named columns are ignored. A first line is a header when it holds both `src_text`
      and `tgt_text`.
    - no header: `src_text<TAB>tgt_text` or `src_text<TAB>tgt_text<TAB>src_lang<TAB>tgt_lang`.
    Files without language columns take `src_lang` / `tgt_lang` from the arguments; giving both
    is an error (which should win is not obvious). No quoting: a cell cannot hold a tab or a
    newline. Empty lines are skipped; any other line whose column count differs from the file's
    is an error naming file and line.

    The files are checked once, keeping only where each line is (18 bytes a pair); records are
    read on demand with `os.pread`, so grain workers share the page cache instead of each
    holding a copy of the text, and reader threads need no lock.
    """

    def __init__(self, paths: str | pathlib.Path | Sequence[str | pathlib.Path], *,
                 src_lang: str | None = None, tgt_lang: str | None = None):
        if isinstance(paths, (str, pathlib.Path)):
            paths = [paths]
        if not paths:
            raise ValueError("TsvSource needs at least one file")
        self._paths = [pathlib.Path(p) for p in paths]
        self._text_columns: list[tuple[int, int]] = []  # (src_text, tgt_text) column per file
        lang_ids: dict[str, int] = {}
        starts, sizes, files, src_langs, tgt_langs = [], [], [], [], []
        for file_index, path in enumerate(self._paths):
            for start, size, src, tgt in self._scan(path, src_lang, tgt_lang):
                starts.append(start)
                sizes.append(size)
                files.append(file_index)
                src_langs.append(lang_ids.setdefault(src, len(lang_ids)))
                tgt_langs.append(lang_ids.setdefault(tgt, len(lang_ids)))
        self._lang_names = list(lang_ids)
        self.langs = sorted(lang_ids)
        self._starts = np.array(starts, np.int64)
        self._sizes = np.array(sizes, np.int32)
        self._files = np.array(files, np.int16)
        self._src_langs = np.array(src_langs, np.int16)
        self._tgt_langs = np.array(tgt_langs, np.int16)
        self._fds: dict[int, int] = {}

    def _scan(self, path: pathlib.Path, src_lang: str | None, tgt_lang: str | None):
        """Yields (start, size, src_lang, tgt_lang) per pair line; appends the file's layout."""
        if not path.is_file():
            raise FileNotFoundError(f"TSV file {path} does not exist")
        with path.open("rb") as f:
            first = f.readline().decode("utf-8", errors="replace").rstrip("\r\n").split("\t")
        if {"src_text", "tgt_text"} <= set(first):
            columns, header = {n: first.index(n) for n in TSV_COLUMNS if n in first}, True
        else:
            if len(first) not in (2, 4):
                raise ValueError(f"{path}, line 1: {len(first)} tab-separated columns; expected "
                                 "src_text, tgt_text [, src_lang, tgt_lang] or a header line")
            columns, header = dict(zip(TSV_COLUMNS, range(len(first)))), False
        width = len(first)
        has_langs = "src_lang" in columns and "tgt_lang" in columns
        if not has_langs and ("src_lang" in columns or "tgt_lang" in columns):
            raise ValueError(f"{path}: the header names only one of src_lang, tgt_lang; "
                             "give both columns or neither")
        if has_langs and (src_lang or tgt_lang):
            raise ValueError(f"{path} has language columns and languages were also given; "
                             "drop one of them")
        if not has_langs and not (src_lang and tgt_lang):
            raise ValueError(f"{path} has no src_lang/tgt_lang columns; give src_lang and "
                             "tgt_lang in the data config")
        self._text_columns.append((columns["src_text"], columns["tgt_text"]))
        with path.open("rb") as f:
            start = 0
            for number, raw in enumerate(f, start=1):
                line_start, start = start, start + len(raw)
                if header and number == 1:
                    continue
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as error:
                    raise ValueError(f"{path}, line {number}: not UTF-8 ({error})") from None
                if not line:
                    continue
                cells = line.split("\t")
                if len(cells) != width:
                    raise ValueError(f"{path}, line {number}: {len(cells)} tab-separated "
                                     f"columns, expected {width}")
                if has_langs:
                    where = f"{path}, line {number}"
                    src = _check_lang_code(cells[columns["src_lang"]], where)
                    tgt = _check_lang_code(cells[columns["tgt_lang"]], where)
                    yield line_start, len(raw), src, tgt
                else:
                    yield line_start, len(raw), src_lang, tgt_lang

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, index: int) -> dict[str, str]:
        file_index = int(self._files[index])
        raw = os.pread(self._fd(file_index), int(self._sizes[index]), int(self._starts[index]))
        cells = raw.decode("utf-8").rstrip("\r\n").split("\t")
        src_text, tgt_text = self._text_columns[file_index]
        return {"src_text": cells[src_text],
                "src_lang": self._lang_names[self._src_langs[index]],
                "tgt_text": cells[tgt_text],
                "tgt_lang": self._lang_names[self._tgt_langs[index]]}

    def _fd(self, file_index: int) -> int:
        fd = self._fds.get(file_index)
        if fd is None:
            opened = os.open(self._paths[file_index], os.O_RDONLY)
            fd = self._fds.setdefault(file_index, opened)  # atomic: one thread's descriptor wins
            if fd != opened:
                os.close(opened)
        return fd

    def __getstate__(self):
        return {**self.__dict__, "_fds": {}}  # descriptors do not cross processes

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)


def resolve_pairs(pairs: Sequence[str], langs: Sequence[str]) -> list[tuple[str, str]]:
    """Ordered (src, tgt) pairs from specs "src-tgt"; "*" stands for every language in `langs`,
    so "*-eng_Latn" is X->eng and "*-*" all-to-all. Pairs of a language with itself come only
    from an explicit "xxx-xxx"."""
    resolved: dict[tuple[str, str], None] = {}  # ordered set
    for spec in pairs:
        parts = spec.split("-")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"language pair {spec!r} is not of the form 'src-tgt' "
                             "(e.g. 'eng_Latn-fra_Latn', '*-eng_Latn', '*-*')")
        unknown = [code for code in parts if code != "*" and code not in langs]
        if unknown:
            raise ValueError(f"language pair {spec!r}: no data for {unknown[0]!r}; available: "
                             f"{', '.join(langs)}")
        srcs = langs if parts[0] == "*" else [parts[0]]
        tgts = langs if parts[1] == "*" else [parts[1]]
        for pair in itertools.product(srcs, tgts):
            if pair[0] == pair[1] and "*" in parts:
                continue
            resolved.setdefault(pair, None)
    if not resolved:
        raise ValueError(f"language pairs {list(pairs)} give no pair of two languages")
    return list(resolved)


class FloresSource:
    """All line pairs of the requested language pairs in a FLORES-layout folder.

    `root/<split>/<lang>.<split>` holds one sentence per line, line i of every language being
    translations of each other. Record k is line k % n of pair k // n.
    """

    def __init__(self, root: str | pathlib.Path, split: str, pairs: Sequence[str]):
        folder = pathlib.Path(root) / split
        files = {p.name[:-len(split) - 1]: p for p in sorted(folder.glob(f"*.{split}"))}
        if not folder.is_dir():
            raise FileNotFoundError(f"no FLORES files: the folder {folder} does not exist (layout: "
                                    f"PATH/{split}/<lang_Script>.{split}); check the data path")
        if not files:
            raise FileNotFoundError(f"no FLORES files {folder}/<lang_Script>.{split}")
        self.pairs = resolve_pairs(pairs, sorted(files))
        self.langs = sorted({lang for pair in self.pairs for lang in pair})
        self._lines: dict[str, list[str]] = {}
        for lang in self.langs:
            with files[lang].open(encoding="utf-8") as f:
                self._lines[lang] = f.read().rstrip("\n").split("\n")
        first = self.langs[0]
        for lang in self.langs[1:]:
            if len(self._lines[lang]) != len(self._lines[first]):
                raise ValueError(
                    f"{files[first]} has {len(self._lines[first])} lines but {files[lang]} has "
                    f"{len(self._lines[lang])}; FLORES files of one split must be line-aligned")
        self._num_lines = len(self._lines[first])

    def __len__(self) -> int:
        return len(self.pairs) * self._num_lines

    def __getitem__(self, index: int) -> dict[str, str]:
        pair, line = divmod(index, self._num_lines)
        src, tgt = self.pairs[pair]
        return {"src_text": self._lines[src][line], "src_lang": src,
                "tgt_text": self._lines[tgt][line], "tgt_lang": tgt}


class TfdsSource:
    """A tfds translation dataset (features `src_field`, `tgt_field` hold the two texts).

    Needs tensorflow-datasets and a prepared dataset in ArrayRecord format
    (`tfds build --file_format=array_record`). Not covered by the tests: tensorflow-datasets is
    not installed on the test machines.
    """

    def __init__(self, name: str, split: str, *, src_field: str, tgt_field: str,
                 src_lang: str, tgt_lang: str, data_dir: str | None = None):
        try:
            import tensorflow_datasets as tfds
        except ImportError:
            raise ImportError("the tfds data source needs tensorflow-datasets: "
                              "pip install tensorflow-datasets") from None
        self._source = tfds.data_source(name, split=split, data_dir=data_dir)
        self._fields = (src_field, tgt_field)
        self.langs = sorted({src_lang, tgt_lang})
        self._langs = (src_lang, tgt_lang)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, str]:
        example = self._source[index]
        src, tgt = (example[f] for f in self._fields)
        return {"src_text": src.decode("utf-8") if isinstance(src, bytes) else str(src),
                "src_lang": self._langs[0],
                "tgt_text": tgt.decode("utf-8") if isinstance(tgt, bytes) else str(tgt),
                "tgt_lang": self._langs[1]}
