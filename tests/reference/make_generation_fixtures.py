#!/usr/bin/env python3
"""Build the SONAR generation (beam search) parity fixtures with the official reference.

Runs ONLY in the reference environment (torch 2.8.0, fairseq2 0.5.2, sonar-space 0.5.0; see
tests/fixtures/text/README.md, "How they were made"). Nothing here is imported by the project's
tests; they read the files this script writes::

    REFENV/bin/python tests/reference/make_generation_fixtures.py --out tests/fixtures/generation

What it does (all generation is the reference's own code):
  * builds a NEW mid-size random-init SONAR text decoder with
    ``get_sonar_text_decoder_hub().create_new_model`` and applies the documented weight edits of
    ``engineer_decoder`` so that beam search is not degenerate (see tests/fixtures/generation/README.md);
  * embeds a few UDHR sentences with the committed mid encoder
    (tests/fixtures/text/mid_text_encoder.pt, official ``TextToEmbeddingModelPipeline``) and adds two
    random vectors of the same norm;
  * runs ``sonar.inference_pipelines.text.EmbeddingToTextModelPipeline`` and
    ``TextToTextModelPipeline`` for each case, and, to get token ids and scores, the very generator
    the pipeline builds (``BeamSearchSeq2SeqGenerator(pipeline.model, tokenizer.vocab_info, **kwargs)``)
    wrapped in sonar's own ``SequenceToTextConverter`` / ``TextTranslator`` on the same batches;
    asserts that both give the same strings;
  * re-runs every case with a recording beam-search algorithm (delegates to fairseq2's
    ``StandardBeamSearchAlgorithm``, results asserted identical) to measure how close the
    decisions are (``min_decision_gap``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

import fairseq2
from fairseq2.generation.beam_search.algo import BeamSearchAlgorithm, BeamStep, StandardBeamSearchAlgorithm
from fairseq2.generation.beam_search.generator import BeamSearchSeq2SeqGenerator
from fairseq2.nn import BatchLayout
from fairseq2.nn import LayerNorm as Fs2LayerNorm
from sonar.inference_pipelines.text import (
    EmbeddingToTextModelPipeline,
    TextToEmbeddingModelPipeline,
    TextToTextModelPipeline,
)
from sonar.inference_pipelines.utils import SequenceToTextConverter, TextTranslator
from sonar.models.sonar_text import get_sonar_text_decoder_hub, get_sonar_text_encoder_hub

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_text_fixtures import (  # noqa: E402  (same directory; tokenizer + config helpers)
    arch_configs,
    card_langs,
    load_tokenizer,
    select,
    versions,
)

# ----------------------------------------------------------------------------------------
# Configuration

DEFAULT_SPM = Path("tests/fixtures/spm/udhr.spm.model")
DEFAULT_ENCODER = Path("tests/fixtures/text/mid_text_encoder.pt")
ARCH = "mid"  # model_dim 128, 3 layers, 8 heads, ffn 512, vocab 3206 (tests/reference/make_text_fixtures.py)

DECODER_SEED = 4004          # torch.manual_seed before create_new_model
EDIT_SEED = DECODER_SEED + 100_000   # torch.Generator for the LayerNorm perturbation + final LN weight
PROBE_SEED = DECODER_SEED + 200_000  # torch.Generator for the FFN-centering probe batch
LN_SCALE_STD = 0.2           # every LayerNorm: weight = 1 + 0.2 N(0,1), bias = 0.2 N(0,1) (as make_text_fixtures)
LN_BIAS_STD = 0.2
SELF_ATTN_OUT_SCALE = 0.5    # decoder.layers.*.self_attn.output_proj.{weight,bias} *= 0.5
FFN_OUT_SCALE = 0.5          # decoder.layers.*.ffn.output_proj.{weight,bias} *= 0.5
LAST_FFN_OUT_SCALE = 64.0    # then decoder.layers.2.ffn.output_proj.{weight,bias} *= 64 (and re-centred)
FINAL_LN_WEIGHT_STD = 2.5    # decoder.layer_norm.weight = 2.5 N(0,1) (random signs) ...
PRIOR_CHANNELS = [0, 1, 2, 3]  # ... except these: weight 0, bias PRIOR_BIAS (a static logit prior)
PRIOR_BIAS = 5.0             # final LN bias on each PRIOR_CHANNEL: logit prior of v = 5 * sum_k E[v, k]
CONTROL_PRIOR = -10.0        # control tokens (pad, unk, bos, language tags, data tags): prior -10
EOS_PRIOR = 6.0              # EOS: prior +6
LEN_CHANNEL = 88             # = 64 + 24: the cos half of the sinusoidal table, frequency index 24
LEN_GAIN = 16.0              # EOS logit += -LEN_GAIN * LN(h)[LEN_CHANNEL]: grows with the position
EOS_LEN_VALUE = 1.0          # E[eos, LEN_CHANNEL]; final LN weight[LEN_CHANNEL] = -LEN_GAIN / EOS_LEN_VALUE
PROBE_N, PROBE_T, PROBE_EMB_NORM = 8, 16, 8.0

# Inputs: (lang, text-prefix) selectors into udhr_sentences.json
SENTENCES = [
    ("eng_Latn", "All human beings"),
    ("fra_Latn", "Tous les êtres"),
    ("rus_Cyrl", "Все люди"),
    ("zho_Hans", "人人生而自由"),
    ("ell_Grek", "Όλοι οι άνθρωποι"),
    ("heb_Hebr", "כל בני אדם"),
]
NUM_RANDOM = 2
RANDOM_SEED = 4242

E2T_LANGS = ["eng_Latn", "fra_Latn", "rus_Cyrl", "zho_Hans"]
E2T_BEAMS = [1, 5]
E2T_MAX_SEQ_LENS = [12, 24, None]  # None = not passed (pipeline/generator default)
E2T_BATCH_SIZE = 5                 # EmbeddingToTextModelPipeline.predict default -> batches of 5 + 3
# Extra E2T cases, each one option away from the defaults (beam 5, batch 5, default max_seq_len)
E2T_EXTRA = [
    ("eng_Latn", {"min_gen_len": 6}),
    ("eng_Latn", {"max_gen_len": (0.05, 3)}),       # int(0.05 * 128 + 3) = 9 -> max_seq_len 11
    ("fra_Latn", {"len_penalty": 0.5}),
    ("fra_Latn", {"normalize_scores": False}),
    ("rus_Cyrl", {"unk_penalty": -18.0, "max_seq_len": 24}),  # negative: makes <unk> (id 1) likely
    ("zho_Hans", {"temperature": 0.7}),
    ("eng_Latn", {"beam_size": 2, "max_seq_len": 16}),
]

T2T_GROUPS = [  # (source_lang, [selectors]); predict() takes one source_lang per call
    ("eng_Latn", [("eng_Latn", "All human beings"), ("eng_Latn", "  Everyone has"),
                  ("eng_Latn", "Everyone is entitled"), ("eng_Latn", "")]),
    ("fra_Latn", [("fra_Latn", "Tous les êtres"), ("fra_Latn", "Chacun peut")]),
    ("zho_Hans", [("zho_Hans", "人人生而自由")]),
]
T2T_TARGETS = ["fra_Latn", "deu_Latn"]
T2T_BEAMS = [1, 5]
T2T_BATCH_SIZE = 5
T2T_EXTRA = [  # the a*src_len+b rule with a small bound: depends on the longest source of the batch
    ("eng_Latn", "eng_Latn", {"max_gen_len": (0.25, 2)}, 5),
    ("eng_Latn", "eng_Latn", {"max_gen_len": (0.25, 2)}, 1),
    ("eng_Latn", "fra_Latn", {"max_seq_len": 10}, 5),
]

BATCH_EFFECT_BATCH_SIZES = [1, 4, 5, 8]

# ----------------------------------------------------------------------------------------
# The decoder


def control_ids(tokenizer) -> list[int]:
    """pad, unk, bos, eos, the 202 language tags and the 3 data tags (tokenizer ids)."""
    vi = tokenizer.vocab_info
    ids = [vi.pad_idx, vi.unk_idx, vi.bos_idx, vi.eos_idx]
    ids += list(range(vi.size - 205, vi.size))  # 202 language tags + 3 data tags
    return ids


@torch.inference_mode()
def ffn_output_mean(dec, layer: int, cfg) -> torch.Tensor:
    """Mean output of decoder.layers[layer].ffn over a fixed random probe batch (positions >= 1)."""
    gen = torch.Generator().manual_seed(PROBE_SEED)
    d = cfg.model_dim
    emb = torch.randn(PROBE_N, d, generator=gen)
    emb = emb / emb.norm(dim=-1, keepdim=True) * PROBE_EMB_NORM
    tgt = torch.randint(4, 3001, (PROBE_N, PROBE_T), generator=gen)
    tgt[:, 0] = 3
    tgt[:, 1] = 3047  # __eng_Latn__
    cap = {}
    hook = dec.decoder.layers[layer].ffn.register_forward_hook(lambda m, i, o: cap.__setitem__("y", o))
    try:
        dec(emb.unsqueeze(1), BatchLayout((PROBE_N, 1), [1] * PROBE_N), tgt,
            BatchLayout((PROBE_N, PROBE_T), [PROBE_T] * PROBE_N))
    finally:
        hook.remove()
    return cap["y"][:, 1:].reshape(-1, d).mean(0).clone()


def engineer_decoder(dec, cfg, tokenizer) -> list[str]:
    """The documented weight edits (in place). Returns their description."""
    d = cfg.model_dim
    ctrl = control_ids(tokenizer)
    eos = tokenizer.vocab_info.eos_idx
    first_ordinary, last_ordinary = 4, tokenizer.vocab_info.size - 206  # 4 .. 3000
    gen = torch.Generator().manual_seed(EDIT_SEED)
    with torch.no_grad():
        n_ln = 0
        for _, m in dec.named_modules():
            if isinstance(m, (Fs2LayerNorm, torch.nn.LayerNorm)):
                m.weight.copy_(1.0 + LN_SCALE_STD * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(LN_BIAS_STD * torch.randn(m.bias.shape, generator=gen))
                n_ln += 1
        for name, p in dec.named_parameters():
            if ".self_attn.output_proj." in name:
                p.mul_(SELF_ATTN_OUT_SCALE)
            elif ".ffn.output_proj." in name:
                p.mul_(FFN_OUT_SCALE)

        fl = dec.decoder.layer_norm
        fl.weight.copy_(FINAL_LN_WEIGHT_STD * torch.randn(d, generator=gen))
        fl.bias.zero_()
        fl.weight[PRIOR_CHANNELS] = 0.0
        fl.bias[PRIOR_CHANNELS] = PRIOR_BIAS

        # Static logit prior: logit_v gets sum_k bias[k] * E[v, k] over PRIOR_CHANNELS.
        embed = dec.decoder_frontend.embed.weight
        per_ch = PRIOR_BIAS
        for k in PRIOR_CHANNELS:
            embed[ctrl, k] = CONTROL_PRIOR / (per_ch * len(PRIOR_CHANNELS))
            embed[eos, k] = EOS_PRIOR / (per_ch * len(PRIOR_CHANNELS))

        # Equalise ||w * E[v]|| over ordinary tokens (w = final LN weight): no "hub" tokens.
        rows = slice(first_ordinary, last_ordinary + 1)
        n = (embed[rows] * fl.weight).norm(dim=-1, keepdim=True)
        embed[rows] *= n.mean() / n

        # Length channel: only EOS has a non-zero embedding there, and no layer writes to it, so the
        # residual stream at position p >= 1 carries exactly the sinusoidal value cos((p+2) f_24);
        # the final LN weight -LEN_GAIN/EOS_LEN_VALUE turns it into an EOS bonus growing with p.
        embed[:, LEN_CHANNEL] = 0.0
        embed[eos, LEN_CHANNEL] = EOS_LEN_VALUE
        for name, p in dec.named_parameters():
            if name.startswith("decoder.layers.") and ".output_proj." in name:
                p[LEN_CHANNEL] = 0.0  # row LEN_CHANNEL of the weight / entry of the bias
        fl.weight[LEN_CHANNEL] = -LEN_GAIN / EOS_LEN_VALUE
        fl.bias[LEN_CHANNEL] = 0.0

        # The last FFN dominates the residual stream (asymmetric token -> next-token map, no 2-cycles);
        # its mean output over a probe batch is removed through its output bias.
        last = dec.decoder.layers[len(dec.decoder.layers) - 1].ffn.output_proj
        last.weight.mul_(LAST_FFN_OUT_SCALE)
        last.bias.mul_(LAST_FFN_OUT_SCALE)
    mean = ffn_output_mean(dec, len(dec.decoder.layers) - 1, cfg)
    with torch.no_grad():
        last.bias.sub_(mean)
        last.bias[LEN_CHANNEL] = 0.0
    assert dec.decoder_frontend.embed.weight.data_ptr() == dec.final_proj.weight.data_ptr()  # still tied
    return [
        f"seed: torch.manual_seed({DECODER_SEED}); hub.create_new_model(cfg).eval(); edit generator "
        f"torch.Generator().manual_seed({EDIT_SEED})",
        f"1. every LayerNorm ({n_ln}, module order): weight = 1 + {LN_SCALE_STD}*N(0,1), "
        f"bias = {LN_BIAS_STD}*N(0,1)",
        f"2. decoder.layers.*.self_attn.output_proj.{{weight,bias}} *= {SELF_ATTN_OUT_SCALE}; "
        f"decoder.layers.*.ffn.output_proj.{{weight,bias}} *= {FFN_OUT_SCALE}",
        f"3. decoder.layer_norm.weight = {FINAL_LN_WEIGHT_STD}*N(0,1) (random signs: kills the "
        f"copy-the-input-token argmax of a tied embedding), bias = 0; channels {PRIOR_CHANNELS}: "
        f"weight 0, bias {per_ch}",
        f"4. embedding (= tied output projection) channels {PRIOR_CHANNELS}: control tokens "
        f"(pad 0, unk 1, bos 2, language tags 3001-3202, data tags 3203-3205) = "
        f"{CONTROL_PRIOR / (per_ch * len(PRIOR_CHANNELS))} (static logit prior {CONTROL_PRIOR}); "
        f"eos 3 = {EOS_PRIOR / (per_ch * len(PRIOR_CHANNELS))} (prior +{EOS_PRIOR})",
        f"5. ordinary rows {first_ordinary}..{last_ordinary} rescaled so that "
        f"||decoder.layer_norm.weight * E[v]|| is the same for all of them",
        f"6. length channel {LEN_CHANNEL}: embedding column = 0 except E[eos] = {EOS_LEN_VALUE}; "
        f"row {LEN_CHANNEL} of every decoder.layers.*.*.output_proj weight and bias = 0; "
        f"decoder.layer_norm weight[{LEN_CHANNEL}] = {-LEN_GAIN / EOS_LEN_VALUE}, bias 0 "
        f"(EOS logit rises with the position as cos((p+2)*f) falls)",
        f"7. decoder.layers.2.ffn.output_proj.{{weight,bias}} *= {LAST_FFN_OUT_SCALE}, then its bias -= "
        f"mean FFN output over a probe batch (torch.Generator().manual_seed({PROBE_SEED}): "
        f"{PROBE_N} random conditioning vectors of norm {PROBE_EMB_NORM}, random tokens 4..3000, "
        f"prompt [3, 3047], T={PROBE_T}, positions >= 1), bias[{LEN_CHANNEL}] kept 0",
    ]


# ----------------------------------------------------------------------------------------
# Recording algorithm (diagnostics only)


class RecordingBeamSearch(BeamSearchAlgorithm):
    """Returns exactly what StandardBeamSearchAlgorithm returns; records decision gaps.

    A "decision gap" is a score difference whose sign decides the search: between rank B-1 and
    rank B of the sorted candidates when EOS is at one of them (is the EOS candidate finalised?),
    between the last continued non-EOS candidate and the next one, and between neighbours in the
    first B candidates when one of them is EOS (finalisation order).
    """

    def __init__(self, eos_idx: int) -> None:
        self.inner = StandardBeamSearchAlgorithm()
        self.eos = eos_idx
        self.min_gap = math.inf

    def step(self, beam_size: int, lprobs, step_scores) -> BeamStep:
        out = self.inner.step(beam_size, lprobs, step_scores)
        vocab = lprobs.size(1)
        total = (lprobs + step_scores[:, -1].unsqueeze(-1)).view(-1)
        k = min(2 * beam_size + 2, total.numel())
        sc, ix = torch.topk(total, k)
        voc = (ix % vocab).tolist()
        sc = sc.tolist()
        fin = [math.isfinite(x) for x in sc]
        b = beam_size
        gaps = []
        if len(sc) > b and fin[b] and self.eos in (voc[b - 1], voc[b]):
            gaps.append(sc[b - 1] - sc[b])
        non_eos = [i for i in range(len(sc)) if voc[i] != self.eos and fin[i]]
        if len(non_eos) > b and non_eos[b - 1] < 2 * b:
            gaps.append(sc[non_eos[b - 1]] - sc[non_eos[b]])
        if any(voc[i] == self.eos for i in range(min(b, len(sc)))):
            first = [sc[i] for i in range(min(b, len(sc))) if fin[i]]
            gaps += [x - y for x, y in zip(first[:-1], first[1:])]
        if gaps:
            self.min_gap = min(self.min_gap, min(gaps))
        return out


# ----------------------------------------------------------------------------------------
# Running cases


def hyp_dict(h, best: bool) -> dict:
    d = {"tokens": h.seq.tolist(), "score": float(h.score)}
    if best:
        d["step_scores"] = [float(x) for x in h.step_scores]
    return d


def same_hyps(a, b) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(torch.equal(p.seq, q.seq) and torch.equal(p.score, q.score)
                                 for p, q in zip(x, y)) for x, y in zip(a, b))


def e2t_effective(kwargs: dict, dim: int, model_max: int, prompt_len: int = 2) -> dict:
    """fairseq2 0.5.2 BeamSearchSeq2SeqGenerator + _AbstractBeamSearchSequenceGeneratorOp rules."""
    msl = kwargs.get("max_seq_len")
    gen_max = model_max if msl is None else min(msl, model_max)
    a, b = kwargs.get("max_gen_len", (1.0, 128))
    max_gen_len = int(a * dim + b)  # source_len = embedding dim: BatchLayout.of(emb[N, D]).seq_lens = [D]*N
    min_gen_len = kwargs.get("min_gen_len", 1)
    return {"source_len": dim, "max_gen_len": max_gen_len,
            "max_seq_len": min(gen_max, prompt_len + max_gen_len),
            "min_seq_len": min(gen_max, prompt_len + min_gen_len)}


def ended_by(n_tokens: int, max_seq_len: int, prompt_len: int = 2) -> str:
    return "max_seq_len" if n_tokens + prompt_len == max_seq_len else "eos"


def run_e2t_case(pipe, tokenizer, X: torch.Tensor, lang: str, batch_size: int, kwargs: dict,
                 dim: int, model_max: int) -> dict:
    texts = pipe.predict(X, target_lang=lang, batch_size=batch_size, **kwargs)
    eos = tokenizer.vocab_info.eos_idx
    gen = BeamSearchSeq2SeqGenerator(pipe.model, tokenizer.vocab_info, **kwargs)
    rec_algo = RecordingBeamSearch(eos)
    rec = BeamSearchSeq2SeqGenerator(pipe.model, tokenizer.vocab_info, rec_algo, **kwargs)
    conv = SequenceToTextConverter(gen, tokenizer, task="translation", target_lang=lang, mode="target")
    conv_rec = SequenceToTextConverter(rec, tokenizer, task="translation", target_lang=lang, mode="target")
    hyps, gen_texts, batches = [], [], []
    for start in range(0, len(X), batch_size):
        seqs = X[start:start + batch_size]
        t, out = conv.batch_convert(seqs, BatchLayout.of(seqs))
        t2, out2 = conv_rec.batch_convert(seqs, BatchLayout.of(seqs))
        assert t == t2 and same_hyps(out.hypotheses, out2.hypotheses), "recording algo changed results"
        gen_texts += t
        hyps += out.hypotheses
        batches.append(list(range(start, min(start + batch_size, len(X)))))
    assert gen_texts == texts, (gen_texts, texts)
    eff = e2t_effective(kwargs, dim, model_max)
    prompt = conv._target_prefix_seq.tolist()
    return {
        "pipeline": "EmbeddingToTextModelPipeline",
        "target_lang": lang,
        "prompt": prompt,
        "batch_size": batch_size,
        "batches": batches,
        "generator_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
        "beam_size": kwargs.get("beam_size", 5),
        "effective": eff,
        "texts": texts,
        "results": [
            {"text": texts[i],
             "tokens": hs[0].seq.tolist(),
             "score": float(hs[0].score),
             "step_scores": [float(x) for x in hs[0].step_scores],
             "ended_by": ended_by(len(hs[0].seq), eff["max_seq_len"]),
             "hypotheses": [hyp_dict(h, False) for h in hs],
             "best_minus_second": (float(hs[0].score) - float(hs[1].score)) if len(hs) > 1 else None}
            for i, hs in enumerate(hyps)
        ],
        "min_decision_gap": rec_algo.min_gap,
    }


def run_t2t_case(pipe, enc, tokenizer, texts_in: list[str], src_lang: str, tgt_lang: str,
                 batch_size: int, kwargs: dict, model_max: int) -> dict:
    texts = pipe.predict(texts_in, source_lang=src_lang, target_lang=tgt_lang,
                         batch_size=batch_size, **kwargs)
    # What predict() does before building its generator:
    gkw = dict(kwargs)
    gkw["max_seq_len"] = min(model_max, gkw.get("max_seq_len", model_max))
    eos = tokenizer.vocab_info.eos_idx
    gen = BeamSearchSeq2SeqGenerator(pipe.model, tokenizer.vocab_info, **gkw)
    rec_algo = RecordingBeamSearch(eos)
    rec = BeamSearchSeq2SeqGenerator(pipe.model, tokenizer.vocab_info, rec_algo, **gkw)
    tr = TextTranslator(gen, encoder_tokenizer=tokenizer, decoder_tokenizer=tokenizer,
                        source_lang=src_lang, target_lang=tgt_lang)
    tr_rec = TextTranslator(rec, encoder_tokenizer=tokenizer, decoder_tokenizer=tokenizer,
                            source_lang=src_lang, target_lang=tgt_lang)
    src_encoder = tokenizer.create_encoder(task="translation", lang=src_lang, mode="source")
    captured = []
    hook = enc.register_forward_hook(lambda m, i, o: captured.append(o.sentence_embeddings.clone()))
    hyps, gen_texts, batches, embs = [], [], [], []
    try:
        for start in range(0, len(texts_in), batch_size):
            chunk = texts_in[start:start + batch_size]
            captured.clear()
            t, out = tr.batch_translate(chunk)
            assert len(captured) == 1
            embs += captured[0].tolist()
            t2, out2 = tr_rec.batch_translate(chunk)
            assert t == t2 and same_hyps(out.hypotheses, out2.hypotheses), "recording algo changed results"
            gen_texts += t
            hyps += out.hypotheses
            src_lens = [len(src_encoder(x)) for x in chunk]
            a, b = gkw.get("max_gen_len", (1.0, 128))
            max_gen_len = int(a * max(src_lens) + b)
            batches.append({
                "indices": list(range(start, start + len(chunk))),
                "max_source_len": max(src_lens),
                "max_gen_len": max_gen_len,
                "max_seq_len": min(gkw["max_seq_len"], pipe.model.max_target_seq_len, 2 + max_gen_len),
            })
    finally:
        hook.remove()
    assert gen_texts == texts, (gen_texts, texts)
    prompt = tokenizer.create_encoder(lang=tgt_lang, mode="target").prefix_indices.tolist()
    results = []
    for i, hs in enumerate(hyps):
        bt = next(b for b in batches if i in b["indices"])
        results.append({
            "source_text": texts_in[i],
            "source_tokens": src_encoder(texts_in[i]).tolist(),
            "sentence_embedding": embs[i],
            "text": texts[i],
            "tokens": hs[0].seq.tolist(),
            "score": float(hs[0].score),
            "step_scores": [float(x) for x in hs[0].step_scores],
            "ended_by": ended_by(len(hs[0].seq), bt["max_seq_len"]),
            "hypotheses": [hyp_dict(h, False) for h in hs],
            "best_minus_second": (float(hs[0].score) - float(hs[1].score)) if len(hs) > 1 else None,
        })
    return {
        "pipeline": "TextToTextModelPipeline",
        "source_lang": src_lang,
        "target_lang": tgt_lang,
        "prompt": prompt,
        "batch_size": batch_size,
        "generator_kwargs_passed": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
        "generator_kwargs_effective": {k: list(v) if isinstance(v, tuple) else v for k, v in gkw.items()},
        "beam_size": kwargs.get("beam_size", 5),
        "batches": batches,
        "texts": texts,
        "results": results,
        "min_decision_gap": rec_algo.min_gap,
    }


# ----------------------------------------------------------------------------------------
# Independent re-implementation (a check of the algorithm description in README.md)


@torch.inference_mode()
def reimplemented_beam_search(dec, emb: torch.Tensor, prompt: list[int], *, beam_size: int = 5,
                              max_seq_len: int | None = None, min_gen_len: int = 1,
                              max_gen_len=(1.0, 128), temperature: float = 1.0, unk_penalty: float = 0.0,
                              len_penalty: float = 1.0, normalize_scores: bool = True,
                              source_len: int, eos: int = 3, pad: int = 0, unk: int = 1) -> list:
    """fairseq2 0.5.2 beam search, re-written plainly: no KV cache (full prefix recomputed at every
    step), one prompt at a time. Returns [(tokens, score)] like SequenceGeneratorOutput.hypotheses[i]."""
    model_max = dec.max_target_seq_len
    msl = model_max if max_seq_len is None else min(max_seq_len, model_max)
    plen = len(prompt)
    gen_len = int(max_gen_len[0] * source_len + max_gen_len[1])
    min_seq = min(msl, plen + min_gen_len)
    max_seq = min(msl, plen + gen_len)
    cond = emb.view(1, 1, -1)

    def last_logits(prefixes: list[list[int]]) -> torch.Tensor:
        n, t = len(prefixes), len(prefixes[0])
        out = dec(cond.expand(n, 1, -1).contiguous(), BatchLayout((n, 1), [1] * n),
                  torch.tensor(prefixes), BatchLayout((n, t), [t] * n))
        return out[:, -1]

    # prefill: the prompt tokens after the first are scored too (cumulative, float32)
    cum = torch.zeros((), dtype=torch.float32)
    for t in range(1, plen):
        lg = last_logits([prompt[:t]])
        if temperature != 1.0:
            lg = lg / temperature
        cum = cum + torch.log_softmax(lg, -1, dtype=torch.float32)[0, prompt[t]]
    beams = [(list(prompt), cum)]
    finished: list = []
    for step_nr in range(plen, max_seq):
        lg = last_logits([b[0] for b in beams])
        if temperature != 1.0:
            lg = lg / temperature
        lp = torch.log_softmax(lg, -1, dtype=torch.float32)
        if step_nr == max_seq - 1:  # last step: EOS forced
            keep = lp[:, eos].clone()
            lp[:] = -math.inf
            lp[:, eos] = keep
        else:
            lp[:, unk] -= unk_penalty
            lp[:, pad] = -math.inf
            if step_nr < min_seq - 1:
                lp[:, eos] = -math.inf
        total = (lp + torch.stack([b[1] for b in beams]).unsqueeze(-1)).view(-1)
        vocab = lp.size(1)
        sc, ix = torch.topk(total, min(2 * beam_size, total.numel()))
        cand = [(int(i) // vocab, int(i) % vocab, s) for i, s in zip(ix, sc)]
        stop = False
        for b, v, s in cand[:beam_size]:  # EOS only counts among the first beam_size candidates
            if v == eos:
                score = s.clone()
                if normalize_scores:
                    score = score / ((step_nr + 1 - 1) ** len_penalty)  # total length incl. prompt, minus 1
                finished.append((beams[b][0][plen:] + [eos], score))
                if len(finished) == beam_size:
                    stop = True
                    break
        if stop:
            break
        cont = [(b, v, s) for b, v, s in cand if v != eos][:beam_size]
        beams = [(beams[b][0] + [v], s) for b, v, s in cont]
    finished.sort(key=lambda h: float(h[1]), reverse=True)
    return finished


def check_reimplementation(dec, X: torch.Tensor, cases: list[dict]) -> dict:
    n_all = n_same = 0
    max_diff = 0.0
    mismatches = []
    for c in cases:
        kw = dict(c.get("generator_kwargs") or c["generator_kwargs_effective"])
        beam = kw.pop("beam_size", 5)
        if "max_gen_len" in kw:
            kw["max_gen_len"] = tuple(kw["max_gen_len"])
        for i, r in enumerate(c["results"]):
            if c["pipeline"] == "EmbeddingToTextModelPipeline":
                emb, src_len = X[i], X.shape[1]
            else:
                emb = torch.tensor(r["sentence_embedding"], dtype=torch.float32)
                src_len = next(b["max_source_len"] for b in c["batches"] if i in b["indices"])
            hyps = reimplemented_beam_search(dec, emb, c["prompt"], beam_size=beam, source_len=src_len, **kw)
            n_all += 1
            if [h[0] for h in hyps] == [h["tokens"] for h in r["hypotheses"]]:
                n_same += 1
                max_diff = max(max_diff, max(abs(float(h[1]) - q["score"]) for h, q in zip(hyps, r["hypotheses"])))
            else:
                mismatches.append(f"{c['name']}[{i}]")
    return {"what": "reimplemented_beam_search() in the script: no KV cache, one prompt at a time, "
                    "vs. every hypothesis (tokens and order) of every case",
            "results_compared": n_all, "all_hypotheses_token_identical": n_same,
            "max_abs_score_diff": max_diff, "mismatches": mismatches}


# ----------------------------------------------------------------------------------------
# JSON writer: indented objects, scalar lists on one line


def dump_json(obj, indent: int = 0) -> str:
    pad = " " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f'{pad} {json.dumps(k, ensure_ascii=False)}: {dump_json(v, indent + 1)}' for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(not isinstance(x, (dict, list, tuple)) for x in obj):
            return "[" + ", ".join(dump_json(x) for x in obj) + "]"
        items = [f"{pad} {dump_json(x, indent + 1)}" for x in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    if isinstance(obj, float):
        if math.isinf(obj) or math.isnan(obj):
            return json.dumps(str(obj))
        return repr(obj)
    return json.dumps(obj, ensure_ascii=False)


# ----------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--spm", type=Path, default=DEFAULT_SPM)
    ap.add_argument("--sentences", type=Path, default=None, help="default: udhr_sentences.json next to --spm")
    ap.add_argument("--encoder", type=Path, default=DEFAULT_ENCODER, help="the committed mid encoder")
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    fairseq2.init_fairseq2()
    langs = card_langs()
    tokenizer = load_tokenizer(args.spm, langs)
    sentences = json.loads((args.sentences or args.spm.parent / "udhr_sentences.json").read_text(encoding="utf-8"))
    vi = tokenizer.vocab_info
    assert (vi.pad_idx, vi.unk_idx, vi.bos_idx, vi.eos_idx, vi.size) == (0, 1, 2, 3, 3206), vi

    enc_cfg, dec_cfg = arch_configs(ARCH, vi.size)
    enc = get_sonar_text_encoder_hub().load_custom_model(args.encoder, dataclasses.replace(enc_cfg)).eval()

    # --- decoder
    torch.manual_seed(DECODER_SEED)
    dec = get_sonar_text_decoder_hub().create_new_model(dataclasses.replace(dec_cfg)).eval()
    edits = engineer_decoder(dec, dec_cfg, tokenizer)
    ckpt = out / "mid_gen_decoder.pt"
    torch.save({"model": dec.state_dict()}, ckpt)
    dec = get_sonar_text_decoder_hub().load_custom_model(ckpt, dataclasses.replace(dec_cfg)).eval()
    model_max = dec.max_target_seq_len
    dim = dec_cfg.model_dim
    pos_max = dec.decoder_frontend.pos_encoder.max_seq_len
    print(f"decoder: {sum(p.numel() for p in dec.parameters()):,} params, max_target_seq_len "
          f"{model_max}, pos_encoder.max_seq_len {pos_max}", file=sys.stderr)

    # --- inputs
    sel = select(sentences, SENTENCES)
    emb_pipe = TextToEmbeddingModelPipeline(enc, tokenizer)
    sent_emb = torch.cat([emb_pipe.predict([s["text"]], source_lang=s["lang"]) for s in sel]).float()
    norm = float(sent_emb.norm(dim=-1).mean())
    gen = torch.Generator().manual_seed(RANDOM_SEED)
    rnd = torch.randn(NUM_RANDOM, dim, generator=gen)
    rnd = rnd / rnd.norm(dim=-1, keepdim=True) * norm
    X = torch.cat([sent_emb, rnd]).contiguous()
    texts = [s["text"] for s in sel] + [""] * NUM_RANDOM
    in_langs = [s["lang"] for s in sel] + [""] * NUM_RANDOM
    kinds = ["sentence"] * len(sel) + ["random"] * NUM_RANDOM
    np.savez_compressed(out / "inputs.npz", embeddings=X.numpy().astype(np.float32),
                        texts=np.array(texts), langs=np.array(in_langs), kinds=np.array(kinds))

    # --- EmbeddingToText
    e2t = EmbeddingToTextModelPipeline(dec, tokenizer)
    cases = []
    for lang in E2T_LANGS:
        for msl in E2T_MAX_SEQ_LENS:
            for beam in E2T_BEAMS:
                kw = {"beam_size": beam}
                if msl is not None:
                    kw["max_seq_len"] = msl
                c = run_e2t_case(e2t, tokenizer, X, lang, E2T_BATCH_SIZE, kw, dim, model_max)
                c["name"] = f"e2t_{lang}_beam{beam}_msl{msl if msl is not None else 'default'}"
                cases.append(c)
                print(f"  {c['name']}: lens {[len(r['tokens']) for r in c['results']]} "
                      f"gap {c['min_decision_gap']:.2e}", file=sys.stderr)
    for lang, extra in E2T_EXTRA:
        kw = {"beam_size": 5, **extra}
        c = run_e2t_case(e2t, tokenizer, X, lang, E2T_BATCH_SIZE, kw, dim, model_max)
        c["name"] = f"e2t_{lang}_" + "_".join(f"{k}{'-'.join(map(str, v)) if isinstance(v, tuple) else v}"
                                              for k, v in kw.items())
        cases.append(c)
        print(f"  {c['name']}: lens {[len(r['tokens']) for r in c['results']]} "
              f"gap {c['min_decision_gap']:.2e}", file=sys.stderr)

    # --- TextToText
    t2t = TextToTextModelPipeline(enc, dec, tokenizer)
    groups = {src: [s["text"] for s in select(sentences, sels)] for src, sels in T2T_GROUPS}
    for src, _ in T2T_GROUPS:
        for tgt in T2T_TARGETS:
            for beam in T2T_BEAMS:
                c = run_t2t_case(t2t, enc, tokenizer, groups[src], src, tgt, T2T_BATCH_SIZE,
                                 {"beam_size": beam}, pos_max)
                c["name"] = f"t2t_{src}_to_{tgt}_beam{beam}"
                cases.append(c)
                print(f"  {c['name']}: lens {[len(r['tokens']) for r in c['results']]} "
                      f"gap {c['min_decision_gap']:.2e}", file=sys.stderr)
    for src, tgt, extra, bs in T2T_EXTRA:
        kw = {"beam_size": 5, **extra}
        c = run_t2t_case(t2t, enc, tokenizer, groups[src], src, tgt, bs, kw, pos_max)
        c["name"] = f"t2t_{src}_to_{tgt}_batch{bs}_" + "_".join(
            f"{k}{'-'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in kw.items())
        cases.append(c)
        print(f"  {c['name']}: lens {[len(r['tokens']) for r in c['results']]} "
              f"gap {c['min_decision_gap']:.2e}", file=sys.stderr)

    # --- batch effects
    batch_effects = []
    for lang, beam in (("eng_Latn", 5), ("zho_Hans", 1)):
        runs = {}
        for bs in BATCH_EFFECT_BATCH_SIZES:
            runs[bs] = run_e2t_case(e2t, tokenizer, X, lang, bs, {"beam_size": beam}, dim, model_max)
        ref = runs[BATCH_EFFECT_BATCH_SIZES[0]]
        entry = {"pipeline": "EmbeddingToTextModelPipeline", "target_lang": lang, "beam_size": beam,
                 "batch_sizes": BATCH_EFFECT_BATCH_SIZES, "compare_to": f"batch_size {BATCH_EFFECT_BATCH_SIZES[0]}"}
        for bs, r in runs.items():
            entry[f"batch_size_{bs}"] = {
                "texts_identical": r["texts"] == ref["texts"],
                "tokens_identical": all(a["tokens"] == b["tokens"] for a, b in zip(r["results"], ref["results"])),
                "all_hypotheses_tokens_identical": all(
                    [h["tokens"] for h in a["hypotheses"]] == [h["tokens"] for h in b["hypotheses"]]
                    for a, b in zip(r["results"], ref["results"])),
                "max_abs_score_diff": max(abs(a["score"] - b["score"]) for a, b in zip(r["results"], ref["results"])),
            }
        batch_effects.append(entry)
    for src in ("eng_Latn",):
        runs = {}
        for bs in BATCH_EFFECT_BATCH_SIZES:
            runs[bs] = run_t2t_case(t2t, enc, tokenizer, groups[src], src, "fra_Latn", bs,
                                    {"beam_size": 5}, pos_max)
        ref = runs[BATCH_EFFECT_BATCH_SIZES[0]]
        entry = {"pipeline": "TextToTextModelPipeline", "source_lang": src, "target_lang": "fra_Latn",
                 "beam_size": 5, "batch_sizes": BATCH_EFFECT_BATCH_SIZES,
                 "compare_to": f"batch_size {BATCH_EFFECT_BATCH_SIZES[0]}"}
        for bs, r in runs.items():
            entry[f"batch_size_{bs}"] = {
                "texts_identical": r["texts"] == ref["texts"],
                "tokens_identical": all(a["tokens"] == b["tokens"] for a, b in zip(r["results"], ref["results"])),
                "max_abs_score_diff": max(abs(a["score"] - b["score"]) for a, b in zip(r["results"], ref["results"])),
                "max_abs_embedding_diff": max(
                    float(np.abs(np.array(a["sentence_embedding"]) - np.array(b["sentence_embedding"])).max())
                    for a, b in zip(r["results"], ref["results"])),
                "batches": [{"indices": b["indices"], "max_source_len": b["max_source_len"],
                             "max_seq_len": b["max_seq_len"]} for b in r["batches"]],
            }
        batch_effects.append(entry)
    # same T2T comparison where the a*src_len+b bound binds
    runs = {}
    for bs in BATCH_EFFECT_BATCH_SIZES:
        runs[bs] = run_t2t_case(t2t, enc, tokenizer, groups["eng_Latn"], "eng_Latn", "eng_Latn", bs,
                                {"beam_size": 5, "max_gen_len": (0.25, 2)}, pos_max)
    ref = runs[BATCH_EFFECT_BATCH_SIZES[0]]
    entry = {"pipeline": "TextToTextModelPipeline", "source_lang": "eng_Latn", "target_lang": "eng_Latn",
             "beam_size": 5, "generator_kwargs": {"max_gen_len": [0.25, 2]},
             "batch_sizes": BATCH_EFFECT_BATCH_SIZES, "compare_to": f"batch_size {BATCH_EFFECT_BATCH_SIZES[0]}"}
    for bs, r in runs.items():
        entry[f"batch_size_{bs}"] = {
            "texts_identical": r["texts"] == ref["texts"],
            "tokens_identical": all(a["tokens"] == b["tokens"] for a, b in zip(r["results"], ref["results"])),
            "lengths": [len(a["tokens"]) for a in r["results"]],
            "batches": [{"indices": b["indices"], "max_source_len": b["max_source_len"],
                         "max_seq_len": b["max_seq_len"]} for b in r["batches"]],
        }
    batch_effects.append(entry)

    # --- summary statistics
    e2t_main = [c for c in cases if c["name"].startswith("e2t_") and "_msl" in c["name"]]
    by = {c["name"]: c for c in e2t_main}
    summary = {
        "num_cases": len(cases),
        "min_decision_gap_over_all_cases": min(c["min_decision_gap"] for c in cases),
        "min_best_minus_second_over_all_cases": min(
            r["best_minus_second"] for c in cases for r in c["results"] if r["best_minus_second"] is not None),
        "e2t_outputs_ended_by_eos": sum(r["ended_by"] == "eos" for c in e2t_main for r in c["results"]),
        "e2t_outputs_ended_by_max_seq_len": sum(r["ended_by"] == "max_seq_len" for c in e2t_main for r in c["results"]),
        "e2t_generated_lengths_incl_eos": sorted({len(r["tokens"]) for c in e2t_main for r in c["results"]}),
        "e2t_beam5_differs_from_beam1": sum(
            a["tokens"] != b["tokens"]
            for lang in E2T_LANGS for msl in ("12", "24", "default")
            for a, b in zip(by[f"e2t_{lang}_beam1_msl{msl}"]["results"], by[f"e2t_{lang}_beam5_msl{msl}"]["results"])),
        "e2t_pairs_compared": len(E2T_LANGS) * 3 * len(X),
        "e2t_distinct_outputs_over_4_langs_per_input_beam5_default": [
            len({tuple(by[f"e2t_{lang}_beam5_msldefault"]["results"][i]["tokens"]) for lang in E2T_LANGS})
            for i in range(len(X))],
        "distinct_generated_token_ids": len({t for c in cases for r in c["results"] for t in r["tokens"]}),
    }

    summary["reimplementation_check"] = check_reimplementation(dec, X, cases)
    assert not summary["reimplementation_check"]["mismatches"], summary["reimplementation_check"]

    doc = {
        "format": "see README.md in this folder",
        "reference": versions(),
        "model": {
            "checkpoint": "tests/fixtures/generation/mid_gen_decoder.pt",
            "family": "transformer_decoder (sonar text decoder), arch 'basic' shrunk to 'mid'",
            "config": {"model_dim": dim, "num_decoder_layers": dec_cfg.num_decoder_layers,
                       "num_decoder_attn_heads": dec_cfg.num_decoder_attn_heads,
                       "ffn_inner_dim": dec_cfg.ffn_inner_dim, "vocab_size": vi.size,
                       "max_seq_len": dec_cfg.max_seq_len, "model_vocab_info_pad_idx": dec_cfg.vocab_info.pad_idx},
            "max_target_seq_len": model_max,
            "pos_encoder_max_seq_len": pos_max,
            "weight_edits": edits,
            "encoder_for_t2t_and_inputs": "tests/fixtures/text/mid_text_encoder.pt",
        },
        "tokenizer": {"spm_model": "tests/fixtures/spm/udhr.spm.model", "pad_idx": vi.pad_idx,
                      "unk_idx": vi.unk_idx, "bos_idx": vi.bos_idx, "eos_idx": vi.eos_idx,
                      "vocab_size": vi.size,
                      "target_prompts": {lang: tokenizer.create_encoder(lang=lang, mode="target").prefix_indices.tolist()
                                         for lang in sorted(set(E2T_LANGS + T2T_TARGETS))}},
        "inputs": {"file": "tests/fixtures/generation/inputs.npz", "texts": texts, "langs": in_langs, "kinds": kinds,
                   "random_vectors": f"torch.Generator().manual_seed({RANDOM_SEED}), N(0,1) scaled to the mean "
                                     f"norm of the sentence embeddings ({norm!r})",
                   "t2t_groups": {src: groups[src] for src, _ in T2T_GROUPS}},
        "summary": summary,
        "batch_effects": batch_effects,
        "cases": cases,
    }
    (out / "cases.json").write_text(dump_json(doc) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=1, ensure_ascii=False), file=sys.stderr)
    print(json.dumps(batch_effects, indent=1, ensure_ascii=False)[:4000], file=sys.stderr)
    for f in sorted(out.iterdir()):
        print(f"  {f.name}: {f.stat().st_size:,} bytes  md5 {hashlib.md5(f.read_bytes()).hexdigest()}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
