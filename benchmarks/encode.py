"""Text encoding on fixed shapes: our jitted encoder (as the pipeline compiles it) against HF
`M2M100Encoder` + SONAR's mean pooling on the same weights.

Inputs are synthetic ids `[lang] pieces [eos]` without padding, already on the device on both
sides; each call returns once the sentence embeddings are computed. TFLOP/s counts the model's
matrix products: 2·L·(4D² + 2DF)·B·T + 4·L·B·T²·D.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from benchmarks import harness, suites
from sonar_jax import pipelines
from sonar_jax.models.layers import unstacked
from sonar_jax.models.text_encoder import TextEncoder
from sonar_jax.split import SplitModule


def encoder_flops(cfg, rows: int, length: int) -> float:
    d, f, layers = cfg.model_dim, cfg.ffn_dim, cfg.num_layers
    return 2 * layers * (4 * d * d + 2 * d * f) * rows * length + 4 * layers * rows * length ** 2 * d


def models(suite: suites.Suite):
    """(pipeline, HF peer): the same random encoder on both sides."""
    from benchmarks import hf_peer

    model, peer = suites.random_model_and_peer(TextEncoder, suites.text_config(suite, "encoder"),
                                               hf_peer.HFEncoder, seed=0)
    return pipelines.TextToEmbeddingModelPipeline(model, suites.tokenizer()), peer


def check_parity(t2e, peer, suite: suites.Suite) -> dict:
    """Both sides must compute the same function: a padded batch of corpus sentences."""
    sentences = suites.corpus_sentences(t2e.tokenizer, t2e.max_seq_len)
    sample = sorted(sentences, key=len)[:: max(1, len(sentences) // 16)]
    ours = t2e.predict(sample, suites.SOURCE_LANG, batch_size=len(sample))
    theirs = peer.embed(t2e.tokenize(sample, suites.SOURCE_LANG))
    return {"sentences": len(sample),
            **harness.check_parity(ours, theirs, suite.dtype, "sentence embeddings")}


def variants(t2e, backend: str | None = None) -> dict:
    """Our encoder as the pipeline compiles it, and on GPUs with XLA's attention forced (the
    default picks cuDNN's where it applies): the same arrays under another graph."""
    out = {"ours": t2e._encoder}
    if (backend or jax.default_backend()) == "gpu":
        cfg = t2e.model.cfg.replace(attention="xla")
        abstract = nnx.eval_shape(lambda: unstacked(TextEncoder(cfg, rngs=nnx.Rngs(0))))
        out["ours_xla_attention"] = SplitModule(SplitModule.of(abstract).structure,
                                                t2e._encoder.leaves)
    return out


def run(suite: suites.Suite, args) -> dict:
    import torch

    t2e, peer = models(suite)
    record = {"workload": "encode", "encoder_config": t2e.model.cfg.to_dict(),
              "parity": check_parity(t2e, peer, suite), "shapes": []}
    for rows, length in suite.encode_shapes:
        ids = suites.synthetic_tokens(t2e.tokenizer, rows, length, seed=rows)
        ids_j, lens_j = t2e.parallel.shard_rows(ids, np.full(rows, length, np.int32))
        ids_t = torch.from_numpy(hf_ids(ids)).to(peer.device)
        mask_t = torch.ones_like(ids_t)
        calls = {name: (lambda e=encoder: pipelines.encode_program(e, ids_j, lens_j))
                 for name, encoder in variants(t2e).items()}
        sides = {name: harness.jax_ready(call) for name, call in calls.items()}

        def hf():
            with torch.inference_mode():
                return peer.embed_hf(ids_t, mask_t)
        sides["peer"] = harness.torch_ready(hf)
        result = {"rows": rows, "length": length,
                  **harness.compare(sides, args.repeats, wait_for_idle_s=args.wait_for_idle)}
        harness.add_rates(result, {"sentences": rows, "tflop": encoder_flops(
            t2e.model.cfg, rows, length) / 1e12})
        for name, call in calls.items():
            result[name]["dispatch_ms"] = harness.dispatch_seconds(call) * 1e3
        record["shapes"].append(result)
        harness.log(f"encode {rows}x{length}: ours {result['ours']['sentences_per_s']:,.1f} "
                    f"sent/s ({result['ours']['tflop_per_s']:.1f} TFLOP/s, dispatch "
                    f"{result['ours']['dispatch_ms']:.2f} ms), HF "
                    f"{result['peer']['sentences_per_s']:,.1f}")
    return record


def hf_ids(ids: np.ndarray) -> np.ndarray:
    from benchmarks import hf_peer

    return hf_peer.to_hf_ids(ids.astype(np.int64))


def table(record: dict) -> list[str]:
    rows = []
    for r in record["shapes"]:
        xla = r.get("ours_xla_attention_over_peer")
        extra = "" if xla is None else f" (XLA attention: {xla:.2f})"
        rows.append(f"| encode {r['rows']}×{r['length']} | sentences/s (TFLOP/s) | "
                    f"{harness.cell(r['ours'], 'sentences')} ({r['ours']['tflop_per_s']:.1f}) | "
                    f"{harness.cell(r['peer'], 'sentences')} ({r['peer']['tflop_per_s']:.1f}) | "
                    f"{harness.ratio_cell(r)}{extra} |")
    return rows

