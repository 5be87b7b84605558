"""The speech input pipeline: speech manifests (manifests.py) -> frame-budget batches of padded
waveforms with their transcriptions' teacher tokens (or cached teacher embeddings,
teacher_cache.py), for the speech_distill recipe.

The window machinery is the text pipeline's (windows.py: per-host shard, shuffle per epoch,
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

import math
import os
import warnings
from typing import Any, Sequence

import grain
import ml_collections
import numpy as np

from sonar_jax import audio
from sonar_jax.data import buckets
from sonar_jax.data.manifests import header_samples, read_manifests
from sonar_jax.data.teacher_cache import check_teacher_cache
from sonar_jax.data.text_pipeline import tokenize
from sonar_jax.data.windows import WindowBatchIterDataset, resolve_shard, window_dataset
from sonar_jax.tokenizer import NllbTokenizer, UnknownLanguageError


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
            samples = row.num_samples if row.num_samples is not None else header_samples(row)
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
        self.teacher_dim = check_teacher_cache(teacher_cache, rows) if teacher_cache else 0
        self._teacher = None  # opened on first use, in each process

    def where(self, lang: str) -> str:
        """The manifest line of the first clip in `lang` (for error messages)."""
        return self._where[lang]

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


def batches(cfg: ml_collections.ConfigDict, tokenizer: NllbTokenizer, *, rows_multiple: int,
              seed: int, shuffle: bool, num_epochs: int | None, shard_index: int | None,
              shard_count: int | None) -> grain.DatasetIterator:
    """This host's batches of the speech data section `cfg` (see `sonar_jax.data.make_iterator`);
    `iterator.skips` (SkipStats) counts dropped clips and undecodable files."""
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
