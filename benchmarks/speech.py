"""The speech encoder: our SpeechEncoder as the pipeline compiles it (fbank frames -> pooled
embedding; the attention pooler included) against HF `SeamlessM4TSpeechEncoder` (its feature projection and
Conformer; HF has no pooler, so the peer does a little less work) on the same weights.

Inputs: random fbank features of `seconds` of audio per utterance (100 frames/s), unpadded,
already on the device; the peer gets the same frames stacked in pairs as the model does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness, suites
from sonar_jax import pipelines, speech_pipelines
from sonar_jax.models.speech_encoder import SpeechEncoder, stack_frames

def run(suite: suites.Suite, args) -> dict:
    import torch

    from benchmarks import hf_peer

    cfg = suites.speech_config(suite)
    model, peer = suites.random_model_and_peer(SpeechEncoder, cfg, hf_peer.HFSpeechEncoder,
                                               seed=2)
    s2e = speech_pipelines.SpeechToEmbeddingModelPipeline(model)
    utterances, seconds = suite.speech_batch
    frames = int(seconds * 100)
    fbank = np.random.default_rng(0).standard_normal((utterances, frames, 80)).astype(np.float32)
    lengths = np.full(utterances, frames, np.int32)
    fbank_j, lengths_j = s2e.parallel.shard_rows(fbank, lengths)
    stacked, _ = stack_frames(jnp.asarray(fbank), jnp.asarray(lengths), cfg.fbank_stride)
    stacked_t = torch.from_numpy(np.array(stacked)).to(peer.device, getattr(torch, suite.dtype))
    mask_t = torch.ones(stacked_t.shape[:2], dtype=torch.long, device=peer.device)

    def hf():
        with torch.inference_mode():
            return peer.encode(stacked_t, mask_t)

    record = {"workload": "speech", "speech_config": cfg.to_dict(), "utterances": utterances,
              "seconds": seconds,
              "parity": parity(s2e._encoder, fbank_j, lengths_j, hf, suite),
              **harness.compare({"ours": harness.jax_ready(lambda: pipelines.encode_program(
                                     s2e._encoder, fbank_j, lengths_j)),
                                 "peer": harness.torch_ready(hf)},
                                args.repeats, wait_for_idle_s=args.wait_for_idle)}
    harness.add_rates(record, {"utterances": utterances, "audio_seconds": utterances * seconds})
    harness.log(f"speech {utterances}x{seconds:g}s: ours {record['ours']['utterances_per_s']:,.1f}"
                f" utt/s, HF {record['peer']['utterances_per_s']:,.1f}")
    return record


def parity(encoder, fbank, lengths, hf, suite) -> dict:
    """Our Conformer states (before the pooler) against the peer's."""
    states = jax.jit(lambda e, x, n: e().encode(x, n)[0])
    return harness.check_parity(states(encoder, fbank, lengths), hf().float().cpu().numpy(),
                                suite.dtype, "Conformer states")


def table(record: dict) -> list[str]:
    return [f"| speech encoder, {record['utterances']} × {record['seconds']:g} s (ours: pooler "
            f"included) | utterances/s | {harness.cell(record['ours'], 'utterances')} | "
            f"{harness.cell(record['peer'], 'utterances')} | {harness.ratio_cell(record)} |"]
