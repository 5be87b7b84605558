"""The teacher cache of speech distillation: the frozen text teacher's embedding of every
manifest row's transcription, computed once (`sonar-jax data teacher-cache`), so training skips
the teacher's forward pass. A sidecar JSON fingerprints the rows it was made from.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any, Callable, Sequence

import numpy as np

from sonar_jax.data.manifests import ManifestRow, read_manifests
from sonar_jax.outputs import atomic_path


def _fingerprint(rows: Sequence[ManifestRow]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(f"{row.lang}\t{row.text}\n".encode("utf-8"))
    return digest.hexdigest()


def _sidecar(cache_path: str | os.PathLike) -> pathlib.Path:
    return pathlib.Path(f"{os.fspath(cache_path)}.json")


def cache_teacher_embeddings(manifest_paths: Sequence[str | os.PathLike],
                             embed_fn: Callable[[list[str], str], np.ndarray],
                             out_path: str | os.PathLike, *, lang: str = "",
                             batch_size: int = 256) -> dict[str, Any]:
    """Embeds every manifest row's transcription once: `out_path` (.npy, float32 [rows, D], row
    i = row i of the manifests in order, dropped clips included) and `out_path.json` (the
    manifests, row count, dimension and a sha256 of the rows' languages and texts, which the
    pipeline checks so a stale cache is refused). `embed_fn(texts, lang)` -> [len(texts), D].
    Training with the cache then skips the teacher's forward pass. Returns the sidecar's fields.
    """
    rows = read_manifests(manifest_paths, lang)
    by_lang: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_lang.setdefault(row.lang, []).append(index)
    with atomic_path(out_path) as partial:
        table = None
        for row_lang, positions in by_lang.items():
            for start in range(0, len(positions), batch_size):
                chunk = positions[start:start + batch_size]
                embeddings = np.asarray(embed_fn([rows[i].text for i in chunk], row_lang),
                                        np.float32)
                if embeddings.ndim != 2 or embeddings.shape[0] != len(chunk):
                    raise ValueError(f"embed_fn returned shape {embeddings.shape} for "
                                     f"{len(chunk)} texts; expected [texts, dim]")
                if table is None:
                    table = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32,
                                                      shape=(len(rows), embeddings.shape[1]))
                table[chunk] = embeddings
        if table is None:
            raise ValueError(f"the manifests {list(map(str, manifest_paths))} have no rows")
        table.flush()
        info = {"manifests": [os.fspath(p) for p in manifest_paths], "rows": len(rows),
                "dim": int(table.shape[1]), "fingerprint": _fingerprint(rows)}
        del table
    _sidecar(out_path).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return info


def check_teacher_cache(path: str | os.PathLike, rows: Sequence[ManifestRow]) -> int:
    """The embedding width of the cache at `path`, after checking that it was made from exactly
    these manifest rows (texts, languages, order) and has the shape its sidecar says."""
    path = os.fspath(path)
    sidecar = _sidecar(path)
    redo = "rebuild it with `sonar-jax data teacher-cache` (or cache_teacher_embeddings)"
    if not os.path.isfile(path) or not sidecar.is_file():
        raise FileNotFoundError(f"teacher cache {path} or its {sidecar.name} is missing; {redo}")
    info = json.loads(sidecar.read_text(encoding="utf-8"))
    if info.get("rows") != len(rows) or info.get("fingerprint") != _fingerprint(rows):
        raise ValueError(f"teacher cache {path} is stale: it was made from {info.get('rows')} "
                         f"rows of {info.get('manifests')}, which differ from the {len(rows)} "
                         f"rows of these manifests (texts, languages or order); {redo}")
    shape = np.load(path, mmap_mode="r").shape
    if shape != (len(rows), info.get("dim")):
        raise ValueError(f"teacher cache {path} has shape {shape}, its sidecar says "
                         f"({len(rows)}, {info.get('dim')}); {redo}")
    return int(shape[1])
