"""File-to-file inference in bounded memory: inputs are read and results written chunk by chunk.

Embeddings go into a memory-mapped .npy opened with its final shape, so a corpus larger than RAM
is never collected in memory; standard input is first spooled to a temporary file (on disk) to
learn its length.
"""

from __future__ import annotations

import contextlib
import itertools
import pathlib
import shutil
import sys
import tempfile
from typing import IO, Iterator

import numpy as np
from tqdm import tqdm

from sonar_jax.cosine import as_output, check_output_dtype

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


def count_lines(path: pathlib.Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def line_chunks(path: pathlib.Path, size: int) -> Iterator[list[str]]:
    with open(path, encoding="utf-8") as f:
        lines = (line.rstrip("\r\n") for line in f)
        while chunk := list(itertools.islice(lines, size)):
            yield chunk


def _bar(total: int, unit: str, enabled: bool) -> tqdm:
    return tqdm(total=total, unit=unit, file=sys.stderr, disable=not enabled, dynamic_ncols=True)


def encode_file(pipeline, source: pathlib.Path, output: pathlib.Path, lang: str, *,
                batch_size: int | None, batch_max_tokens: int | None,
                chunk: int = DEFAULT_CHUNK, progress: bool = True,
                normalize_embeddings: bool = False, output_dtype: str = "float32") -> int:
    """Embeds every line of `source` into `output` (.npy [N, D] of `output_dtype`, rows of unit
    length with `normalize_embeddings`); returns N."""
    check_output_dtype(output_dtype)
    total = count_lines(source)
    dim = pipeline.model.cfg.model_dim
    out = np.lib.format.open_memmap(output, mode="w+", dtype=output_dtype, shape=(total, dim))
    start = 0
    with _bar(total, "sent", progress) as bar:
        for sentences in line_chunks(source, chunk):
            tokens = pipeline.tokenize(sentences, lang)
            for indices, embeddings in pipeline.embed_tokens(
                    tokens, batch_size=batch_size, batch_max_tokens=batch_max_tokens):
                out[start + indices] = as_output(embeddings,
                                                 normalize_embeddings=normalize_embeddings,
                                                 output_dtype=output_dtype)
                bar.update(len(indices))
            start += len(sentences)
    out.flush()
    del out
    return total


def decode_file(pipeline, embeddings_path: pathlib.Path, sink: IO[str], lang: str, *,
                chunk: int = DEFAULT_CHUNK, progress: bool = True, **generation) -> int:
    """Writes one decoded line per row of the .npy at `embeddings_path`; returns the count."""
    embeddings = np.load(embeddings_path, mmap_mode="r")
    with _bar(len(embeddings), "sent", progress) as bar:
        for start in range(0, len(embeddings), chunk):
            rows = np.asarray(embeddings[start:start + chunk])
            for text in pipeline.predict(rows, lang, **generation):
                sink.write(text + "\n")
            bar.update(len(rows))
    return len(embeddings)


def translate_file(pipeline, source: pathlib.Path, sink: IO[str], src: str, tgt: str, *,
                   chunk: int = DEFAULT_CHUNK, progress: bool = True, **generation) -> int:
    """Translates every line of `source` into `sink`; returns the count."""
    total = count_lines(source)
    with _bar(total, "sent", progress) as bar:
        for sentences in line_chunks(source, chunk):
            for text in pipeline.predict(sentences, src, tgt, **generation):
                sink.write(text + "\n")
            bar.update(len(sentences))
    return total
