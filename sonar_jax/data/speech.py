"""The grain pipeline for speech-encoder distillation: speech manifests -> frame-budget batches of
padded waveforms with their transcriptions' teacher tokens (or cached teacher embeddings).

Manifests are TSV files with a header row, as the corpus builders write them
(`audio, transcription, lang, ...`): `audio` is relative to the manifest's folder or absolute;
`text`, `raw_text` and `tgt_text` are accepted for `transcription`; `lang` (an NLLB code) may be
left out when the config's `lang` gives it. An optional `duration` (seconds) or `n_samples`
(samples at 16 kHz) column saves reading each file's header when the source is built.

The window machinery is the text pipeline's (pipeline.py: per-host shard, shuffle per epoch,
repeat, windows, grain workers, bucket counts agreed across hosts, resumable state). Each window
is decoded (`sonar_jax.audio.load_audio`: 16 kHz mono), tokenized in source mode, and bucketed by
fbank frame count (`audio.num_frames`), so batches are

    {"waveform":    float32 [rows, S],  S = FRAME_LENGTH + FRAME_SHIFT * (F - 1), 0-padded
     "num_samples": int32   [rows],     0 for pad rows
     "text":        int32   [rows, max_text_len], 0-padded, all 0 for pad rows
     "teacher":     float32 [rows, D]}  only with a teacher cache; 0 for pad rows

for the bucket's frame count F: the padded waveform gives exactly F fbank frames, a row's first
`num_frames(num_samples)` of them being the clip's. Waveforms are cut to their last whole frame
(fbank never reads the rest). rows * F <= batch_max_frames, rows a multiple of `rows_multiple`.
Fbank and SpecAugment run on device in the training step.

Clips outside [min_seconds, max_seconds] (by the manifest or header duration) are dropped when
the source is built and counted; a clip whose decoded length runs past the longest bucket (a
manifest that understates it) is cropped to it. A file that exists but cannot be decoded is
skipped with one warning per file, and counted (the iterator's `skips`, a SkipStats).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import grain
import ml_collections
import numpy as np

from sonar_jax import audio
from sonar_jax.data import buckets
from sonar_jax.data.pipeline import (WindowBatchIterDataset, resolve_shard, tokenize,
                                     window_dataset)
from sonar_jax.tokenizer import NllbTokenizer, UnknownLanguageError

TEXT_COLUMNS = ("transcription", "text", "raw_text", "tgt_text")  # first present wins


class ManifestRow(NamedTuple):
    audio: str  # path, joined to the manifest's folder
    text: str
    lang: str
    num_samples: int | None  # at 16 kHz, from a duration or n_samples column
    where: str  # "manifest, line N", for error messages


def read_manifest(path: str | os.PathLike, lang: str = "") -> list[ManifestRow]:
    """The rows of one manifest, audio paths joined to its folder; files are not opened."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"speech manifest {path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t") if lines else []
    text_column = next((name for name in TEXT_COLUMNS if name in header), None)
    if "audio" not in header or text_column is None:
        raise ValueError(f"{path}, line 1: the header must name an `audio` column and one of "
                         f"{', '.join(TEXT_COLUMNS)}; got {header}")
    if "lang" not in header and not lang:
        raise ValueError(f"{path} has no lang column; set the data config's lang (an NLLB code "
                         "such as nld_Latn) or add the column")
    column = {name: header.index(name) for name in header}
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        where = f"{path}, line {number}"
        cells = line.split("\t")
        if len(cells) != len(header):
            raise ValueError(f"{where}: {len(cells)} tab-separated columns, expected "
                             f"{len(header)} as in the header")
        row_lang = cells[column["lang"]] if "lang" in column else lang
        if not row_lang or any(ch.isspace() for ch in row_lang):
            raise ValueError(f"{where}: {row_lang!r} is not a language code (e.g. 'nld_Latn')")
        rows.append(ManifestRow(str(path.parent / cells[column["audio"]]),
                                cells[column[text_column]], row_lang,
                                _declared_samples(cells, column, where), where))
    return rows


def _declared_samples(cells: list[str], column: dict[str, int], where: str) -> int | None:
    """Samples at 16 kHz from a duration or n_samples column, None without either."""
    try:
        if "duration" in column:
            return round(float(cells[column["duration"]]) * audio.SAMPLE_RATE)
        if "n_samples" in column:
            return int(cells[column["n_samples"]])
    except ValueError:
        raise ValueError(f"{where}: duration/n_samples is not a number") from None
    return None


def read_manifests(paths: Sequence[str | os.PathLike], lang: str = "") -> list[ManifestRow]:
    """The rows of several manifests, in order: row i is the teacher cache's row i."""
    if not paths:
        raise ValueError("no speech manifest given (data config `manifest`)")
    return [row for path in paths for row in read_manifest(path, lang)]


def _header_samples(row: ManifestRow) -> int:
    """A clip's length at 16 kHz from its file header, as load_audio will resample it."""
    import soundfile  # the audio extra, as in sonar_jax.audio
    try:
        info = soundfile.info(row.audio)
        return math.ceil(info.frames * audio.SAMPLE_RATE / info.samplerate)  # librosa's length
    except (RuntimeError, TypeError):
        pass
    try:
        import librosa
        with warnings.catch_warnings():  # librosa warns that soundfile failed: we know
            warnings.simplefilter("ignore")
            return round(librosa.get_duration(path=row.audio) * audio.SAMPLE_RATE)
    except Exception as error:  # audioread raises its own types; all mean "no header"
        raise ValueError(f"{row.where}: cannot read the audio header of {row.audio} ({error}); "
                         "fix or remove the file, or give a duration column") from None


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
    out_path = pathlib.Path(out_path)
    partial = out_path.with_name(out_path.name + ".partial")
    table = None
    for row_lang, positions in by_lang.items():
        for start in range(0, len(positions), batch_size):
            chunk = positions[start:start + batch_size]
            embeddings = np.asarray(embed_fn([rows[i].text for i in chunk], row_lang), np.float32)
            if embeddings.ndim != 2 or embeddings.shape[0] != len(chunk):
                raise ValueError(f"embed_fn returned shape {embeddings.shape} for {len(chunk)} "
                                 "texts; expected [texts, dim]")
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
    os.replace(partial, out_path)
    _sidecar(out_path).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return info


class SpeechSource:
    """Random-access clips of speech manifests: {audio, text, lang, row[, teacher]} records.

    Built once per run: every audio file must exist and, without a duration column, have a
    readable header (errors name the manifest line); clips outside [min_seconds, max_seconds]
    are dropped and counted in `dropped`. `row` is the clip's row in the manifests, which indexes
    the teacher cache (checked against the manifests' fingerprint).
    """

    def __init__(self, paths: Sequence[str | os.PathLike], *, lang: str = "",
                 min_seconds: float = 0.0, max_seconds: float = math.inf,
                 teacher_cache: str | os.PathLike = ""):
        rows = read_manifests(paths, lang)
        self._where: dict[str, str] = {}
        self.dropped = {"shorter_than_min_seconds": 0, "longer_than_max_seconds": 0}
        self._rows, self._audio, self._texts, self._langs = [], [], [], []
        for index, row in enumerate(rows):
            if not os.path.isfile(row.audio):
                raise FileNotFoundError(f"{row.where}: audio file {row.audio} does not exist")
            samples = row.num_samples if row.num_samples is not None else _header_samples(row)
            seconds = samples / audio.SAMPLE_RATE
            if seconds < min_seconds or audio.num_frames(samples) == 0:
                self.dropped["shorter_than_min_seconds"] += 1
            elif seconds > max_seconds:
                self.dropped["longer_than_max_seconds"] += 1
            else:
                self._where.setdefault(row.lang, row.where)
                self._rows.append(index)
                self._audio.append(row.audio)
                self._texts.append(row.text)
                self._langs.append(row.lang)
        self.langs = sorted(self._where)
        self._teacher_path = os.fspath(teacher_cache) if teacher_cache else ""
        self.teacher_dim = self._check_teacher(rows) if teacher_cache else 0
        self._teacher = None  # opened on first use, in each process

    def where(self, lang: str) -> str:
        """The manifest line of the first clip in `lang` (for error messages)."""
        return self._where[lang]

    def _check_teacher(self, rows: Sequence[ManifestRow]) -> int:
        sidecar = _sidecar(self._teacher_path)
        redo = "rebuild it with sonar_jax.data.speech.cache_teacher_embeddings"
        if not os.path.isfile(self._teacher_path) or not sidecar.is_file():
            raise FileNotFoundError(f"teacher cache {self._teacher_path} or its {sidecar.name} "
                                    f"is missing; {redo}")
        info = json.loads(sidecar.read_text(encoding="utf-8"))
        if info.get("rows") != len(rows) or info.get("fingerprint") != _fingerprint(rows):
            raise ValueError(f"teacher cache {self._teacher_path} is stale: it was made from "
                             f"{info.get('rows')} rows of {info.get('manifests')}, which differ "
                             f"from the {len(rows)} rows of these manifests (texts, languages or "
                             f"order); {redo}")
        shape = np.load(self._teacher_path, mmap_mode="r").shape
        if shape != (len(rows), info.get("dim")):
            raise ValueError(f"teacher cache {self._teacher_path} has shape {shape}, its sidecar "
                             f"says ({len(rows)}, {info.get('dim')}); {redo}")
        return int(shape[1])

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = {"audio": self._audio[index], "text": self._texts[index],
                  "lang": self._langs[index], "row": self._rows[index]}
        if self._teacher_path:
            if self._teacher is None:
                self._teacher = np.load(self._teacher_path, mmap_mode="r")
            record["teacher"] = np.array(self._teacher[self._rows[index]], np.float32)
        return record

    def __getstate__(self):
        return {**self.__dict__, "_teacher": None}  # each worker maps the file itself


def make_speech_source(cfg: ml_collections.ConfigDict) -> SpeechSource:
    """The source the config names."""
    return SpeechSource([p.strip() for p in cfg.manifest.split(",") if p.strip()], lang=cfg.lang,
                        min_seconds=cfg.min_seconds, max_seconds=cfg.max_seconds,
                        teacher_cache=cfg.teacher_cache)


def frame_samples(frames: int) -> int:
    """Samples of a waveform that gives exactly `frames` fbank frames (and no partial one)."""
    return audio.FRAME_LENGTH + audio.FRAME_SHIFT * (frames - 1)


def _frames(example: dict[str, np.ndarray]) -> int:
    return audio.num_frames(example["waveform"].size)


class _SpeechWindow:
    """A window of records -> (its batches per bucket, [(path, why)] of the skipped files);
    picklable, so it runs in grain workers."""

    def __init__(self, tokenizer: NllbTokenizer, plan: buckets.BucketPlan, max_text_len: int,
                 teacher_dim: int):
        self._tokenizer, self._plan = tokenizer, plan
        self._max_text_len, self._teacher_dim = max_text_len, teacher_dim

    def collate(self, chunk: Sequence[dict], rows: int, frames: int) -> dict[str, np.ndarray]:
        """A batch of bucket `frames`; an empty chunk gives the all-pad batch."""
        batch = {"waveform": np.zeros((rows, frame_samples(frames)), np.float32),
                 "num_samples": np.zeros((rows,), np.int32),
                 "text": np.zeros((rows, self._max_text_len), np.int32)}
        if self._teacher_dim:
            batch["teacher"] = np.zeros((rows, self._teacher_dim), np.float32)
        for row, example in enumerate(chunk):
            wave = example["waveform"]
            batch["waveform"][row, :wave.size] = wave
            batch["num_samples"][row] = wave.size
            batch["text"][row, :example["text"].size] = example["text"]
            if self._teacher_dim:
                batch["teacher"][row] = example["teacher"]
        return batch

    def __call__(self, index: int, records: list) -> tuple[list, list[tuple[str, str]]]:
        texts = tokenize(self._tokenizer, [r["text"] for r in records],
                         [r["lang"] for r in records], self._max_text_len)
        examples, skipped = [], []
        for record, tokens in zip(records, texts):
            try:
                wave = audio.load_audio(record["audio"])
            except (audio.AudioDecodeError, OSError) as error:
                skipped.append((record["audio"], str(error)))
                continue
            frames = min(audio.num_frames(wave.size), self._plan.lengths[-1])
            if frames == 0:
                skipped.append((record["audio"], "decodes to less than one 25 ms frame"))
                continue
            example = {"waveform": wave[:frame_samples(frames)], "text": tokens}
            if self._teacher_dim:
                example["teacher"] = record["teacher"]
            examples.append(example)
        return buckets.group(examples, self._plan, length=_frames, collate=self.collate), skipped


class SkipStats:
    """What the pipeline left out: clips dropped by duration when the source was built
    (`dropped`), and files that failed to decode (`files`: path -> reason, warned about once
    each; `skipped`: how many times, counting each epoch and a restored window again)."""

    def __init__(self, dropped: dict[str, int]):
        self.dropped, self.files, self.skipped = dict(dropped), {}, 0

    def collect(self, window: tuple[list, list[tuple[str, str]]]) -> list:
        """Records a window's skipped files (in the training process); returns its batches."""
        groups, skipped = window
        for path, reason in skipped:
            self.skipped += 1
            if path not in self.files:
                self.files[path] = reason
                warnings.warn(f"skipping audio file {path} (it cannot be decoded: {reason}); "
                              "fix or remove it from the manifest", stacklevel=2)
        return groups

    def as_dict(self) -> dict[str, Any]:
        return {"dropped": dict(self.dropped), "skipped": self.skipped,
                "skipped_files": len(self.files)}


def _bucket_plan(cfg: ml_collections.ConfigDict, rows_multiple: int) -> buckets.BucketPlan:
    max_frames = audio.num_frames(round(cfg.max_seconds * audio.SAMPLE_RATE))
    if max_frames == 0:
        raise ValueError(f"max_seconds {cfg.max_seconds} is shorter than one 25 ms fbank frame")
    try:
        return buckets.BucketPlan.build(max_len=max_frames, batch_max_tokens=cfg.batch_max_frames,
                                        rows_multiple=rows_multiple,
                                        lengths=tuple(cfg.frame_buckets))
    except ValueError as error:
        raise ValueError(f"speech batches ({max_frames} frames for max_seconds "
                         f"{cfg.max_seconds}): {error} (for speech, tokens are fbank frames: "
                         "read batch_max_frames, frame_buckets and max_seconds)") from None


def _iterator(cfg: ml_collections.ConfigDict, tokenizer: NllbTokenizer, *, rows_multiple: int,
              seed: int, shuffle: bool, num_epochs: int | None, shard_index: int | None,
              shard_count: int | None) -> grain.DatasetIterator:
    shard_index, shard_count = resolve_shard(shard_index, shard_count)
    if cfg.max_text_len < 3:
        raise ValueError(f"max_text_len {cfg.max_text_len} leaves no room for text between "
                         "[lang] and eos")
    plan = _bucket_plan(cfg, rows_multiple)
    source = make_speech_source(cfg)
    for lang in source.langs:
        try:
            tokenizer.lang_id(lang)  # unknown codes fail here, not inside a worker
        except UnknownLanguageError as error:
            raise UnknownLanguageError(f"{source.where(lang)}: {error}") from None
    window = _SpeechWindow(tokenizer, plan, cfg.max_text_len, source.teacher_dim)
    stats = SkipStats(source.dropped)
    windows = window_dataset(source, window, cfg, seed=seed, shuffle=shuffle,
                             num_epochs=num_epochs, shard_index=shard_index,
                             shard_count=shard_count).map(stats.collect)
    iterator = iter(WindowBatchIterDataset(
        windows, plan, lambda bucket: window.collate([], *plan.shapes[bucket]), seed))
    iterator.skips = stats
    return iterator


def make_speech_train_iterator(data_cfg: ml_collections.ConfigDict, tokenizer: NllbTokenizer, *,
                               rows_multiple: int, seed: int, shard_index: int | None = None,
                               shard_count: int | None = None) -> grain.DatasetIterator:
    """Training batches of this host's shard, epoch after epoch (`num_epochs`, None: forever).

    As make_text_train_iterator: rows_multiple divides every batch's rows, the seed fixes
    shuffling and batch order, all processes draw batches in step, and the state (`get_state`,
    pipeline.state_to_json, grain's checkpoint handler) resumes on the exact next batch.
    `iterator.skips` (SkipStats) counts dropped clips and undecodable files.
    """
    return _iterator(data_cfg, tokenizer, rows_multiple=rows_multiple, seed=seed,
                     shuffle=data_cfg.shuffle, num_epochs=data_cfg.num_epochs,
                     shard_index=shard_index, shard_count=shard_count)


def make_speech_eval_iterator(data_cfg: ml_collections.ConfigDict, tokenizer: NllbTokenizer, *,
                              rows_multiple: int, seed: int = 0, shard_index: int | None = None,
                              shard_count: int | None = None) -> grain.DatasetIterator:
    """One unshuffled pass over this host's shard in the training batch format; all hosts yield
    the same number of batches."""
    return _iterator(data_cfg, tokenizer, rows_multiple=rows_multiple, seed=seed, shuffle=False,
                     num_epochs=1, shard_index=shard_index, shard_count=shard_count)
