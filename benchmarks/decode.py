"""Generation from sentence embeddings: our jitted beam search / greedy search against HF
`generate` on the same decoder weights.

Every side generates exactly `new` tokens per sentence (EOS banned until the last, then forced;
pad never generated) towards fra_Latn with SONAR's prompt [eos, lang]:
- `ours`: `EmbeddingToTextModelPipeline.predict` (batching, host transfers, detokenization),
  whose cache is bucketed (prompt + new -> the next power of two, grown in stages);
- `ours_core`: the bare jitted `generate` with a cache of exactly prompt + new positions;
- `peer`: HF `generate(encoder_outputs=..., decoder_input_ids=[eos, lang], min_new_tokens,
  max_new_tokens, forced EOS, suppressed pad)` and detokenization.

Per-token time is the core call over the new tokens; on GPUs it is set against the time to read
the decoder's weights once (bf16 parameters / HBM bandwidth), the floor of a decode step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import harness, suites
from sonar_jax import pipelines
from sonar_jax.generate import PROMPT_LEN, GenerationConfig, generate
from sonar_jax.models.text_decoder import TextDecoder
from sonar_jax.split import SplitModule


def models(suite: suites.Suite):
    from benchmarks import hf_peer

    model, peer = suites.random_model_and_peer(TextDecoder, suites.text_config(suite, "decoder"),
                                               hf_peer.HFDecoder, seed=1)
    return pipelines.EmbeddingToTextModelPipeline(model, suites.tokenizer()), peer


def weight_bytes(model) -> int:
    """Bytes of the decoder's parameters: what one decode step reads at least."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def agreement(ours: np.ndarray, hf_ids: np.ndarray) -> dict:
    """How often both sides generated the same ids (random models have near-ties, so a late
    divergence is possible without a bug; bf16 makes it likelier)."""
    theirs = hf_ids[:, PROMPT_LEN:]
    same = theirs == ours[:, : theirs.shape[1]]
    return {"identical_sequences": f"{int(same.all(axis=1).sum())}/{len(same)}",
            "identical_token_fraction": float(same.mean())}


def run(suite: suites.Suite, args) -> dict:
    e2t, peer = models(suite)
    rng = np.random.default_rng(0)
    lang = e2t.tokenizer.lang_id(suites.TARGET_LANG)
    record = {"workload": "decode", "decoder_config": e2t.model.cfg.to_dict(),
              "decoder_weight_bytes": weight_bytes(e2t.model), "cases": []}
    decoder = SplitModule.of(e2t.model)  # split once, as the pipeline does
    for num, new, beam in suite.decode:
        embeddings = rng.standard_normal((num, e2t.model.cfg.model_dim)).astype(np.float32)
        total = PROMPT_LEN + new
        hf_config = peer.generation_config(beam_size=beam, new_tokens=new)
        core_config = GenerationConfig(capacity=total, beam_size=beam, min_gen_len=new)
        emb_j, langs_j = jnp.asarray(embeddings), jnp.full((num,), lang, jnp.int32)

        def ours():
            return e2t.predict(embeddings, suites.TARGET_LANG, batch_size=num, beam_size=beam,
                               max_seq_len=total, min_gen_len=new)

        def core():
            return generate(decoder, emb_j, langs_j, core_config).tokens

        def hf():
            ids = peer.generate(embeddings, lang, hf_config)
            return [e2t.tokenizer.decode(row[PROMPT_LEN:]) for row in ids]

        sides = {"ours": ours, "ours_core": harness.jax_ready(core), "peer": hf}
        result = {"sentences": num, "new_tokens": new, "beam_size": beam,
                  **harness.compare(sides, args.repeats, wait_for_idle_s=args.wait_for_idle)}
        result["agreement"] = agreement(np.asarray(core()), peer.generate(embeddings, lang,
                                                                          hf_config))
        harness.add_rates(result, {"tokens": num * new})
        result["core_ms_per_token_step"] = result["ours_core"]["median_s"] / new * 1e3
        if suite.hbm_bytes_per_s:
            floor = record["decoder_weight_bytes"] / suite.hbm_bytes_per_s
            result["weight_read_ms"] = floor * 1e3
            result["step_over_weight_read"] = result["core_ms_per_token_step"] / (floor * 1e3)
        record["cases"].append(result)
        harness.log(f"decode {num}x{new} beam {beam}: ours {result['ours']['tokens_per_s']:,.0f} "
                    f"tok/s (core {result['ours_core']['tokens_per_s']:,.0f}), HF "
                    f"{result['peer']['tokens_per_s']:,.0f}; {result['agreement']}")
    return record


def table(record: dict) -> list[str]:
    rows = []
    for c in record["cases"]:
        name = "greedy" if c["beam_size"] == 1 else f"beam {c['beam_size']}"
        floor = (f"; {c['step_over_weight_read']:.1f}x the weight read"
                 if "step_over_weight_read" in c else "")
        rows.append(f"| decode {name}, {c['sentences']} × {c['new_tokens']} | tokens/s | "
                    f"{harness.cell(c['ours'], 'tokens')} | {harness.cell(c['peer'], 'tokens')} | "
                    f"{harness.ratio_cell(c)} |")
        rows.append(f"| … bare `generate` ({c['core_ms_per_token_step']:.2f} ms a step{floor}) | "
                    f"tokens/s | {harness.cell(c['ours_core'], 'tokens')} | | "
                    f"{harness.ratio_cell(c, 'ours_core')} |")
    return rows
