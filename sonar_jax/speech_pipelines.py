"""Speech inference with SONAR's class names and `predict` arguments, returning numpy.

    s2e = SpeechToEmbeddingModelPipeline(encoder="converted/speech_encoder")
    emb = s2e.predict(["a.wav", "b.flac"])                         # [N, D] float32
    s2t = SpeechToTextModelPipeline("converted/speech_encoder", "converted/text_decoder")
    s2t.predict(["a.wav"], target_lang="eng_Latn")                 # list[str]

Inputs are audio file paths or mono waveforms (16 kHz unless `sample_rate` says otherwise; other
rates are resampled), turned into the reference's standardised fbank by `sonar_jax.audio`.
Utterances are sorted by length, packed under `batch_size` / `batch_max_frames`, padded to a few
bucketed shapes, sharded over all local devices, and returned in input order.
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Any, Iterator, Sequence

import jax
import numpy as np

from sonar_jax import audio, batching
from sonar_jax.cosine import as_output, check_output_dtype
from sonar_jax.models.speech_encoder import SpeechEncoder
from sonar_jax.pipelines import (EmbeddingToTextModelPipeline, GenerationOptions, embed_batches,
                                 inference_model, progress)
from sonar_jax.split import SplitModule

log = logging.getLogger(__name__)


def _check_inputs(input) -> list:
    if isinstance(input, (str, os.PathLike, np.ndarray, jax.Array)):
        raise TypeError("input must be a sequence of audio file paths or waveforms; wrap a single "
                        "one in a list")
    return list(input)


class SpeechToEmbeddingModelPipeline:
    """Audio files or waveforms -> SONAR embeddings [N, D] (float32), in input order."""

    def __init__(self, encoder: str | pathlib.Path | SpeechEncoder, *, dtype: str | None = None,
                 devices: Sequence[jax.Device] | None = None):
        self.model = inference_model(encoder, "speech_encoder", dtype)
        self.parallel = batching.DataParallel(devices)
        self._encoder = SplitModule.of(self.model, place=self.parallel.replicate)

    def features(self, input: Sequence, sample_rate: int | None = None) -> list[np.ndarray]:
        """Standardised fbank [frames, 80] of every input, each checked against the model's
        length limits (too short to give one stacked frame, or longer than ~82 s).
        `sample_rate` is the rate of waveform inputs; files carry their own."""
        stride = self.model.cfg.fbank_stride
        fbanks = []
        for index, item in enumerate(_check_inputs(input)):
            is_file = isinstance(item, (str, os.PathLike))
            feats = audio.speech_features(item, sample_rate=None if is_file else sample_rate)
            name = f"input[{index}]" + (f" ({item})" if is_file else "")
            if len(feats) < stride:
                raise ValueError(f"{name} gives {len(feats)} fbank frames; the speech encoder "
                                 f"needs at least {stride} (about {10 * stride + 15} ms of audio)")
            try:
                self.model.check_length(len(feats))
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
            if not feats.std():  # every frame alike: a constant (silent) signal
                log.warning("%s is silent (a constant signal): its embedding carries no speech",
                            name)
            fbanks.append(feats)
        return fbanks

    def embed_features(self, fbanks: Sequence[np.ndarray], *, batch_size: int | None = 3,
                       batch_max_frames: int | None = None, progress_bar: bool = False
                       ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields (input indices, embeddings) batch by batch, shortest utterances first, with
        the device kept busy (`pipelines.embed_batches`)."""
        batches = batching.pack_by_length([len(f) for f in fbanks], batch_size=batch_size,
                                          max_tokens=batch_max_frames)
        limit = self.model.max_fbank_frames()

        def on_device():
            for batch in batches:
                rows = batching.rows_bucket(len(batch.indices), self.parallel.size)
                width = batching.length_bucket(int(batch.lengths.max()), limit)
                feats, lengths = pad_features([fbanks[i] for i in batch.indices], rows, width,
                                              self.model.cfg.fbank_stride)
                yield (batch.indices, *self.parallel.shard_rows(feats, lengths))

        with progress(len(fbanks), progress_bar, "utt") as bar:
            for indices, embeddings in embed_batches(self._encoder, on_device()):
                yield indices, embeddings
                bar.update(len(indices))

    def predict(self, input: Sequence, batch_size: int | None = 3,
                batch_max_frames: int | None = None, progress_bar: bool = False,
                sample_rate: int | None = None, *, normalize_embeddings: bool = False,
                output_dtype: str = "float32") -> np.ndarray:
        """`batch_max_frames` bounds rows × longest utterance (in 10 ms fbank frames);
        `normalize_embeddings`: unit-length rows; `output_dtype`: "float32" or "float16"."""
        check_output_dtype(output_dtype)
        embeddings = self.embed(self.features(input, sample_rate), batch_size=batch_size,
                                batch_max_frames=batch_max_frames, progress_bar=progress_bar)
        return as_output(embeddings, normalize_embeddings=normalize_embeddings,
                         output_dtype=output_dtype)

    def embed(self, fbanks: Sequence[np.ndarray], **batching_args) -> np.ndarray:
        result = np.zeros((len(fbanks), self.model.cfg.model_dim), np.float32)
        for indices, embeddings in self.embed_features(fbanks, **batching_args):
            result[indices] = embeddings
        return result


def pad_features(fbanks: Sequence[np.ndarray], rows: int, width: int, filler_len: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """[rows, width, C] float32 features right-padded with zeros, and their lengths; rows past
    the inputs get `filler_len` zero frames (valid, so they never produce NaN) and are dropped
    by the caller."""
    out = np.zeros((rows, width, fbanks[0].shape[1]), np.float32)
    lengths = np.full(rows, filler_len, np.int32)
    for row, feats in enumerate(fbanks):
        out[row, : len(feats)] = feats
        lengths[row] = len(feats)
    return out, lengths


class SpeechToTextModelPipeline:
    """Audio -> SONAR embeddings -> text in `target_lang` (speech recognition / translation).

    The tokenizer is the text decoder's (a speech encoder has none): by default the one inside the
    converted decoder directory.
    """

    def __init__(self, encoder, decoder, tokenizer=None, *, dtype: str | None = None,
                 devices: Sequence[jax.Device] | None = None):
        self.speech_to_embedding = SpeechToEmbeddingModelPipeline(encoder, dtype=dtype,
                                                                  devices=devices)
        self.embedding_to_text = EmbeddingToTextModelPipeline(decoder, tokenizer, dtype=dtype,
                                                              devices=devices)
        widths = (self.speech_to_embedding.model.cfg.model_dim,
                  self.embedding_to_text.model.cfg.model_dim)
        if widths[0] != widths[1]:
            raise ValueError(f"the speech encoder ({widths[0]}) and the text decoder "
                             f"({widths[1]}) have different widths")

    def predict(self, input: Sequence, target_lang: str, batch_size: int = 3,
                progress_bar: bool = False, sampler=None, *, sample_rate: int | None = None,
                **generation: Any) -> list[str]:
        """Texts of audio (files or waveforms at `sample_rate`); `sampler` and `generation`:
        `pipelines.GenerationOptions`."""
        options = GenerationOptions.of(sampler, **generation)
        decoder_pipe = self.embedding_to_text
        decoder_pipe.tokenizer.lang_id(target_lang)  # fail before decoding any audio
        fbanks = self.speech_to_embedding.features(input, sample_rate)
        embeddings = self.speech_to_embedding.embed(fbanks, batch_size=batch_size)
        # As the reference: each in-order batch limited by a·(its longest input in fbank
        # frames) + b new tokens.
        return decoder_pipe.predict_in_source_order(
            embeddings, [len(f) for f in fbanks], target_lang, options, batch_size=batch_size,
            progress_bar=progress_bar)
