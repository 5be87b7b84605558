"""Outputs that appear whole or not at all.

Every file or directory the package writes for a user (embeddings, decoded text, scores, model
directories, corpus shards) is written under a temporary sibling name and renamed when complete,
so an interrupted run (an error, Ctrl-C, SIGTERM) never leaves a file that a later step would
take for a finished one. A run killed outright (SIGKILL, power loss) can leave `NAME.partial`:
unmistakably unfinished, and replaced by the next run.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from typing import Iterator, TextIO

from sonar_jax import stopping
from sonar_jax.errors import UsageError

PARTIAL_SUFFIX = ".partial"


def check_new(path: str | os.PathLike, overwrite: bool) -> None:
    """Refuses an output that exists (FileExistsError, unless `overwrite`) or whose folder does
    not (UsageError)."""
    path = pathlib.Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    folder = path.absolute().parent
    if not folder.is_dir():
        raise UsageError(f"cannot write {path}: the folder {folder} does not exist; create it "
                         "first or choose another output")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yields `PATH.partial` to write; it replaces `path` only if the block completes, and is
    removed otherwise (a reader sees the old file or the whole new one)."""
    path = pathlib.Path(path)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        yield partial
        stopping.check()  # a stop whose exception Python dropped still keeps this out
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_text(path: str | os.PathLike) -> Iterator[TextIO]:
    """A UTF-8 text file to write, replacing `path` only once complete (see `atomic_path`)."""
    with atomic_path(path) as partial, open(partial, "w", encoding="utf-8") as out:
        yield out


@contextlib.contextmanager
def atomic_directory(out_dir: str | os.PathLike, overwrite: bool = False
                     ) -> Iterator[pathlib.Path]:
    """Yields a temporary sibling folder of `out_dir`, renamed to it only if the block completes
    (and removed otherwise). An existing `out_dir` is refused, or with `overwrite` replaced only
    once the new one is complete; missing parent folders are created (a model store starts
    empty)."""
    out_dir = pathlib.Path(out_dir).absolute()
    check_existing_directory(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}{PARTIAL_SUFFIX}-",
                                        dir=out_dir.parent))
    try:
        yield tmp
        stopping.check()
        if out_dir.exists():
            replaced = out_dir.with_name(f".{out_dir.name}.replaced-{os.getpid()}")
            os.rename(out_dir, replaced)
            os.rename(tmp, out_dir)
            if replaced.is_dir():
                shutil.rmtree(replaced)
            else:
                replaced.unlink()
        else:
            os.rename(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_existing_directory(out_dir: str | os.PathLike, overwrite: bool) -> None:
    """Refuses an output directory that exists unless `overwrite` (checked before long work)."""
    if pathlib.Path(out_dir).exists() and not overwrite:
        raise FileExistsError(f"{pathlib.Path(out_dir).absolute()} already exists; pass "
                              "--overwrite to replace it, or choose a new output directory")
