"""Embedding shards on disk, the manifest that lists them, and reading a finished output back.

A `sonar-jax embed` output folder:

    run.json              settings, model and tokenizer identity, inputs; written first, and a
                          restarted run must match it
    shards/NNNNNN.npy     one shard's embeddings [rows, D], rows in input order (or .parquet:
                          one fixed-size-list column `embedding`)
    shards/NNNNNN.json    its record: source file and row range, global rows, sha256 of the
                          shard file, model and tokenizer digests
    manifest.json         run.json plus every record in order; written last, once the records
                          cover every input row exactly once, in input order
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Iterator

import numpy as np

from sonar_jax.corpus import inputs
from sonar_jax.outputs import atomic_text

FORMAT_VERSION = 1
RUN_FILE, MANIFEST_FILE, SHARDS_DIR = "run.json", "manifest.json", "shards"
DTYPES = ("float32", "float16")
DEFAULT_SHARD_ROWS = 50_000


class NpyShards:
    """Shards as .npy files, filled through a memory map (a shard never sits in RAM)."""

    suffix = ".npy"

    def create(self, path: pathlib.Path, rows: int, dim: int, dtype: str) -> np.ndarray:
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(rows, dim))

    def finish(self, buffer: np.ndarray, path: pathlib.Path) -> None:
        buffer.flush()

    def read(self, path: pathlib.Path) -> np.ndarray:
        return np.load(path, mmap_mode="r")


class ParquetShards:
    """Shards as Parquet files with one fixed-size-list column (filled in RAM, then written)."""

    suffix = ".parquet"
    column = "embedding"

    def create(self, path: pathlib.Path, rows: int, dim: int, dtype: str) -> np.ndarray:
        inputs._parquet()  # fail before any work when pyarrow is missing
        return np.zeros((rows, dim), dtype)

    def finish(self, buffer: np.ndarray, path: pathlib.Path) -> None:
        import pyarrow as pa

        values = pa.FixedSizeListArray.from_arrays(pa.array(buffer.reshape(-1)),
                                                   buffer.shape[1])
        inputs._parquet().write_table(pa.table({self.column: values}), path)

    def read(self, path: pathlib.Path) -> np.ndarray:
        column = inputs._parquet().read_table(path, columns=[self.column]).column(self.column)
        values = column.combine_chunks()
        return values.flatten().to_numpy().reshape(len(values), values.type.list_size)


FORMATS = {"npy": NpyShards(), "parquet": ParquetShards()}


def write_json(path: pathlib.Path, value: dict) -> None:
    with atomic_text(path) as out:
        out.write(json.dumps(value, indent=1, ensure_ascii=False) + "\n")


def read_json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is damaged ({error}); pass --overwrite to embed again") from None


def check_coverage(manifest: dict, where: pathlib.Path) -> None:
    """Raises unless the shards cover every row of every source once, in input order."""
    sources = manifest["sources"]
    source, done, row = 0, 0, 0  # the next row expected: of which source, and overall

    def next_unfinished(source: int, done: int) -> tuple[int, int]:
        while source < len(sources) and done == sources[source]["rows"]:
            source, done = source + 1, 0
        return source, done

    for shard in manifest["shards"]:
        source, done = next_unfinished(source, done)
        (start, stop), (first, last) = shard["source_rows"], shard["rows"]
        if (source == len(sources) or shard["source"] != source or start != done
                or first != row or not 0 < stop - start == last - first
                or stop > sources[source]["rows"]):
            raise ValueError(f"{where}: {shard['file']} is not the next rows of the inputs "
                             "(rows missing, repeated or out of order); pass --overwrite to "
                             "embed again")
        done, row = stop, last
    source, done = next_unfinished(source, done)
    if source != len(sources) or row != manifest["rows"]:
        what = sources[source]["path"] if source < len(sources) else "the inputs"
        raise ValueError(f"{where}: rows {done}.. of {what} are in no shard; pass --overwrite "
                         "to embed again")


class EmbeddingCorpus:
    """A finished `sonar-jax embed` output, read shard by shard (rows in input order)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = pathlib.Path(folder)
        self.name = f"the embeddings in {self.folder}"
        path = self.folder / MANIFEST_FILE
        if not path.is_file():
            hint = ("its embed run has not finished: rerun the same `sonar-jax embed` command to "
                    "complete it" if (self.folder / RUN_FILE).is_file()
                    else "pass the --output folder of `sonar-jax embed`")
            raise FileNotFoundError(f"{self.folder} has no {MANIFEST_FILE}; {hint}")
        self.manifest = read_json(path)
        if self.manifest.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: manifest format {self.manifest.get('format')!r}, this "
                             f"sonar_jax reads {FORMAT_VERSION}")
        check_coverage(self.manifest, path)
        self.dim = int(self.manifest["dim"])
        self._format = FORMATS[self.manifest["output"]["format"]]
        self._bounds = np.array([s["rows"][0] for s in self.manifest["shards"]]
                                + [self.manifest["rows"]], np.int64)
        self._cached: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.manifest["rows"])

    def _shard(self, number: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != number:
            record = self.manifest["shards"][number]
            array = self._format.read(self.folder / record["file"])
            if array.shape != (record["rows"][1] - record["rows"][0], self.dim):
                raise ValueError(f"{self.folder / record['file']} holds shape "
                                 f"{list(array.shape)}, its record says "
                                 f"{record['rows'][1] - record['rows'][0]} x {self.dim}; "
                                 "embed again with --overwrite")
            self._cached = (number, array)
        return self._cached[1]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Embeddings of the given rows (ascending), as float32 [len(rows), D]."""
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), self.dim), np.float32)
        shard_of = np.searchsorted(self._bounds, rows, side="right") - 1
        for number in np.unique(shard_of):
            where = np.flatnonzero(shard_of == number)
            out[where] = self._shard(int(number))[rows[where] - self._bounds[number]]
        return out

    def texts(self, chunk: int = 65536) -> Iterator[tuple[list[str], list[str]]]:
        """(texts, languages) of every row in order, from the inputs, which must be unchanged."""
        for record in self.manifest["sources"]:
            path = pathlib.Path(record["path"])
            if not path.is_file():
                raise FileNotFoundError(f"{path}, an input of {self.folder}, is gone; mining "
                                        "needs the embedded texts where they were")
            source = inputs.open_source(path, lang=record["lang"],
                                        text_column=record["text_column"] or "text",
                                        lang_column=record["lang_column"],
                                        block_rows=max(record["rows"], 1))
            if source.sha256 != record["sha256"]:
                raise ValueError(f"{path} changed since it was embedded into {self.folder} "
                                 "(sha256 differs); restore it or embed it again")
            yield from inputs.iter_rows(source, 0, source.rows, chunk)
