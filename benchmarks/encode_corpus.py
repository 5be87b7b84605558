"""Embedding a corpus end to end, what a user pays for: text in, numpy embeddings out.

Ours: `TextToEmbeddingModelPipeline.predict` (tokenization, length-sorted packing, shape buckets,
host-device transfers; tokenization runs ahead in a thread). Peer: the same tokenizer (the same
cost), then the reference pipeline's batching (sorted by character length, fixed-size batches
padded to each batch's longest) into HF's encoder. The corpus is the UDHR-derived one of the
fixed-shape workload's parity check (16 languages, 2 to 500 tokens).

Device-busy fraction: the time the device needs for our batches alone (the same padded batches,
already on the device, one after another; a third side of the same alternating rounds) over the
end-to-end time.
"""

from __future__ import annotations

import jax
import numpy as np

from benchmarks import encode, harness, suites
from sonar_jax import batching, pipelines
from sonar_jax.tokenizer import EOS


def peer_batches(sentences, batch_size: int) -> list[list[int]]:
    """The reference pipeline's batching: indices sorted by character length, fixed-size chunks."""
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def peer_embed(t2e, peer, sentences, batch_size: int) -> np.ndarray:
    tokens = t2e.tokenize(sentences, suites.SOURCE_LANG)
    out = np.zeros((len(sentences), t2e.model.cfg.model_dim), np.float32)
    for batch in peer_batches(sentences, batch_size):
        out[batch] = peer.embed([tokens[i] for i in batch])
    return out


def our_batches(t2e, tokens, batch_size: int) -> list[tuple]:
    """The padded device arrays the pipeline makes for `tokens` (what its device work is)."""
    out = []
    for batch in batching.pack_by_length([len(t) for t in tokens], batch_size=batch_size,
                                         max_tokens=None):
        rows = batching.rows_bucket(len(batch.indices), t2e.parallel.size)
        width = batching.length_bucket(int(batch.lengths.max()), t2e.max_seq_len)
        ids, lengths = batching.pad_rows([tokens[i] for i in batch.indices], rows, width,
                                         t2e.tokenizer.pad_idx, filler=[EOS])
        out.append(t2e.parallel.shard_rows(ids, lengths))
    return out


def padding(sentences, tokens, batch_size: int, device_batches) -> dict:
    """Positions each side computes (padded rows x width) per real token."""
    real = sum(len(t) for t in tokens)
    ours = sum(int(np.prod(ids.shape)) for ids, _ in device_batches)
    lengths = np.array([len(t) for t in tokens])
    theirs = sum(len(b) * int(lengths[b].max()) for b in peer_batches(sentences, batch_size))
    return {"real_tokens": real, "ours_computed_over_real": ours / real,
            "peer_computed_over_real": theirs / real}


def run(suite: suites.Suite, args) -> dict:
    t2e, peer = encode.models(suite)
    sentences = suites.corpus_sentences(t2e.tokenizer, t2e.max_seq_len, suite.corpus_repeat)
    batch_size = suite.corpus_batch_size
    tokens = t2e.tokenize(sentences, suites.SOURCE_LANG)

    def ours():
        return t2e.predict(sentences, suites.SOURCE_LANG, batch_size=batch_size)

    device_batches = our_batches(t2e, tokens, batch_size)

    def device_only():
        # One batch at a time: the CPU client runs programs dispatched together concurrently,
        # contending for the same cores, which is not how the pipeline feeds them.
        return [jax.block_until_ready(
            pipelines.encode_program(t2e._encoder, ids, lens))
            for ids, lens in device_batches]

    sides = {"ours": ours, "peer": lambda: peer_embed(t2e, peer, sentences, batch_size),
             "device_only": device_only}
    result = {"workload": "encode_corpus", "sentences": len(sentences), "batch_size": batch_size,
              "tokens_min_median_max": [min(map(len, tokens)), int(np.median(
                  [len(t) for t in tokens])), max(map(len, tokens))],
              **harness.compare(sides, args.repeats, wait_for_idle_s=args.wait_for_idle)}
    total = sum(len(t) for t in tokens)
    harness.add_rates(result, {"sentences": len(sentences), "tokens": total})
    result["padding"] = padding(sentences, tokens, batch_size, device_batches)
    result["device_busy_fraction"] = (result["device_only"]["median_s"]
                                      / result["ours"]["median_s"])
    harness.log(f"encode corpus: ours {result['ours']['sentences_per_s']:,.1f} sent/s, HF "
                f"{result['peer']['sentences_per_s']:,.1f}; device busy "
                f"{result['device_busy_fraction']:.0%}")
    return result


def table(record: dict) -> list[str]:
    p = record["padding"]
    return [f"| encode corpus ({record['sentences']} sentences, batch {record['batch_size']}, "
            f"tokenization included; computed/real tokens {p['ours_computed_over_real']:.2f} vs "
            f"{p['peer_computed_over_real']:.2f}; device busy "
            f"{record['device_busy_fraction']:.0%}) | sentences/s | "
            f"{harness.cell(record['ours'], 'sentences')} | "
            f"{harness.cell(record['peer'], 'sentences')} | {harness.ratio_cell(record)} |"]
