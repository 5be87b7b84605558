"""The text input pipeline: parallel text -> token-budget batches for the text recipes.

Each window (windows.py) is tokenized in source mode (`[lang] pieces [eos]`, truncated to
max_len keeping eos), its targets are noised (noise.py), and it is batched per length bucket
(buckets.py). Batches are

    {"source": [B, L], "target": [B, L], "noised_target": [B, L]}   int32, 0-padded

(`noised_target` only with noise on: `batch_spec.TEXT`), one (B, L) per bucket; pad rows are
all 0. `tokenize` is shared with the speech pipeline.
"""

from __future__ import annotations

import collections

import grain
import ml_collections
import numpy as np

from sonar_jax.data import batch_spec, buckets
from sonar_jax.data.noise import DenoisingNoise, keyed_rng, word_start_table
from sonar_jax.data.text import FloresSource, TfdsSource, TsvSource
from sonar_jax.data.windows import WindowBatchIterDataset, resolve_shard, window_dataset
from sonar_jax.tokenizer import EOS, NllbTokenizer

_NOISE_STREAM = 0  # keyed apart from the batch order (windows.py, stream 1)


def make_source(cfg: ml_collections.ConfigDict):
    """The record source the config names (text.py)."""
    if not cfg.path:
        raise ValueError("the text data config has no path")
    if cfg.format == "tsv":
        return TsvSource([p.strip() for p in cfg.path.split(",")],
                         src_lang=cfg.src_lang or None, tgt_lang=cfg.tgt_lang or None)
    if cfg.format == "flores":
        return FloresSource(cfg.path, cfg.split, [p.strip() for p in cfg.pairs.split(",")])
    if cfg.format == "tfds":
        return TfdsSource(cfg.path, cfg.split, src_field=cfg.src_field, tgt_field=cfg.tgt_field,
                          src_lang=cfg.src_lang, tgt_lang=cfg.tgt_lang,
                          data_dir=cfg.tfds_data_dir or None)
    raise ValueError(f"unknown text data format {cfg.format!r}; expected tsv, flores or tfds")


def tokenize(tokenizer: NllbTokenizer, texts: list[str], langs: list[str], max_len: int
             ) -> list[np.ndarray]:
    """Source-mode ids (`[lang] pieces [eos]`) of each text, truncated to max_len keeping eos.

    One SentencePiece call per language: about 10x faster than one call per text.
    """
    by_lang = collections.defaultdict(list)
    for position, lang in enumerate(langs):
        by_lang[lang].append(position)
    out = [None] * len(texts)
    for lang, positions in by_lang.items():
        encoded = tokenizer.encode_batch([texts[p] for p in positions], lang)
        for position, ids in zip(positions, encoded):
            if len(ids) > max_len:
                ids = ids[:max_len - 1] + [EOS]
            out[position] = np.asarray(ids, np.int32)
    return out


class TextWindow:
    """A window of records -> its batches per bucket; picklable, so it runs in grain workers.

    Targets are noised in order with one Generator per window, drawn from (seed,
    shard, window number): a window is the unit of work of a grain worker and of the iterator
    state, so the noise does not depend on the worker count and survives a resume (and one
    Generator per window costs less than the noise itself, unlike one per example).
    """

    def __init__(self, tokenizer: NllbTokenizer, plan: buckets.BucketPlan, max_len: int,
                 noise: DenoisingNoise | None, seed: int, shard_index: int):
        self._tokenizer, self._plan, self._max_len, self._noise = tokenizer, plan, max_len, noise
        self._keys = (seed, _NOISE_STREAM, shard_index)

    def __call__(self, index: int, records: list) -> list[list[dict[str, np.ndarray]]]:
        sources = tokenize(self._tokenizer, [r["src_text"] for r in records],
                           [r["src_lang"] for r in records], self._max_len)
        targets = tokenize(self._tokenizer, [r["tgt_text"] for r in records],
                           [r["tgt_lang"] for r in records], self._max_len)
        rows = [{"source": source, "target": target} for source, target in zip(sources, targets)]
        if self._noise is not None:
            rng = keyed_rng(*self._keys, index)
            for row in rows:
                row["noised_target"] = self._noise(row["target"], rng)
        return buckets.group(rows, self._plan)


def batches(cfg: ml_collections.ConfigDict, tokenizer: NllbTokenizer, *, rows_multiple: int,
              seed: int, shuffle: bool, num_epochs: int | None, shard_index: int | None,
              shard_count: int | None) -> grain.DatasetIterator:
    """This host's batches of the text data section `cfg` (see `sonar_jax.data.make_iterator`)."""
    shard_index, shard_count = resolve_shard(shard_index, shard_count)
    if cfg.max_len < 3:
        raise ValueError(f"max_len {cfg.max_len} leaves no room for text between [lang] and eos")
    source = make_source(cfg)
    for lang in getattr(source, "langs", ()):
        tokenizer.lang_id(lang)  # unknown codes fail here, not inside a worker
    plan = buckets.BucketPlan.build(max_len=cfg.max_len, batch_max_tokens=cfg.batch_max_tokens,
                                    rows_multiple=rows_multiple, lengths=tuple(cfg.length_buckets))
    noise = None
    if cfg.noise.enabled:
        table = (word_start_table(tokenizer.spm_path, tokenizer.vocab_size)
                 if cfg.noise.word_drop > 0 else None)
        noise = DenoisingNoise(mask_ratio=cfg.noise.mask_ratio,
                               poisson_lambda=cfg.noise.poisson_lambda,
                               word_drop=cfg.noise.word_drop,
                               shuffle_distance=cfg.noise.shuffle_distance, word_start=table)
    windows = window_dataset(source, TextWindow(tokenizer, plan, cfg.max_len, noise, seed,
                                                shard_index),
                             cfg, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                             shard_index=shard_index, shard_count=shard_count)
    keys = [k for k in batch_spec.TEXT.fields if noise is not None or k != "noised_target"]
    return iter(WindowBatchIterDataset(
        windows, plan, lambda bucket: buckets.collate_tokens([], *plan.shapes[bucket], keys=keys),
        seed))
