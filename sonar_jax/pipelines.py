"""User-facing inference with SONAR's class names and `predict` arguments, returning numpy.

    t2e = TextToEmbeddingModelPipeline(encoder="converted/encoder")
    emb = t2e.predict(["Hello"], source_lang="eng_Latn")          # [N, D] float32
    e2t = EmbeddingToTextModelPipeline(decoder="converted/decoder")
    e2t.predict(emb, target_lang="fra_Latn", beam_size=5)         # list[str]

Models are converted directories (or already-built modules plus a tokenizer). Batches are sorted
by length, packed under `batch_size` / `batch_max_tokens`, bucketed to a few shapes, sharded over
all local devices, and returned in input order.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import pathlib
import sys
from typing import Any, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sonar_jax import batching, stopping
from sonar_jax.compiled import inference_jit
from sonar_jax.cosine import as_output, check_embeddings, check_output_dtype
from sonar_jax.generate import PROMPT_LEN, GenerationConfig, TopKSampler, TopPSampler, generate
from sonar_jax.model_dir import check_vocabulary, load_model, load_tokenizer
from sonar_jax.models.layers import unstacked
from sonar_jax.models.text_decoder import TextDecoder
from sonar_jax.models.text_encoder import TextEncoder
from sonar_jax.prefetch import prefetch
from sonar_jax.split import SplitModule
from sonar_jax.tokenizer import EOS, NllbTokenizer

log = logging.getLogger(__name__)

# The reference's default max_gen_len: a · source_len + b new tokens.
DEFAULT_MAX_GEN_LEN = (1.0, 128)


def inference_model(model, kind: str, dtype: str | None):
    """The model for inference: loaded if a directory, with its layer stacks unrolled into lists
    (`layers.unstacked`: the compiled programs then read every layer's weights in place)."""
    if isinstance(model, (str, pathlib.Path)):
        model = load_model(model, expected_kind=kind, dtype=dtype)
    return unstacked(model)


def _tokenizer(tokenizer, source, model) -> NllbTokenizer:
    """The tokenizer given (an NllbTokenizer or a converted directory; default: the model's
    own directory `source`), checked to fit `model`'s vocabulary."""
    if not isinstance(tokenizer, NllbTokenizer):
        tokenizer_source = tokenizer if tokenizer is not None else source
        if not isinstance(tokenizer_source, (str, pathlib.Path)):
            raise ValueError("pass a tokenizer (an NllbTokenizer or a converted model "
                             "directory) when the model is not given as a directory")
        tokenizer = load_tokenizer(tokenizer_source)
    check_vocabulary(tokenizer, model.cfg.vocab_size,
                     str(source) if isinstance(source, (str, pathlib.Path)) else "given")
    return tokenizer


def read_sentences(input: str | pathlib.Path | Sequence[str]) -> list[str]:
    """A list of sentences, or a text file with one sentence a line; non-strings are refused."""
    if isinstance(input, (str, pathlib.Path)):
        path = pathlib.Path(input)
        if not path.is_file():
            raise FileNotFoundError(f"input {str(input)!r} is not a file; pass a list of "
                                    "sentences or the path of a text file")
        with open(path, encoding="utf-8") as lines:
            return [line.rstrip("\r\n") for line in lines]
    sentences = list(input)
    for index, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            raise TypeError(f"input[{index}] is a {type(sentence).__name__}, not a str")
    return sentences


def progress(total: int, enabled: bool, unit: str):
    """The pipelines' progress bar (tqdm on stderr), a no-op when not `enabled`."""
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, unit=unit, file=sys.stderr,
                dynamic_ncols=True)


@inference_jit
def encode_program(encoder: SplitModule, tokens, lengths):
    """The compiled encoder of the embedding pipelines (text and speech: any module whose output
    has `sentence_embeddings`), one program per batch shape."""
    return encoder()(tokens, lengths).sentence_embeddings


class TextToEmbeddingModelPipeline:
    """Sentences -> SONAR embeddings [N, D] (float32), in input order."""

    def __init__(self, encoder: str | pathlib.Path | TextEncoder, tokenizer=None, *,
                 dtype: str | None = None, devices: Sequence[jax.Device] | None = None):
        self.model = inference_model(encoder, "text_encoder", dtype)
        self.tokenizer = _tokenizer(tokenizer, encoder, self.model)
        self.parallel = batching.DataParallel(devices)
        self._encoder = SplitModule.of(self.model, place=self.parallel.replicate)

    @property
    def max_seq_len(self) -> int:
        return self.model.cfg.max_seq_len

    def tokenize(self, sentences: Sequence[str], source_lang: str,
                 max_seq_len: int | None = None) -> list[list[int]]:
        """Source-mode ids, truncated to `max_seq_len` like the reference (with one warning)."""
        tokens, truncated = self.tokenize_counted(sentences, source_lang, max_seq_len)
        self.warn_truncated(truncated, len(tokens), max_seq_len)
        return tokens

    def _limit(self, max_seq_len: int | None) -> int:
        limit = self.max_seq_len if max_seq_len is None else max_seq_len
        if limit > self.max_seq_len:
            raise ValueError(f"max_seq_len {limit} exceeds the encoder's {self.max_seq_len}")
        return limit

    def tokenize_counted(self, sentences: Sequence[str], source_lang: str,
                         max_seq_len: int | None = None) -> tuple[list[list[int]], int]:
        """(ids truncated to the limit, how many were longer): for callers that tokenize a
        corpus piece by piece and warn once (`warn_truncated`)."""
        limit = self._limit(max_seq_len)
        tokens = self.tokenizer.encode_batch(sentences, source_lang)
        return [t[:limit] for t in tokens], sum(len(t) > limit for t in tokens)

    def warn_truncated(self, truncated: int, total: int, max_seq_len: int | None = None) -> None:
        """One warning for the `truncated` of `total` sentences cut to the limit."""
        if truncated:
            log.warning("%d of %d sentences are longer than %d tokens and were truncated (the "
                        "final EOS is cut too, as the reference does)", truncated, total,
                        self._limit(max_seq_len))

    def embed_tokens(self, tokens: Sequence[Sequence[int]], *, batch_size: int | None = 5,
                     batch_max_tokens: int | None = None, progress_bar: bool = False
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields (input indices, embeddings) batch by batch, shortest sequences first, with
        the device kept busy (`embed_batches`)."""
        batches = batching.pack_by_length([len(t) for t in tokens], batch_size=batch_size,
                                          max_tokens=batch_max_tokens)

        def on_device():
            for batch in batches:
                rows = batching.rows_bucket(len(batch.indices), self.parallel.size)
                width = batching.length_bucket(int(batch.lengths.max()), self.max_seq_len)
                ids, lengths = batching.pad_rows([tokens[i] for i in batch.indices], rows, width,
                                                 self.tokenizer.pad_idx, filler=[EOS])
                yield (batch.indices, *self.parallel.shard_rows(ids, lengths))

        with progress(len(tokens), progress_bar, "sent") as bar:
            for indices, embeddings in embed_batches(self._encoder, on_device()):
                yield indices, embeddings
                bar.update(len(indices))

    def embed(self, tokens: Sequence[Sequence[int]], **batching_args: Any) -> np.ndarray:
        """Embeddings [N, D] of token sequences in input order (`embed_tokens`' batching)."""
        result = np.zeros((len(tokens), self.model.cfg.model_dim), np.float32)
        for indices, embeddings in self.embed_tokens(tokens, **batching_args):
            result[indices] = embeddings
        return result

    def predict(self, input: str | pathlib.Path | Sequence[str], source_lang: str,
                batch_size: int | None = 5, batch_max_tokens: int | None = None,
                max_seq_len: int | None = None, progress_bar: bool = False, *,
                normalize_embeddings: bool = False, output_dtype: str = "float32") -> np.ndarray:
        """Embeddings [N, D] in input order; `normalize_embeddings`: unit-length rows;
        `output_dtype`: "float32" or "float16".

        The input is tokenized in windows of `TOKENIZE_WINDOW` sentences, each while the
        previous one is being encoded (a thread); batches are packed by length within a window.
        """
        check_output_dtype(output_dtype)
        sentences = read_sentences(input)
        self._limit(max_seq_len)  # a bad limit fails before any work
        self.tokenizer.lang_id(source_lang)
        result = np.zeros((len(sentences), self.model.cfg.model_dim), np.float32)
        starts = range(0, len(sentences), TOKENIZE_WINDOW)
        windows = ((start, self.tokenize_counted(sentences[start:start + TOKENIZE_WINDOW],
                                                 source_lang, max_seq_len)) for start in starts)
        truncated = 0
        with progress(len(sentences), progress_bar, "sent") as bar:
            for start, (tokens, window_truncated) in prefetch(windows):
                truncated += window_truncated
                for indices, embeddings in self.embed_tokens(tokens, batch_size=batch_size,
                                                             batch_max_tokens=batch_max_tokens):
                    result[start + indices] = embeddings
                    bar.update(len(indices))
        self.warn_truncated(truncated, len(sentences), max_seq_len)
        return as_output(result, normalize_embeddings=normalize_embeddings,
                         output_dtype=output_dtype)


# Sentences tokenized at a time by TextToEmbeddingModelPipeline.predict (length-sorted within).
TOKENIZE_WINDOW = 4096


def embed_batches(encoder: SplitModule, device_batches: Iterable[tuple]
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(input indices, float32 embeddings on the host, padding rows dropped) of each
    (indices, inputs, lengths) batch, in order, through `encode_program`.

    The device does not wait for the host between batches: the batches are made (padded and
    copied to the devices) ahead in a thread, and on accelerators each batch's program is
    queued before the previous batch's result is read back. Not on CPUs: their client runs
    queued programs at the same time, on the same cores (on a 2-core host the `cpu` benchmark
    suite's corpus batches took 3-5% longer so, a speech batch loop 2.5-3%)."""
    def fetched(indices, out):
        return indices, np.asarray(out, np.float32)[: len(indices)]

    ahead = 0 if jax.default_backend() == "cpu" else 1  # programs queued beyond the one read
    queued: collections.deque = collections.deque()
    for indices, inputs, lengths in prefetch(device_batches):
        queued.append((indices, encode_program(encoder, inputs, lengths)))
        while len(queued) > ahead:
            yield fetched(*queued.popleft())
    while queued:
        yield fetched(*queued.popleft())


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """How the X-to-text pipelines generate, with the reference's `predict` keyword names
    (every pipeline's `predict(..., sampler=None, **generation)` builds one).

    sampler: None for beam search, else TopKSampler(k), TopPSampler(p) or "full" (sampling from
    the whole distribution). max_seq_len caps the positions (prompt included); max_gen_len =
    (a, b) allows a · source length + b new tokens, source length in the input's own units
    (tokens for text, fbank frames for speech, the embedding width for embeddings). seed keys
    the sampling.
    """

    sampler: TopKSampler | TopPSampler | str | None = None
    beam_size: int = 5
    max_seq_len: int | None = None
    max_gen_len: tuple[float, int] = DEFAULT_MAX_GEN_LEN
    min_gen_len: int = 1
    len_penalty: float = 1.0
    normalize_scores: bool = True
    unk_penalty: float = 0.0
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.sampler is not None and not isinstance(self.sampler,
                                                       (TopKSampler, TopPSampler, str)):
            raise TypeError(f"sampler must be a TopKSampler, a TopPSampler or 'full', got "
                            f"{type(self.sampler).__name__}")
        object.__setattr__(self, "max_gen_len", tuple(self.max_gen_len))
        self.config()  # the search settings are checked now, not at the first batch

    @classmethod
    def of(cls, sampler=None, **generation: Any) -> "GenerationOptions":
        """The options of a `predict` call, with an error naming an unknown keyword."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(generation) - known)
        if unknown:
            raise TypeError(f"unknown generation options {unknown}; known: {sorted(known)}")
        return cls(sampler=sampler, **generation)

    def config(self, capacity: int = 512) -> GenerationConfig:
        """The compiled program's settings, for a KV cache of `capacity` positions."""
        return GenerationConfig(capacity=capacity, beam_size=self.beam_size,
                                sample=self.sampler is not None,
                                sampler=None if isinstance(self.sampler, str) else self.sampler,
                                min_gen_len=self.min_gen_len, len_penalty=self.len_penalty,
                                normalize_scores=self.normalize_scores,
                                unk_penalty=self.unk_penalty, temperature=self.temperature)


class EmbeddingToTextModelPipeline:
    """SONAR embeddings [N, D] -> text in `target_lang`, by beam search (or sampling)."""

    def __init__(self, decoder: str | pathlib.Path | TextDecoder, tokenizer=None, *,
                 dtype: str | None = None, devices: Sequence[jax.Device] | None = None):
        self.model = inference_model(decoder, "text_decoder", dtype)
        self.tokenizer = _tokenizer(tokenizer, decoder, self.model)
        self.parallel = batching.DataParallel(devices)
        self._decoder: SplitModule | None = None  # replicated at the first batch

    def _check_embeddings(self, embeddings) -> np.ndarray:
        return check_embeddings(embeddings, width=self.model.cfg.model_dim, reader="this decoder")

    def max_len_for(self, source_len: int, max_seq_len: int | None,
                    max_gen_len: tuple[float, int] = DEFAULT_MAX_GEN_LEN) -> int:
        """Total positions allowed (prompt included), as the reference computes them."""
        model_limit = self.model.cfg.max_seq_len
        limit = model_limit if max_seq_len is None else min(max_seq_len, model_limit)
        return min(limit, PROMPT_LEN + int(max_gen_len[0] * source_len + max_gen_len[1]))

    def predict_in_source_order(self, embeddings: np.ndarray, source_lengths: Sequence[int],
                                target_lang: str, options: GenerationOptions, *,
                                batch_size: int, progress_bar: bool = False) -> list[str]:
        """Texts of `embeddings` batched as the reference's X-to-text pipelines do: fixed batches
        in input order, each limited by its longest source (`source_lengths`, in the source's
        own units: tokens for text, fbank frames for speech)."""
        lang_id = self.tokenizer.lang_id(target_lang)
        batches = list(batching.in_order(source_lengths, batch_size))
        limits = [self.max_len_for(max(source_lengths[i] for i in b.indices),
                                   options.max_seq_len, options.max_gen_len) for b in batches]
        ids = self.generate_batches(embeddings, batches, lang_id, options.config(), limits,
                                    options.seed, progress_bar)
        return [self.tokenizer.decode(t) for t in ids]

    def generate_batches(self, embeddings: np.ndarray, batches: Iterable[batching.Batch],
                         lang_id: int, config: GenerationConfig, limits: Sequence[int],
                         seed: int, progress_bar: bool) -> list[list[int]]:
        """Generated ids (EOS dropped) for each row, batch by batch with one limit each."""
        if self._decoder is None:
            self._decoder = SplitModule.of(self.model, place=self.parallel.replicate)
        results: list[list[int]] = [[] for _ in range(len(embeddings))]
        rng = jax.random.key(seed)
        with progress(len(embeddings), progress_bar, "sent") as bar:
            for batch, limit in zip(batches, limits):
                stopping.check()
                rows = batching.rows_bucket(len(batch.indices), self.parallel.size)
                chunk = np.zeros((rows, embeddings.shape[1]), np.float32)
                chunk[: len(batch.indices)] = embeddings[batch.indices]
                (chunk,) = self.parallel.shard_rows(chunk)
                langs = jnp.full((rows,), lang_id, jnp.int32)
                rng, key = jax.random.split(rng)
                capacity = batching.length_bucket(limit, self.model.cfg.max_seq_len)
                cfg = dataclasses.replace(config, capacity=capacity)
                out = generate(self._decoder, chunk, langs, cfg, max_seq_len=limit, rng=key)
                tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
                for row, index in enumerate(batch.indices):
                    ids = tokens[row, : lengths[row]].tolist()
                    results[index] = ids[:-1] if ids and ids[-1] == EOS else ids
                bar.update(len(batch.indices))
        return results

    def predict(self, inputs, target_lang: str, batch_size: int = 5, progress_bar: bool = False,
                sampler=None, **generation: Any) -> list[str]:
        """Texts of embeddings [N, D]; `sampler` and `generation`: `GenerationOptions`."""
        options = GenerationOptions.of(sampler, **generation)
        embeddings = self._check_embeddings(inputs)
        # The reference's "source" here is the [N, D] embedding matrix, so source_len = D.
        return self.predict_in_source_order(
            embeddings, [embeddings.shape[1]] * len(embeddings), target_lang, options,
            batch_size=batch_size, progress_bar=progress_bar)


class TextToTextModelPipeline:
    """Sentences -> embeddings -> text in `target_lang` (translation through the SONAR space)."""

    def __init__(self, encoder, decoder, tokenizer=None, *, dtype: str | None = None,
                 devices: Sequence[jax.Device] | None = None):
        self.text_to_embedding = TextToEmbeddingModelPipeline(encoder, tokenizer, dtype=dtype,
                                                              devices=devices)
        self.embedding_to_text = EmbeddingToTextModelPipeline(
            decoder, self.text_to_embedding.tokenizer, dtype=dtype, devices=devices)

    def predict(self, input, source_lang: str, target_lang: str, batch_size: int = 5,
                progress_bar: bool = False, sampler=None, **generation: Any) -> list[str]:
        """Translations of sentences; `sampler` and `generation`: `GenerationOptions`."""
        options = GenerationOptions.of(sampler, **generation)  # bad options fail first
        tokens = self.text_to_embedding.tokenize(read_sentences(input), source_lang)
        return self.translate_tokens(tokens, target_lang, batch_size=batch_size,
                                     progress_bar=progress_bar, options=options)

    def translate_tokens(self, tokens: Sequence[Sequence[int]], target_lang: str, *,
                         batch_size: int = 5, progress_bar: bool = False,
                         options: GenerationOptions | None = None, sampler=None,
                         **generation: Any) -> list[str]:
        """Translations of already tokenized sentences (`TextToEmbeddingModelPipeline`'s
        tokenization), for callers that tokenize a file piece by piece."""
        options = options or GenerationOptions.of(sampler, **generation)
        embeddings = self.text_to_embedding.embed(tokens, batch_size=batch_size)
        return self.embedding_to_text.predict_in_source_order(
            embeddings, [len(t) for t in tokens], target_lang, options, batch_size=batch_size,
            progress_bar=progress_bar)
