"""`sonar-jax embed`: a corpus cut into shards, shared over the processes of a job, each shard
written once; a rerun of the same command resumes.

Shards follow from the inputs and `shard_rows` alone (each is the next `shard_rows` rows of one
file) and shard i belongs to process i mod P, so processes agree on the split without talking
and the bytes do not depend on how many there are (given the same devices per process: XLA's
arithmetic can differ in the last bit between batch shapes). A shard appears by one rename once
complete, then its record; a rerun skips shards whose record and bytes check out and redoes the
rest. Process 0 writes the manifest when every process is done (see `shards` for the layout).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pathlib
import shutil
import sys
import time
from typing import Iterator, Sequence

import jax
import numpy as np

from sonar_jax import multihost
from sonar_jax.corpus import inputs, shards
from sonar_jax.corpus.identity import file_sha256, model_identity, tokenizer_identity
from sonar_jax.outputs import atomic_path
from sonar_jax.prefetch import prefetch
from sonar_jax.streaming import DEFAULT_CHUNK
from sonar_jax.tokenizer import UnknownLanguageError

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class Shard:
    number: int
    source: int  # index into the sources
    start: int   # rows [start, stop) of that source
    stop: int
    row: int     # global index of its first row

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def name(self) -> str:
        return f"{self.number:06d}"


def plan_shards(sources: Sequence[inputs.Source], shard_rows: int) -> list[Shard]:
    """Every source cut into runs of `shard_rows` rows (the last of each file shorter)."""
    out, row = [], 0
    for index, source in enumerate(sources):
        for start in range(0, source.rows, shard_rows):
            stop = min(start + shard_rows, source.rows)
            out.append(Shard(len(out), index, start, stop, row))
            row += stop - start
    return out


def _owner(shard: Shard) -> int:
    return shard.number % jax.process_count()


def _check_same_run(old: dict, new: dict, folder: pathlib.Path) -> None:
    """Raises, naming what differs, unless `new` continues the run that wrote `old`."""
    then = {s["path"]: s for s in old.get("sources", [])}
    for source in new["sources"]:
        before = then.get(source["path"])
        if before is not None and before["sha256"] != source["sha256"]:
            raise ValueError(
                f"input {source['path']} changed since {folder / shards.RUN_FILE} was written "
                f"(sha256 {before['sha256'][:12]}... then, {source['sha256'][:12]}... now); "
                "restore it, or pass --overwrite to embed everything again")
    if old.get("sources") != new["sources"]:
        raise ValueError(f"{folder} was started on other inputs ({', '.join(then)}); pass the "
                         "same inputs, another --output, or --overwrite")
    for part in ("model", "tokenizer"):
        if old.get(part, {}).get("sha256") != new[part]["sha256"]:
            raise ValueError(f"{folder} holds embeddings made with another {part} "
                             f"({old.get(part)}); pass that one, another --output, or "
                             "--overwrite")
    for key, value in new.items():
        if key not in ("sources", "model", "tokenizer") and old.get(key) != value:
            raise ValueError(f"{folder} was started with {key} = {old.get(key)} (now {value}); "
                             "pass the same options, another --output, or --overwrite")


class _Output:
    """The output folder: preparing it, checking finished shards, writing shards and records."""

    def __init__(self, folder: pathlib.Path, spec: dict):
        self.folder, self.spec = folder, spec
        self.format = shards.FORMATS[spec["output"]["format"]]
        self.shard_dir = folder / shards.SHARDS_DIR

    def data_path(self, shard: Shard) -> pathlib.Path:
        return self.shard_dir / (shard.name + self.format.suffix)

    def record_path(self, shard: Shard) -> pathlib.Path:
        return self.shard_dir / (shard.name + ".json")

    def prepare(self, overwrite: bool) -> None:
        """Checks the folder on every process; once all have, process 0 clears (--overwrite) and
        starts it (so no process checks what another is writing)."""
        run = self.folder / shards.RUN_FILE
        if self.folder.exists() and not self.folder.is_dir():
            raise FileExistsError(f"--output {self.folder} is a file; name a folder")
        if self.folder.is_dir() and any(self.folder.iterdir()):
            if not run.is_file():
                raise FileExistsError(f"{self.folder} exists and is not a sonar-jax embed "
                                      f"output (no {shards.RUN_FILE}); choose another --output")
            if not overwrite:
                _check_same_run(shards.read_json(run), self.spec, self.folder)
        multihost.barrier("sonar_jax.embed.checked")
        if jax.process_index() == 0:
            if overwrite and run.is_file():
                shutil.rmtree(self.shard_dir, ignore_errors=True)
                for name in (shards.MANIFEST_FILE, shards.RUN_FILE):
                    (self.folder / name).unlink(missing_ok=True)
            self.shard_dir.mkdir(parents=True, exist_ok=True)
            if not run.is_file():
                shards.write_json(run, self.spec)
        multihost.barrier("sonar_jax.embed.prepare")

    def record(self, shard: Shard, sha256: str) -> dict:
        return {"file": f"{shards.SHARDS_DIR}/{self.data_path(shard).name}",
                "source": shard.source, "source_rows": [shard.start, shard.stop],
                "rows": [shard.row, shard.row + shard.rows], "sha256": sha256,
                "model": self.spec["model"]["sha256"],
                "tokenizer": self.spec["tokenizer"]["sha256"]}

    def finished(self, shard: Shard) -> bool:
        """Whether `shard` is on disk, complete and intact (a damaged one is redone)."""
        path = self.record_path(shard)
        if not path.is_file():
            return False
        record = shards.read_json(path)
        data = self.data_path(shard)
        if (record.get("model"), record.get("tokenizer")) != (self.spec["model"]["sha256"],
                                                              self.spec["tokenizer"]["sha256"]):
            raise ValueError(f"{data} was written by another model or tokenizer than this "
                             f"run's ({self.spec['model']['name']}); remove it, or pass "
                             "--overwrite to embed everything again")
        if (not data.is_file() or record != self.record(shard, record.get("sha256"))
                or file_sha256(data) != record["sha256"]):
            log.warning("%s is incomplete or damaged; embedding it again", data)
            return False
        return True

    @contextlib.contextmanager
    def writing(self, shard: Shard) -> Iterator[np.ndarray]:
        """A [rows, D] buffer to fill; on success the shard appears, then its record."""
        with atomic_path(self.data_path(shard)) as partial:
            buffer = self.format.create(partial, shard.rows, self.spec["dim"],
                                        self.spec["output"]["dtype"])
            yield buffer
            self.format.finish(buffer, partial)
            del buffer
            sha256 = file_sha256(partial)
        shards.write_json(self.record_path(shard), self.record(shard, sha256))

    def write_manifest(self, plan: Sequence[Shard]) -> dict:
        records = [shards.read_json(self.record_path(s)) for s in plan]
        manifest = {**self.spec, "rows": sum(s.rows for s in plan), "shards": records}
        path = self.folder / shards.MANIFEST_FILE
        shards.check_coverage(manifest, path)
        shards.write_json(path, manifest)
        return manifest


class _Progress:
    """Process 0's bar over every process's rows: its own as they are embedded, the others' as
    their shard records appear (polled every few seconds), so the rate is the whole job's."""

    def __init__(self, output: _Output, plan: Sequence[Shard], todo: Sequence[Shard],
                 enabled: bool):
        from tqdm import tqdm

        self.output = output
        self.watching = enabled and jax.process_index() == 0
        self.others = [s for s in plan if self.watching and _owner(s) != 0
                       and not output.record_path(s).is_file()]
        pending = sum(s.rows for s in todo) + sum(s.rows for s in self.others)
        total = sum(s.rows for s in plan)
        self.bar = tqdm(total=total, initial=total - pending, unit="sent", file=sys.stderr,
                        disable=not self.watching, dynamic_ncols=True, smoothing=0.1)
        self.last_poll = time.monotonic()

    def update(self, rows: int) -> None:
        self.bar.update(rows)
        if self.others and time.monotonic() - self.last_poll > POLL_SECONDS:
            self.poll()

    def poll(self) -> None:
        self.last_poll = time.monotonic()
        done = [s for s in self.others if self.output.record_path(s).is_file()]
        self.bar.update(sum(s.rows for s in done))
        self.others = [s for s in self.others if s not in done]


def _tokenize(pipeline, texts: list[str], langs: list[str], source: inputs.Source,
              first_row: int) -> list[list[int]]:
    """Ids of each text in its own language (rows may mix languages)."""
    by_lang: dict[str, list[int]] = {}
    for position, lang in enumerate(langs):
        by_lang.setdefault(lang, []).append(position)
    tokens: list[list[int]] = [[] for _ in texts]
    for lang, positions in by_lang.items():
        try:
            ids = pipeline.tokenize([texts[p] for p in positions], lang)
        except UnknownLanguageError as error:
            raise ValueError(f"{source.path}, row {first_row + positions[0]}: {error}") from None
        for position, row_ids in zip(positions, ids):
            tokens[position] = row_ids
    return tokens


def _tokenized_chunks(pipeline, sources: Sequence[inputs.Source], todo: Sequence[Shard],
                      chunk: int) -> Iterator[tuple[Shard, int, list[list[int]]]]:
    """(shard, offset within it, token ids) chunk by chunk: the reading and tokenizing that
    `prefetch` runs ahead of the device."""
    for shard in todo:
        source, offset = sources[shard.source], 0
        for texts, langs in inputs.iter_rows(source, shard.start, shard.stop, chunk):
            yield shard, offset, _tokenize(pipeline, texts, langs, source, shard.start + offset)
            offset += len(texts)


@dataclasses.dataclass(frozen=True)
class EmbedResult:
    manifest: dict
    embedded: int   # rows embedded by this run, all processes together (0: all were done)
    seconds: float  # shards only: loading the model and scanning the inputs excluded

    @property
    def rate(self) -> float:
        """Sentences per second of the whole job."""
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


def embed_corpus(inputs_: Sequence[str | os.PathLike], output: str | os.PathLike, *,
                 model: str | os.PathLike, lang: str | None = None, text_column: str = "text",
                 lang_column: str | None = None, shard_rows: int = shards.DEFAULT_SHARD_ROWS,
                 shard_format: str = "npy", output_dtype: str = "float32",
                 batch_size: int | None = 64, batch_max_tokens: int | None = None,
                 dtype: str | None = None, devices: Sequence[jax.Device] | None = None,
                 chunk: int = DEFAULT_CHUNK, overwrite: bool = False,
                 progress: bool = True) -> EmbedResult:
    """Embeds every row of `inputs_` into the folder `output` with the text encoder `model`
    (a converted directory). Call it on every process of a `jax.distributed` job (each takes
    its shards) or in one process (it takes them all)."""
    from sonar_jax.pipelines import TextToEmbeddingModelPipeline

    if shard_format not in shards.FORMATS:
        raise ValueError(f"unknown shard format {shard_format!r}; choose "
                         f"{' or '.join(shards.FORMATS)}")
    if output_dtype not in shards.DTYPES:
        raise ValueError(f"output dtype {output_dtype!r}: choose {' or '.join(shards.DTYPES)}")
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be positive, got {shard_rows}")
    sources = inputs.open_inputs(inputs_, lang=lang, text_column=text_column,
                                 lang_column=lang_column, block_rows=shard_rows)
    pipeline = TextToEmbeddingModelPipeline(model, dtype=dtype, devices=devices)
    for source in sources:
        if source.lang is not None:
            try:
                pipeline.tokenizer.lang_id(source.lang)
            except UnknownLanguageError as error:
                raise ValueError(f"{source.path}: {error}") from None
    spec = {"format": shards.FORMAT_VERSION,
            "model": model_identity(pipeline.model, pathlib.Path(model).name),
            "tokenizer": tokenizer_identity(pipeline.tokenizer),
            "dim": pipeline.model.cfg.model_dim,
            "output": {"format": shard_format, "dtype": output_dtype},
            "shard_rows": shard_rows,
            "batching": {"batch_size": batch_size, "batch_max_tokens": batch_max_tokens,
                         "chunk_rows": chunk},
            "sources": [s.describe() for s in sources]}
    out = _Output(pathlib.Path(output), spec)
    out.prepare(overwrite)

    plan = plan_shards(sources, shard_rows)
    todo = [s for s in plan if _owner(s) == jax.process_index() and not out.finished(s)]
    started = time.monotonic()
    bar = _Progress(out, plan, todo, progress)
    # The shard being filled is the one context in `current`: it is published when its last
    # chunk is in, and its partial file removed if anything (SIGTERM included) stops the loop.
    with bar.bar, contextlib.ExitStack() as current:
        buffer = None
        for shard, offset, tokens in prefetch(_tokenized_chunks(pipeline, sources, todo, chunk)):
            if offset == 0:
                buffer = current.enter_context(out.writing(shard))
            for indices, embeddings in pipeline.embed_tokens(
                    tokens, batch_size=batch_size, batch_max_tokens=batch_max_tokens):
                buffer[offset + indices] = embeddings
                bar.update(len(indices))
            if offset + len(tokens) == shard.rows:
                buffer = None
                current.close()
        multihost.barrier("sonar_jax.embed.done")
        bar.poll()
    seconds = time.monotonic() - started
    done_here = np.array([sum(s.rows for s in todo)], np.int32)
    embedded = int(multihost.gather_rows(done_here, jax.process_count()).sum())
    if jax.process_index() == 0:
        out.write_manifest(plan)
    multihost.barrier("sonar_jax.embed.manifest")
    return EmbedResult(shards.read_json(out.folder / shards.MANIFEST_FILE), embedded, seconds)
