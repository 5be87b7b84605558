"""File-to-file inference in bounded memory: inputs are read and results written chunk by chunk.

Embeddings go into a memory-mapped .npy opened with its final shape, so a corpus larger than RAM
is never collected in memory; standard input is first spooled to a temporary file (on disk) to
learn its length.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import pathlib
import shutil
import sys
import tempfile
from typing import IO, Iterator

import numpy as np
from tqdm import tqdm

from sonar_jax.cosine import as_output, check_output_dtype

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 8192  # sentences per chunk: sorted and batched together


@contextlib.contextmanager
def text_source(path: str) -> Iterator[pathlib.Path]:
    """A readable file for `path`, or for standard input when `path` is '-'."""
    if path != "-":
        if not pathlib.Path(path).is_file():
            raise FileNotFoundError(f"input file {path} does not exist")
        yield pathlib.Path(path)
        return
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt") as spool:
        shutil.copyfileobj(sys.stdin, spool)
        spool.flush()
        yield pathlib.Path(spool.name)


@dataclasses.dataclass(frozen=True)
class TextScan:
    """What a pass over an input text file found: its line count and which lines are blank."""
    lines: int
    blank: list[int]  # 1-based line numbers

    def warn_blank(self, label: str) -> None:
        if self.blank:
            shown = ", ".join(map(str, self.blank[:5])) + (", ..." if len(self.blank) > 5 else "")
            log.warning("%s: %d blank line(s) (line %s) are kept as empty sentences, one output "
                        "row each, so rows stay aligned with lines", label, len(self.blank), shown)


def scan_text(path: pathlib.Path, label: str) -> TextScan:
    """Reads `path` once before any work: counts its lines, notes blank ones, and refuses bytes
    that are not UTF-8 (naming the line and byte) or a file with no lines at all."""
    lines, blank = 0, []
    with open(path, "rb") as f:
        for lines, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{label} line {lines} is not UTF-8 (byte 0x{raw[error.start]:02x} at column "
                    f"{error.start + 1}); convert the file first, e.g. iconv -f LATIN1 -t UTF-8"
                ) from None
            if not text.strip():
                blank.append(lines)
    if lines == 0:
        raise ValueError(f"{label} is empty: there are no sentences to read")
    return TextScan(lines, blank)


def line_chunks(path: pathlib.Path, size: int) -> Iterator[list[str]]:
    with open(path, encoding="utf-8") as f:
        lines = (line.rstrip("\r\n") for line in f)
        while chunk := list(itertools.islice(lines, size)):
            yield chunk


def _bar(total: int, unit: str, enabled: bool) -> tqdm:
    return tqdm(total=total, unit=unit, file=sys.stderr, disable=not enabled, dynamic_ncols=True)


def encode_file(pipeline, source: pathlib.Path, total: int, output: pathlib.Path, lang: str, *,
                batch_size: int | None, batch_max_tokens: int | None,
                chunk: int = DEFAULT_CHUNK, progress: bool = True,
                normalize_embeddings: bool = False, output_dtype: str = "float32") -> int:
    """Embeds the `total` lines of `source` into `output` (.npy [N, D] of `output_dtype`, rows
    of unit length with `normalize_embeddings`), truncation counted over the whole file."""
    check_output_dtype(output_dtype)
    dim = pipeline.model.cfg.model_dim
    out = np.lib.format.open_memmap(output, mode="w+", dtype=output_dtype, shape=(total, dim))
    start = truncated = 0
    with _bar(total, "sent", progress) as bar:
        for sentences in line_chunks(source, chunk):
            tokens, chunk_truncated = pipeline.tokenize_counted(sentences, lang)
            truncated += chunk_truncated
            for indices, embeddings in pipeline.embed_tokens(
                    tokens, batch_size=batch_size, batch_max_tokens=batch_max_tokens):
                out[start + indices] = as_output(embeddings,
                                                 normalize_embeddings=normalize_embeddings,
                                                 output_dtype=output_dtype)
                bar.update(len(indices))
            start += len(sentences)
    out.flush()
    del out
    pipeline.warn_truncated(truncated, total)
    return total


def decode_file(pipeline, embeddings: np.ndarray, sink: IO[str], lang: str, *,
                chunk: int = DEFAULT_CHUNK, progress: bool = True, **generation) -> int:
    """Writes one decoded line per row of `embeddings` (e.g. a memory-mapped .npy, read a chunk
    at a time); returns the count."""
    with _bar(len(embeddings), "sent", progress) as bar:
        for start in range(0, len(embeddings), chunk):
            rows = np.asarray(embeddings[start:start + chunk])
            for text in pipeline.predict(rows, lang, **generation):
                sink.write(text + "\n")
            bar.update(len(rows))
    return len(embeddings)


def translate_file(pipeline, source: pathlib.Path, total: int, sink: IO[str], src: str, tgt: str,
                   *, chunk: int = DEFAULT_CHUNK, progress: bool = True, **generation) -> int:
    """Translates the `total` lines of `source` into `sink`, truncation counted over the whole
    file; returns the count."""
    encoder = pipeline.text_to_embedding
    truncated = 0
    with _bar(total, "sent", progress) as bar:
        for sentences in line_chunks(source, chunk):
            tokens, chunk_truncated = encoder.tokenize_counted(sentences, src)
            truncated += chunk_truncated
            for text in pipeline.translate_tokens(tokens, tgt, **generation):
                sink.write(text + "\n")
            bar.update(len(sentences))
    encoder.warn_truncated(truncated, total)
    return total
