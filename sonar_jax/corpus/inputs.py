"""What `sonar-jax embed` reads: text files, FLORES-style folders, TSV and Parquet tables, one
sentence a line (or row).

Each input is scanned once (row count, sha256 of its bytes, the byte offset of every
`block_rows`-th row), so any process can read any range of rows without reading what comes
before it, and a restarted run can tell whether a file changed since it began.

Languages come from a language column (TSV/Parquet), from a file name that starts with a code
(`eng_Latn.devtest`, `eng_Latn.txt`: FLORES folders work this way), or from `lang` for all
files; two of them that disagree are an error, as is none.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import re
from typing import Iterator, Sequence

import numpy as np

LANG_CODE = re.compile(r"[a-z]{3}_[A-Z][a-z]{3}")  # eng_Latn: ISO 639-3 + script
READ_BYTES = 16 << 20


@dataclasses.dataclass(frozen=True)
class Source:
    """One input file and how to read its rows."""

    path: str                # absolute
    kind: str                # "text" | "tsv" | "parquet"
    rows: int
    sha256: str              # of the file's bytes
    lang: str | None         # the whole file's language; None: per row, from `lang_column`
    text_column: str | None  # TSV/Parquet
    lang_column: str | None
    block_rows: int
    starts: tuple[int, ...]  # text/TSV: byte offset of rows 0, block_rows, 2 * block_rows, ...

    def describe(self) -> dict:
        """What a manifest records of this input."""
        return {"path": self.path, "kind": self.kind, "rows": self.rows, "sha256": self.sha256,
                "lang": self.lang, "text_column": self.text_column,
                "lang_column": self.lang_column}


def _lang_from_name(path: pathlib.Path) -> str | None:
    code = path.name.split(".", 1)[0]
    return code if "." in path.name and LANG_CODE.fullmatch(code) else None


def _kind(path: pathlib.Path) -> str:
    suffix = path.suffix.lower()
    return {".tsv": "tsv", ".parquet": "parquet"}.get(suffix, "text")


def expand_inputs(paths: Sequence[str | os.PathLike]) -> list[pathlib.Path]:
    """Files named by `paths`: files as given, folders as their `LANG.SPLIT` files (FLORES
    layout, sorted by name)."""
    if not paths:
        raise ValueError("no input: name at least one file or folder")
    files = []
    for item in paths:
        path = pathlib.Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and _lang_from_name(p))
            if not found:
                raise ValueError(f"input folder {path} holds no LANG.SPLIT files (like "
                                 f"eng_Latn.devtest); pass a FLORES split folder such as "
                                 f"{path / 'devtest'}, or the files themselves")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input {path} does not exist; check the path")
    return files


def _file_lang(path: pathlib.Path, lang: str | None, lang_column: str | None,
               kind: str) -> str | None:
    named = _lang_from_name(path)
    if lang_column is not None and kind != "text":
        if lang is not None:
            raise ValueError(f"{path}: --lang and --lang-column were both given; drop one "
                             "(which should win is not obvious)")
        return None
    if named and lang and named != lang:
        raise ValueError(f"{path}: the file name says {named} but --lang says {lang}; drop "
                         "--lang or rename the file")
    if not (named or lang):
        raise ValueError(f"{path}: no language for its sentences; pass --lang, name the file "
                         f"LANG.ext (e.g. eng_Latn.txt)"
                         + (", or give --lang-column" if kind != "text" else ""))
    return named or lang


def _scan_lines(path: pathlib.Path, skip: int, block_rows: int) -> tuple[int, str, list[int]]:
    """(rows, sha256, start offsets of rows 0, block_rows, ...) of a line-based file whose first
    `skip` lines are not rows."""
    digest = hashlib.sha256()
    starts = [0] if skip == 0 else []
    wanted = skip if skip else block_rows  # the next line whose start to record
    newlines, position, last = 0, 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(READ_BYTES):
            digest.update(block)
            ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
            # Line `wanted` starts just after newline number `wanted - 1`.
            while wanted <= newlines + len(ends):
                starts.append(position + int(ends[wanted - newlines - 1]) + 1)
                wanted += block_rows
            newlines += len(ends)
            position += len(block)
            last = block[-1:]
    lines = newlines + (last != b"\n")
    rows = max(0, lines - skip)
    blocks = -(-rows // block_rows)
    return rows, digest.hexdigest(), starts[:blocks]


def _tsv_header(path: pathlib.Path) -> list[str]:
    with open(path, "rb") as f:
        first = f.readline()
    if not first.strip():
        raise ValueError(f"{path}: a TSV input needs a header line naming its columns (e.g. "
                         "'text<TAB>lang'); the first line is empty")
    return _decode(first, path, 1).split("\t")


def _check_columns(path: pathlib.Path, names: Sequence[str], text_column: str,
                   lang_column: str | None) -> None:
    for role, name in (("text", text_column), ("language", lang_column)):
        if name is not None and name not in names:
            raise ValueError(f"{path} has no column {name!r} (its columns: "
                             f"{', '.join(map(str, names))}); name the {role} column with "
                             f"--{'text' if role == 'text' else 'lang'}-column")


def _parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("Parquet inputs and outputs need pyarrow: pip install "
                          "'sonar_jax[parquet]'") from None
    return pq


def _parquet_file(path: pathlib.Path):
    pq = _parquet()
    try:
        return pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises ArrowInvalid/OSError for a damaged file
        raise ValueError(f"{path} is not a readable Parquet file ({error}); check or rewrite "
                         "it") from None


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(READ_BYTES):
            digest.update(block)
    return digest.hexdigest()


def open_source(path: pathlib.Path, *, lang: str | None, text_column: str,
                lang_column: str | None, block_rows: int) -> Source:
    """Scans one input file."""
    kind = _kind(path)
    file_lang = _file_lang(path, lang, lang_column, kind)
    try:
        if kind == "parquet":
            parquet = _parquet_file(path)
            names = parquet.schema_arrow.names
            _check_columns(path, names, text_column, lang_column)
            rows, sha, starts = parquet.metadata.num_rows, file_sha256(path), []
        else:
            skip = 0
            if kind == "tsv":
                _check_columns(path, _tsv_header(path), text_column, lang_column)
                skip = 1
            rows, sha, starts = _scan_lines(path, skip, block_rows)
    except OSError as error:
        raise ValueError(f"cannot read input {path}: {error.strerror or error}") from None
    columns = kind != "text"
    return Source(str(path.absolute()), kind, rows, sha, file_lang,
                  text_column if columns else None,
                  lang_column if columns else None, block_rows, tuple(starts))


def open_inputs(paths: Sequence[str | os.PathLike], *, lang: str | None = None,
                text_column: str = "text", lang_column: str | None = None,
                block_rows: int) -> list[Source]:
    """Scans every input file (see the module docstring for what `paths` may name)."""
    if block_rows < 1:
        raise ValueError(f"block_rows must be positive, got {block_rows}")
    return [open_source(path, lang=lang, text_column=text_column, lang_column=lang_column,
                        block_rows=block_rows) for path in expand_inputs(paths)]


def _decode(raw: bytes, path, line: int) -> str:
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}, line {line}: not UTF-8 ({error}); convert the file (e.g. "
                         "with iconv) and run again") from None


def _line_rows(source: Source, start: int, stop: int, chunk: int
               ) -> Iterator[tuple[list[str], list[str] | None]]:
    block = start // source.block_rows
    skip = 1 if source.kind == "tsv" else 0
    row = block * source.block_rows
    header = _tsv_header(pathlib.Path(source.path)) if source.kind == "tsv" else None
    text_at = header.index(source.text_column) if header else None
    lang_at = header.index(source.lang_column) if header and source.lang_column else None
    texts, langs = [], []
    with open(source.path, "rb") as f:
        f.seek(source.starts[block])
        for raw in f:
            if row >= stop:
                break
            if row >= start:
                number = row + skip + 1
                line = _decode(raw, source.path, number)
                if header is not None:
                    cells = line.split("\t")
                    if len(cells) != len(header):
                        raise ValueError(f"{source.path}, line {number}: {len(cells)} "
                                         f"tab-separated columns, the header has {len(header)}")
                    line = cells[text_at]
                    if lang_at is not None:
                        langs.append(cells[lang_at])
                texts.append(line)
                if len(texts) == chunk:
                    yield texts, langs or None
                    texts, langs = [], []
            row += 1
    if row < stop:
        raise ValueError(f"{source.path} has fewer rows than when it was scanned ({row} < "
                         f"{stop}): it changed during the run; run again")
    if texts:
        yield texts, langs or None


def _parquet_rows(source: Source, start: int, stop: int, chunk: int
                  ) -> Iterator[tuple[list[str], list[str] | None]]:
    parquet = _parquet_file(pathlib.Path(source.path))
    columns = [source.text_column] + ([source.lang_column] if source.lang_column else [])
    group_starts = np.cumsum([0] + [parquet.metadata.row_group(g).num_rows
                                    for g in range(parquet.num_row_groups)])
    groups = [g for g in range(parquet.num_row_groups)
              if group_starts[g] < stop and group_starts[g + 1] > start]
    row = int(group_starts[groups[0]]) if groups else start
    for batch in parquet.iter_batches(batch_size=chunk, row_groups=groups, columns=columns):
        lo, hi = max(start - row, 0), min(stop - row, batch.num_rows)
        row += batch.num_rows
        if lo >= hi:
            continue
        cells = [batch.column(i).slice(lo, hi - lo).to_pylist() for i in range(len(columns))]
        for name, values in zip(columns, cells):
            if None in values:
                bad = row - batch.num_rows + lo + values.index(None)
                raise ValueError(f"{source.path}, row {bad}: column {name!r} is empty (null); "
                                 "drop or fill such rows")
        yield cells[0], cells[1] if source.lang_column else None


def iter_rows(source: Source, start: int, stop: int, chunk: int
              ) -> Iterator[tuple[list[str], list[str]]]:
    """(texts, languages) of rows [start, stop) of `source`, at most `chunk` rows at a time."""
    read = _parquet_rows if source.kind == "parquet" else _line_rows
    for texts, langs in read(source, start, stop, chunk):
        yield texts, langs if langs is not None else [source.lang] * len(texts)
