"""BLASER 2.0 and MuTox on embeddings, text or speech: jitted, batched, returning numpy.

    blaser = BlaserPipeline("converted/blaser_qe", encoder="converted/encoder")
    blaser.predict(["Hello"], ["Bonjour"], source_lang="eng_Latn", target_lang="fra_Latn")  # [N]
    blaser.score(src_emb, mt_emb)                                        # on embeddings, [N]
    mutox = MutoxClassifierPipeline("converted/mutox", encoder="converted/encoder")
    mutox.predict(["..."], source_lang="eng_Latn", output_prob=True)     # [N]
    MutoxSpeechClassifierPipeline("converted/mutox", "converted/speech").predict(["a.wav"])

`load_blaser_model` / `load_mutox_model` (the reference's names) give the bare modules. Inputs
are checked before anything runs: width, NaN/inf rows, and row counts that must agree.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Sequence

import jax
import numpy as np

from sonar_jax import batching, stopping
from sonar_jax.cosine import check_embeddings
from sonar_jax.errors import UsageError
from sonar_jax.model_dir import load_model
from sonar_jax.models.heads import BlaserModel, MutoxClassifier
from sonar_jax.pipelines import (TextToEmbeddingModelPipeline, inference_model, progress,
                                 read_sentences)
from sonar_jax.split import SplitModule

DEFAULT_BATCH = 256  # embeddings scored per call: the heads are small MLPs


def load_blaser_model(model_dir: str | pathlib.Path, *, dtype: str | None = None) -> BlaserModel:
    """The BLASER 2.0 model of a converted directory (`sonar-jax convert ... --model blaser`)."""
    return load_model(model_dir, expected_kind="blaser", dtype=dtype)


def load_mutox_model(model_dir: str | pathlib.Path, *,
                     dtype: str | None = None) -> MutoxClassifier:
    """The MuTox classifier of a converted directory (`sonar-jax convert ... --model mutox`)."""
    return load_model(model_dir, expected_kind="mutox", dtype=dtype)


@functools.partial(jax.jit, static_argnames="options")
def _apply(head: SplitModule, inputs, options):
    return head()(*inputs, **dict(options))[:, 0]


class ScoringHead:
    """A head over rows of embeddings: inputs checked, padded to bucketed row counts, sharded
    over the local devices, one score per row."""

    def __init__(self, model, kind: str, dtype: str | None,
                 devices: Sequence[jax.Device] | None):
        self.model = inference_model(model, kind, dtype)
        expected = BlaserModel if kind == "blaser" else MutoxClassifier
        if not isinstance(self.model, expected):
            raise TypeError(f"expected a {expected.__name__} or its converted directory, got "
                            f"{type(self.model).__name__}")
        self.width = (self.model.cfg.embedding_dim if kind == "blaser"
                      else self.model.cfg.input_size)
        self.name = "BLASER" if kind == "blaser" else "MuTox"
        self.parallel = batching.DataParallel(devices)
        self._head = SplitModule.of(self.model, place=self.parallel.replicate)

    def check_encoder(self, width: int, what: str) -> None:
        if width != self.width:
            raise ValueError(f"the {what} makes {width}-d embeddings but this {self.name} model "
                             f"reads {self.width}-d ones: pair models of the same SONAR space")

    def check(self, named: dict[str, object]) -> list[np.ndarray]:
        """float32 [N, D] arrays of the inputs, with the first problem named."""
        arrays, rows = [], {}
        for name, value in named.items():
            if value is None:
                raise ValueError(f"{name} embeddings are missing (None)")
            array = check_embeddings(value, name=f"{name} embeddings", width=self.width,
                                     reader=f"this {self.name} model")
            arrays.append(array)
            rows[name] = len(array)
        if len(set(rows.values())) > 1:
            counts = ", ".join(f"{name} {count}" for name, count in rows.items())
            raise ValueError(f"row counts differ ({counts}): {' / '.join(rows)} must be aligned, "
                             "one row per segment")
        return arrays

    def __call__(self, arrays: Sequence[np.ndarray | None], *, batch_size: int = DEFAULT_BATCH,
                 progress_bar: bool = False, **options) -> np.ndarray:
        """Scores [N] (float32) of checked, aligned [N, D] arrays (None: an input left out);
        `options` go to the model."""
        if batch_size <= 0:
            raise UsageError(f"batch_size must be positive, got {batch_size}")
        total = len(arrays[0])
        scores = np.zeros(total, np.float32)
        with progress(total, progress_bar, "row") as bar:
            for start in range(0, total, batch_size):
                stopping.check()
                count = min(batch_size, total - start)
                rows = batching.rows_bucket(count, self.parallel.size)
                chunk = [None if a is None else _padded(a[start:start + count], rows)
                         for a in arrays]
                sharded = [None if c is None else self.parallel.shard_rows(c)[0] for c in chunk]
                out = _apply(self._head, tuple(sharded),
                             tuple(sorted(options.items())))
                scores[start:start + count] = np.asarray(out[:count])
                bar.update(count)
        return scores


def _padded(rows: np.ndarray, count: int) -> np.ndarray:
    """`rows` followed by zero rows up to `count` (scored, then dropped)."""
    out = np.zeros((count, rows.shape[1]), np.float32)
    out[: len(rows)] = rows
    return out


def _text_encoder(encoder, tokenizer, head: ScoringHead, dtype, devices):
    if encoder is None:
        return None
    pipeline = TextToEmbeddingModelPipeline(encoder, tokenizer, dtype=dtype, devices=devices)
    head.check_encoder(pipeline.model.cfg.model_dim, "text encoder")
    return pipeline


def _need_encoder(pipeline, what: str):
    if pipeline is None:
        raise UsageError(f"scoring {what} needs a text encoder: pass encoder= (a converted "
                         "text encoder directory), or score embeddings instead")
    return pipeline


class BlaserPipeline:
    """BLASER 2.0 quality scores of translations (about 1-5 for the released models).

    The QE model (`blaser_2_0_qe`) reads source + translation; the reference-based one
    (`blaser_2_0_ref`) also the reference translation. `encoder` (a text encoder) lets
    `predict` score sentences; `score` takes SONAR embeddings from any modality.
    """

    def __init__(self, blaser: str | pathlib.Path | BlaserModel, encoder=None, tokenizer=None,
                 *, dtype: str | None = None, devices: Sequence[jax.Device] | None = None):
        self.head = ScoringHead(blaser, "blaser", dtype, devices)
        self.text_to_embedding = _text_encoder(encoder, tokenizer, self.head, dtype, devices)

    @property
    def needs_reference(self) -> bool:
        return self.head.model.cfg.needs_reference

    def _check_reference(self, given: bool) -> None:
        if self.needs_reference and not given:
            raise UsageError("this BLASER model is reference-based (blaser_2_0_ref): pass the "
                             "reference translations (ref / --ref), or use the QE model")
        if given and not self.needs_reference:
            raise UsageError("this BLASER model is reference-free (QE, blaser_2_0_qe): it takes "
                             "no reference; drop ref / --ref, or use blaser_2_0_ref")

    def score(self, src, mt, ref=None, *, batch_size: int = DEFAULT_BATCH,
              progress_bar: bool = False) -> np.ndarray:
        """Scores [N] of embeddings src, mt (and ref), each [N, D]."""
        self._check_reference(ref is not None)
        named = {"src": src, "mt": mt} if ref is None else {"src": src, "mt": mt, "ref": ref}
        arrays = self.head.check(named) + [None] * (ref is None)
        return self.head(arrays, batch_size=batch_size, progress_bar=progress_bar)

    def predict(self, src, mt, source_lang: str, target_lang: str, ref=None, *,
                ref_lang: str | None = None, batch_size: int = 5,
                progress_bar: bool = False) -> np.ndarray:
        """Scores [N] of sentence lists (or text files, one sentence a line): `src` in
        `source_lang`, `mt` and `ref` in `target_lang` (`ref_lang` if the reference's differs)."""
        encoder = _need_encoder(self.text_to_embedding, "text")
        self._check_reference(ref is not None)
        parts = {"src": (src, source_lang), "mt": (mt, target_lang)}
        if ref is not None:
            parts["ref"] = (ref, ref_lang or target_lang)
        texts = {name: read_sentences(value) for name, (value, _) in parts.items()}
        counts = {name: len(t) for name, t in texts.items()}
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"{name} {count}" for name, count in counts.items())
            raise ValueError(f"line counts differ ({listed}): each source needs exactly one "
                             "translation" + (" and one reference" if ref is not None else ""))
        for _, lang in parts.values():
            encoder.tokenizer.lang_id(lang)  # fail on a bad code before encoding anything
        embeddings = {name: encoder.predict(texts[name], source_lang=lang,
                                            batch_size=batch_size, progress_bar=progress_bar)
                      for name, (_, lang) in parts.items()}
        return self.score(embeddings["src"], embeddings["mt"], embeddings.get("ref"))


class MutoxClassifierPipeline:
    """MuTox toxicity of SONAR embeddings (`classify`) or, with a text encoder, of sentences
    (`predict`): logits, or probabilities with `output_prob=True`."""

    def __init__(self, mutox_classifier: str | pathlib.Path | MutoxClassifier, encoder=None,
                 tokenizer=None, *, dtype: str | None = None,
                 devices: Sequence[jax.Device] | None = None):
        self.head = ScoringHead(mutox_classifier, "mutox", dtype, devices)
        self.text_to_embedding = _text_encoder(encoder, tokenizer, self.head, dtype, devices)

    def classify(self, embeddings, output_prob: bool = False, *,
                 batch_size: int = DEFAULT_BATCH, progress_bar: bool = False) -> np.ndarray:
        """One logit (or probability) per row of `embeddings` [N, D]."""
        (array,) = self.head.check({"input": embeddings})
        return self.head([array], batch_size=batch_size, progress_bar=progress_bar,
                         output_prob=bool(output_prob))

    def predict(self, input, source_lang: str, output_prob: bool = False, *,
                batch_size: int = 5, progress_bar: bool = False) -> np.ndarray:
        """One logit (or probability) per sentence of a list or a text file."""
        embeddings = _need_encoder(self.text_to_embedding, "sentences").predict(
            input, source_lang=source_lang, batch_size=batch_size, progress_bar=progress_bar)
        return self.classify(embeddings, output_prob)


class MutoxSpeechClassifierPipeline:
    """MuTox on speech (the reference's class name): audio files or waveforms -> one logit (or
    probability) per utterance, through a converted speech encoder."""

    def __init__(self, mutox_classifier: str | pathlib.Path | MutoxClassifier, encoder, *,
                 dtype: str | None = None, devices: Sequence[jax.Device] | None = None):
        from sonar_jax.speech_pipelines import SpeechToEmbeddingModelPipeline

        self.classifier = MutoxClassifierPipeline(mutox_classifier, dtype=dtype, devices=devices)
        self.speech_to_embedding = SpeechToEmbeddingModelPipeline(encoder, dtype=dtype,
                                                                  devices=devices)
        self.classifier.head.check_encoder(self.speech_to_embedding.model.cfg.model_dim,
                                           "speech encoder")

    def predict(self, input: Sequence, output_prob: bool = False, *, batch_size: int = 3,
                progress_bar: bool = False, sample_rate: int | None = None) -> np.ndarray:
        embeddings = self.speech_to_embedding.predict(input, batch_size=batch_size,
                                                      progress_bar=progress_bar,
                                                      sample_rate=sample_rate)
        return self.classifier.classify(embeddings, output_prob)
