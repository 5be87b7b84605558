#!/usr/bin/env python3
"""Build the SONAR text parity fixtures with the official reference implementation.

Runs ONLY in the reference environment (torch 2.8.0, fairseq2 0.5.2, sonar-space 0.5.0; see
tests/fixtures/text/README.md, "How they were made"). Nothing here is
imported by the project's tests; they read the files this script writes.

Small fixtures (committed, tests/fixtures/text/)::

    REFENV/bin/python tests/reference/make_text_fixtures.py \
        --spm tests/fixtures/spm/udhr.spm.model --out tests/fixtures/text

Full-size models (NOT committed; about 7 GB on disk)::

    REFENV/bin/python tests/reference/make_text_fixtures.py \
        --spm tests/fixtures/spm/udhr.spm.model --arch basic --out SCRATCH/full

Everything is built with the reference's own code:
  * tokenizer: ``fairseq2.models.nllb.tokenizer.load_nllb_tokenizer`` with the 202 language
    codes of SONAR's own asset card (``sonar/cards/text_sonar_basic_encoder.yaml``, file order)
    and ``default_lang="eng_Latn"``;
  * models: ``sonar.models.sonar_text.get_sonar_text_{encoder,decoder}_hub()``,
    ``hub.get_arch_config("basic")`` shrunk with ``dataclasses.replace``,
    ``hub.create_new_model(cfg).eval()``; every LayerNorm weight is then set to
    1 + 0.2*N(0,1) and every LayerNorm bias to 0.2*N(0,1) (fixed seeds);
  * forward passes with ``fairseq2.nn.BatchLayout`` describing right padding;
  * ``sonar.inference_pipelines.text.TextToEmbeddingModelPipeline`` for the pipeline check;
  * checkpoints saved like the released files: ``torch.save({"model": model.state_dict()})``;
  * the legacy fairseq(1)-layout files are read back through the hub's own loader
    (``hub.load_custom_model``), which calls sonar's
    ``sonar.models.sonar_text.checkpoint._convert_sonar_text_{encoder,decoder}_checkpoint``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import gc
import importlib.resources
import inspect
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

import fairseq2
from fairseq2.models.nllb.tokenizer import NllbTokenizerConfig, load_nllb_tokenizer
from fairseq2.models.utils.checkpoint import convert_fairseq_state_dict
from fairseq2.nn import BatchLayout
from fairseq2.nn import LayerNorm as Fs2LayerNorm
from sonar.inference_pipelines.text import TextToEmbeddingModelPipeline
from sonar.models.sonar_text import (
    get_sonar_text_decoder_hub,
    get_sonar_text_encoder_hub,
)
from sonar.models.sonar_text import checkpoint as sonar_text_checkpoint

# ----------------------------------------------------------------------------------------
# Configuration

ARCHS = {
    # name: (model_dim, layers, heads, ffn_inner_dim)
    "tiny": (64, 2, 4, 128),
    "mid": (128, 3, 8, 512),
}
SEEDS = {  # torch seeds of the model initialisations and of the LayerNorm perturbations
    ("tiny", "encoder"): 1001,
    ("tiny", "decoder"): 1002,
    ("mid", "encoder"): 2001,
    ("mid", "decoder"): 2002,
    ("basic", "encoder"): 3001,
    ("basic", "decoder"): 3002,
}
LN_SCALE_STD = 0.2
LN_BIAS_STD = 0.2

LONGEST = object()  # selector: the longest sentence of that language

# Batches, as (lang, text-prefix) selectors into udhr_sentences.json (first match wins),
# so that the batches do not depend on the file's order.
ENCODER_BATCH = [
    ("eng_Latn", "All human beings"),
    ("fra_Latn", "Chacun peut"),
    ("rus_Cyrl", "Все люди"),
    ("arb_Arab", "لكل إنسان"),
    ("zho_Hans", "人人生而自由"),
    ("hin_Deva", "सभी मनुष्यों"),
    ("eng_Latn", ""),                                  # empty string
    ("eng_Latn", LONGEST),                             # the longest sentence
]
DECODER_BATCH = [
    ("eng_Latn", "All human beings"),
    ("fra_Latn", "Tous les êtres"),
    ("rus_Cyrl", "Все люди"),
    ("zho_Hans", "人人生而自由"),
    ("heb_Hebr", "כל בני אדם"),
    ("eng_Latn", ""),
]
FULL_ENCODER_BATCH = [
    ("eng_Latn", "All human beings"),
    ("fra_Latn", "Chacun peut"),
    ("zho_Hans", "人人生而自由"),
    ("eng_Latn", ""),
]
FULL_DECODER_BATCH = [
    ("eng_Latn", "All human beings"),
    ("rus_Cyrl", "Все люди"),
    ("zho_Hans", "人人生而自由"),
    ("eng_Latn", ""),
]
FULL_LOGIT_SEQS = 2      # full-size decoder: logits stored for the first 2 sequences ...
FULL_LOGIT_POSITIONS = 3  # ... and their first 3 positions; argmax stored everywhere
MAX_DECODER_T = 40

LANG_TAGS_TO_RECORD = ["eng_Latn", "fra_Latn", "deu_Latn", "rus_Cyrl", "zho_Hans", "ace_Arab"]

# ----------------------------------------------------------------------------------------
# Tokenizer and sentences


def card_langs() -> list[str]:
    """The 202 language codes of SONAR's text encoder card, in card order."""
    card = importlib.resources.files("sonar").joinpath("cards/text_sonar_basic_encoder.yaml")
    import yaml

    for doc in yaml.safe_load_all(card.read_text(encoding="utf-8")):
        if doc and doc.get("name") == "text_sonar_basic_encoder":
            langs = list(doc["tokenizer_config"]["_set_"]["langs"])
            assert len(langs) == 202 and len(set(langs)) == 202, len(langs)
            return langs
    raise RuntimeError("text_sonar_basic_encoder card not found in the sonar package")


def load_tokenizer(spm_path: Path, langs: list[str]):
    return load_nllb_tokenizer(spm_path, NllbTokenizerConfig(langs=langs, default_lang="eng_Latn"))


def select(sentences: list[dict], selectors) -> list[dict]:
    out = []
    for lang, prefix in selectors:
        if prefix is LONGEST:
            out.append(max((s for s in sentences if s["lang"] == lang), key=lambda s: len(s["text"])))
            continue
        for s in sentences:
            if s["lang"] == lang and (s["text"].startswith(prefix) if prefix else s["text"] == ""):
                out.append(s)
                break
        else:
            raise KeyError(f"no sentence for {lang!r} starting with {prefix!r}")
    return out


def encode(tokenizer, text: str, lang: str, mode: str) -> list[int]:
    return tokenizer.create_encoder(lang=lang, mode=mode)(text).tolist()


def pad_batch(seqs: list[list[int]], pad_idx: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(map(len, seqs))
    out = np.full((len(seqs), width), pad_idx, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, np.array([len(s) for s in seqs], dtype=np.int64)


def tokens_json(tokenizer, sentences: list[dict], langs: list[str], spm_path: Path) -> dict:
    vi = tokenizer.vocab_info
    decoder = tokenizer.create_decoder()
    items = []
    for s in sentences:
        src = encode(tokenizer, s["text"], s["lang"], "source")
        tgt = encode(tokenizer, s["text"], s["lang"], "target")
        pieces = tokenizer.create_encoder(lang=s["lang"], mode="source").encode_as_tokens(s["text"])
        items.append(
            {
                "lang": s["lang"],
                "text": s["text"],
                "source_ids": src,
                "target_ids": tgt,
                "source_pieces": pieces,
                "decoded": decoder(torch.tensor(tgt)),
                "decoded_source": decoder(torch.tensor(src)),
            }
        )
    src_enc = tokenizer.create_encoder(lang="eng_Latn", mode="source")
    mining = tokenizer.create_encoder(lang="eng_Latn", mode="source_mining").prefix_indices.tolist()
    mmt = tokenizer.create_encoder(lang="eng_Latn", mode="source_mmt_bt").prefix_indices.tolist()
    smt = tokenizer.create_encoder(lang="eng_Latn", mode="source_smt_bt").prefix_indices.tolist()
    lang_ids = {
        lang: tokenizer.create_encoder(lang=lang, mode="source").prefix_indices.tolist()[0]
        for lang in dict.fromkeys(LANG_TAGS_TO_RECORD + [langs[0], langs[-1]])
    }
    return {
        "tokenizer": {
            "spm_model": "tests/fixtures/spm/udhr.spm.model",
            "spm_model_size_bytes": spm_path.stat().st_size,
            "loader": "fairseq2.models.nllb.tokenizer.load_nllb_tokenizer(path, "
            "NllbTokenizerConfig(langs=<202 codes of sonar's text_sonar_basic_encoder card>, "
            "default_lang='eng_Latn'))",
            "vocab_size": vi.size,
            "pad_idx": vi.pad_idx,
            "unk_idx": vi.unk_idx,
            "bos_idx": vi.bos_idx,
            "eos_idx": vi.eos_idx,
            "langs": langs,
            "lang_ids": lang_ids,
            "first_lang_id": lang_ids[langs[0]],
            "data_tag_ids": {"<MINED_DATA>": mining[1], "<MMT_BT_DATA>": mmt[1], "<SMT_BT_DATA>": smt[1]},
            "source_mode": {"prefix": src_enc.prefix_indices.tolist(), "suffix": src_enc.suffix_indices.tolist()},
            "target_mode": {
                "prefix": tokenizer.create_encoder(lang="eng_Latn", mode="target").prefix_indices.tolist(),
                "suffix": tokenizer.create_encoder(lang="eng_Latn", mode="target").suffix_indices.tolist(),
            },
        },
        "sentences": items,
    }


# ----------------------------------------------------------------------------------------
# Models


def arch_configs(arch: str, vocab_size: int):
    """Fresh encoder/decoder configs (the encoder factory mutates max_seq_len in place)."""
    enc_cfg = get_sonar_text_encoder_hub().get_arch_config("basic")
    dec_cfg = get_sonar_text_decoder_hub().get_arch_config("basic")
    enc_cfg = dataclasses.replace(enc_cfg, vocab_info=dataclasses.replace(enc_cfg.vocab_info, size=vocab_size))
    dec_cfg = dataclasses.replace(dec_cfg, vocab_info=dataclasses.replace(dec_cfg.vocab_info, size=vocab_size))
    if arch != "basic":
        dim, layers, heads, ffn = ARCHS[arch]
        shrink = dict(
            model_dim=dim,
            num_encoder_layers=layers,
            num_decoder_layers=layers,
            num_encoder_attn_heads=heads,
            num_decoder_attn_heads=heads,
            ffn_inner_dim=ffn,
        )
        enc_cfg = dataclasses.replace(enc_cfg, **shrink)
        dec_cfg = dataclasses.replace(dec_cfg, **shrink)
    return enc_cfg, dec_cfg


def perturb_layer_norms(model: torch.nn.Module, seed: int) -> int:
    gen = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for _, m in model.named_modules():
            if isinstance(m, (Fs2LayerNorm, torch.nn.LayerNorm)):
                assert m.weight is not None and m.bias is not None
                m.weight.copy_(1.0 + LN_SCALE_STD * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(LN_BIAS_STD * torch.randn(m.bias.shape, generator=gen))
                n += 1
    n_keys = sum(1 for k in model.state_dict() if k.endswith("layer_norm.weight"))
    assert n == n_keys, (n, n_keys)
    return n


def build(kind: str, arch: str, cfg):
    hub = get_sonar_text_encoder_hub() if kind == "encoder" else get_sonar_text_decoder_hub()
    seed = SEEDS[(arch, kind)]
    torch.manual_seed(seed)
    model = hub.create_new_model(dataclasses.replace(cfg)).eval()
    n_ln = perturb_layer_norms(model, seed + 100_000)
    print(f"  {arch} {kind}: {sum(p.numel() for p in model.parameters()):,} params, "
          f"{n_ln} LayerNorms perturbed", file=sys.stderr)
    return model


def save_released_format(model: torch.nn.Module, path: Path) -> None:
    torch.save({"model": model.state_dict()}, path)


def check_reference_loads(model: torch.nn.Module, hub, path: Path, cfg) -> None:
    """The saved file loads through the reference loader (hub.load_custom_model) unchanged."""
    loaded = hub.load_custom_model(path, dataclasses.replace(cfg)).eval()
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), path.name


@torch.inference_mode()
def encoder_forward(enc, tokens: np.ndarray, lens: np.ndarray):
    layout = BatchLayout(tuple(tokens.shape), seq_lens=lens.tolist())
    out = enc(torch.from_numpy(tokens), layout)
    return out.sentence_embeddings.float().numpy(), out.encoded_seqs.float().numpy()


@torch.inference_mode()
def decoder_forward(dec, emb: np.ndarray, tgt: np.ndarray, tgt_lens: np.ndarray) -> np.ndarray:
    n = emb.shape[0]
    src = torch.from_numpy(emb).unsqueeze(1)
    src_layout = BatchLayout((n, 1), seq_lens=[1] * n)
    tgt_layout = BatchLayout(tuple(tgt.shape), seq_lens=tgt_lens.tolist())
    return dec(src, src_layout, torch.from_numpy(tgt), tgt_layout).float().numpy()


def pipeline_embeddings(enc, tokenizer, batch: list[dict]) -> np.ndarray:
    """Official TextToEmbeddingModelPipeline, one call per language (input order kept)."""
    pipe = TextToEmbeddingModelPipeline(enc, tokenizer)
    out = np.zeros((len(batch), enc.layer_norm.weight.shape[0]), dtype=np.float32)
    for lang in dict.fromkeys(s["lang"] for s in batch):
        idx = [i for i, s in enumerate(batch) if s["lang"] == lang]
        emb = pipe.predict([batch[i]["text"] for i in idx], source_lang=lang)
        out[idx] = emb.float().numpy()
    return out


def check_not_degenerate(logits: np.ndarray, tgt_lens: np.ndarray) -> None:
    for i, n in enumerate(tgt_lens):
        am = logits[i, :n].argmax(-1)
        if n >= 4 and len(set(am.tolist())) < 2:
            raise AssertionError(f"degenerate logits: argmax constant along sequence {i}: {am}")
    valid = np.concatenate([logits[i, :n].argmax(-1) for i, n in enumerate(tgt_lens)])
    assert len(set(valid.tolist())) >= 3, valid


def texts_langs(batch: list[dict]) -> dict:
    return {"texts": np.array([s["text"] for s in batch]), "langs": np.array([s["lang"] for s in batch])}


# ----------------------------------------------------------------------------------------
# Legacy fairseq(1) layout
#
# sonar 0.5.0's _convert_sonar_text_decoder_checkpoint(checkpoint, config):
#   1. unwraps checkpoint["model"] if present; returns as is if "decoder_frontend.embed.weight"
#      is a key (fairseq2 layout);
#   2. else takes checkpoint["state_dict"], deletes "version" and "embed_positions._float_tensor"
#      (both, or neither if "version" is missing);
#   3. renames keys with an (unanchored, first-match-wins) regex map, and
#   4. permutes embedding rows 0..3 in place: new[[0, 1, 2, 3]] = old[[1, 3, 0, 2]]
#      (fairseq BOS, PAD, EOS, UNK -> fairseq2 PAD, UNK, BOS, EOS).
# The loader (fairseq2 BasicModelCheckpointLoader) loads with weights_only=True, so the file
# may hold only tensors/containers, and yields shared tensors once: "output_projection.weight"
# must be the SAME tensor object as "embed_tokens.weight" (as in a tied fairseq model) so that
# the in-place row permutation reaches both names.
#
# The inverse maps below are fairseq2 name -> fairseq name.

FS2_TO_FAIRSEQ_DECODER = [
    (r"^decoder\.layers\.([0-9]+)\.self_attn\.output_proj\.", r"layers.\1.self_attn.out_proj."),
    (r"^decoder\.layers\.([0-9]+)\.self_attn\.(q|k|v)_proj\.", r"layers.\1.self_attn.\2_proj."),
    (r"^decoder\.layers\.([0-9]+)\.self_attn_layer_norm\.", r"layers.\1.self_attn_layer_norm."),
    (r"^decoder\.layers\.([0-9]+)\.encoder_decoder_attn\.output_proj\.", r"layers.\1.encoder_attn.out_proj."),
    (r"^decoder\.layers\.([0-9]+)\.encoder_decoder_attn\.(q|k|v)_proj\.", r"layers.\1.encoder_attn.\2_proj."),
    (r"^decoder\.layers\.([0-9]+)\.encoder_decoder_attn_layer_norm\.", r"layers.\1.encoder_attn_layer_norm."),
    (r"^decoder\.layers\.([0-9]+)\.ffn\.inner_proj\.", r"layers.\1.fc1."),
    (r"^decoder\.layers\.([0-9]+)\.ffn\.output_proj\.", r"layers.\1.fc2."),
    (r"^decoder\.layers\.([0-9]+)\.ffn_layer_norm\.", r"layers.\1.final_layer_norm."),
    (r"^decoder\.layer_norm\.", r"layer_norm."),
    (r"^decoder_frontend\.embed\.", r"embed_tokens."),
    (r"^final_proj\.", r"output_projection."),
]
FS2_TO_FAIRSEQ_ENCODER = [
    (r"^encoder\.layers\.([0-9]+)\.self_attn\.output_proj\.", r"layers.\1.self_attn.out_proj."),
    (r"^encoder\.layers\.([0-9]+)\.self_attn\.(q|k|v)_proj\.", r"layers.\1.self_attn.\2_proj."),
    (r"^encoder\.layers\.([0-9]+)\.self_attn_layer_norm\.", r"layers.\1.self_attn_layer_norm."),
    (r"^encoder\.layers\.([0-9]+)\.ffn\.inner_proj\.", r"layers.\1.fc1."),
    (r"^encoder\.layers\.([0-9]+)\.ffn\.output_proj\.", r"layers.\1.fc2."),
    (r"^encoder\.layers\.([0-9]+)\.ffn_layer_norm\.", r"layers.\1.final_layer_norm."),
    (r"^encoder_frontend\.embed\.", r"embed_tokens."),
    (r"^layer_norm\.", r"layer_norm."),  # not in sonar's map: passes through unchanged
]
# fairseq2 row r of the embedding goes to fairseq row FS2_TO_FAIRSEQ_ROWS[r] ...
# i.e. fairseq[[0, 1, 2, 3]] = fairseq2[[2, 0, 3, 1]]  (inverse of new[[0,1,2,3]] = old[[1,3,0,2]])
FAIRSEQ_ROWS_FROM_FS2 = [2, 0, 3, 1]
SONAR_ROWS_FROM_FAIRSEQ = [1, 3, 0, 2]
# fairseq's own non-parameter entries, which sonar's converter deletes
FAIRSEQ_EXTRA = {"version": torch.tensor([3.0]), "embed_positions._float_tensor": torch.tensor([1.0])}


def rename(key: str, rules) -> str:
    for pat, rep in rules:
        new, n = re.subn(pat, rep, key)
        if n:
            return new
    raise KeyError(f"no fairseq name for {key}")


def to_fairseq_layout(state_dict: dict, rules, embed_key: str, tied_key: str | None) -> dict:
    sd: dict[str, torch.Tensor] = {}
    embed = state_dict[embed_key].detach().clone()
    embed[[0, 1, 2, 3]] = embed[FAIRSEQ_ROWS_FROM_FS2].clone()
    for key, value in state_dict.items():
        if key == tied_key:
            continue
        sd[rename(key, rules)] = embed if key == embed_key else value.detach().clone()
    if tied_key is not None:
        sd[rename(tied_key, rules)] = embed  # same tensor object: tied, as in fairseq
    sd.update({k: v.clone() for k, v in FAIRSEQ_EXTRA.items()})
    return {"state_dict": sd}


def sonar_encoder_key_map() -> dict[str, str]:
    """The ``key_map`` literal inside sonar's encoder converter, read from its source."""
    fn = sonar_text_checkpoint._convert_sonar_text_encoder_checkpoint
    tree = ast.parse(inspect.getsource(fn))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "key_map" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise RuntimeError("key_map not found in sonar's encoder converter")


def prove_fairseq_layout(enc, dec, enc_cfg, dec_cfg, enc_path: Path, dec_path: Path,
                         io_enc: dict, io_dec: dict) -> dict:
    """Reload the fairseq-layout files through the reference's own code; compare outputs."""
    report = {}

    # Decoder: the real loader, end to end.
    # hub.load_custom_model -> StandardModelFamily._do_load_model -> BasicModelCheckpointLoader
    #   -> sonar's _convert_sonar_text_decoder_checkpoint -> set_model_state (strict).
    dec2 = get_sonar_text_decoder_hub().load_custom_model(dec_path, dataclasses.replace(dec_cfg)).eval()
    sd_a, sd_b = dec.state_dict(), dec2.state_dict()
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    logits2 = decoder_forward(dec2, io_dec["embeddings"], io_dec["tgt_tokens"], io_dec["tgt_lens"])
    max_diff = float(np.abs(logits2 - io_dec["logits"]).max())
    assert max_diff == 0.0, max_diff
    report["decoder"] = (
        "PROVEN: get_sonar_text_decoder_hub().load_custom_model(tiny_text_decoder_fairseq.pt, cfg) "
        "(runs sonar.models.sonar_text.checkpoint._convert_sonar_text_decoder_checkpoint) gives a "
        f"state dict bit-identical to the fairseq2-layout model and logits with max |diff| = {max_diff}"
    )
    del dec2

    # Encoder: the real loader fails (dead code in sonar 0.5.0); record how.
    try:
        get_sonar_text_encoder_hub().load_custom_model(enc_path, dataclasses.replace(enc_cfg))
        enc_status = "UNEXPECTED: the reference encoder loader accepted the fairseq layout"
    except Exception as ex:  # noqa: BLE001
        cause = ex
        while cause.__cause__ is not None:
            cause = cause.__cause__
        enc_status = (
            "the reference loader get_sonar_text_encoder_hub().load_custom_model(...) fails on it "
            f"({type(ex).__name__} <- {type(cause).__name__}: {str(cause)[:80]!r}): in sonar 0.5.0 "
            "_convert_sonar_text_encoder_checkpoint passes {'model': state_dict} to "
            "convert_fairseq_state_dict (so no key is renamed) and then reads "
            "state_dict['embed_tokens'].weight (a key that a state dict does not have); "
            "the fairseq branch of the encoder converter is dead code"
        )
    # Cross-check instead with the reference's own pieces: the key_map literal of sonar's
    # encoder converter (read from its source), fairseq2's convert_fairseq_state_dict applied to
    # the inner state dict as intended, and the converter's row permutation.
    ckpt = torch.load(enc_path, map_location="cpu", weights_only=True)
    inner = dict(ckpt["state_dict"])
    for k in FAIRSEQ_EXTRA:
        del inner[k]
    conv = convert_fairseq_state_dict(inner, sonar_encoder_key_map())
    embed = conv["encoder_frontend.embed.weight"].clone()
    embed[[0, 1, 2, 3]] = embed[SONAR_ROWS_FROM_FAIRSEQ].clone()
    conv["encoder_frontend.embed.weight"] = embed
    enc2 = get_sonar_text_encoder_hub().create_new_model(dataclasses.replace(enc_cfg)).eval()
    enc2.load_state_dict(conv, strict=True)
    sent2, seqs2 = encoder_forward(enc2, io_enc["tokens"], io_enc["seq_lens"])
    d_sent = float(np.abs(sent2 - io_enc["sentence_embeddings"]).max())
    d_seqs = float(np.abs(seqs2 - io_enc["encoded_seqs"]).max())
    assert d_sent == 0.0 and d_seqs == 0.0, (d_sent, d_seqs)
    report["encoder"] = (
        "NOT PROVABLE THROUGH THE REFERENCE LOADER: " + enc_status + ". Cross-checked instead: "
        "fairseq2.models.utils.checkpoint.convert_fairseq_state_dict(inner, key_map of "
        "sonar's _convert_sonar_text_encoder_checkpoint) + new[[0,1,2,3]] = old[[1,3,0,2]] + "
        "strict load_state_dict gives sentence embeddings / encoded seqs with max |diff| = "
        f"{d_sent} / {d_seqs}"
    )
    del enc2
    return report


# ----------------------------------------------------------------------------------------
# Drivers


def make_small(args, tokenizer, langs, sentences) -> None:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    vocab = tokenizer.vocab_info.size
    pad = tokenizer.vocab_info.pad_idx
    assert pad == 0

    tok = tokens_json(tokenizer, sentences, langs, args.spm)
    (out / "tokens.json").write_text(json.dumps(tok, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    enc_batch = select(sentences, ENCODER_BATCH)
    dec_batch = select(sentences, DECODER_BATCH)
    enc_tokens, enc_lens = pad_batch([encode(tokenizer, s["text"], s["lang"], "source") for s in enc_batch], pad)
    dec_src_tokens, dec_src_lens = pad_batch(
        [encode(tokenizer, s["text"], s["lang"], "source") for s in dec_batch], pad)
    tgt_tokens, tgt_lens = pad_batch(
        [encode(tokenizer, s["text"], s["lang"], "target")[:-1] for s in dec_batch], pad)
    assert tgt_tokens.shape[1] <= MAX_DECODER_T, tgt_tokens.shape

    report = {"vocab_size": vocab, "models": {}}
    for arch in ("tiny", "mid"):
        enc_cfg, dec_cfg = arch_configs(arch, vocab)
        enc = build("encoder", arch, enc_cfg)
        dec = build("decoder", arch, dec_cfg)
        save_released_format(enc, out / f"{arch}_text_encoder.pt")
        save_released_format(dec, out / f"{arch}_text_decoder.pt")
        check_reference_loads(enc, get_sonar_text_encoder_hub(), out / f"{arch}_text_encoder.pt", enc_cfg)
        check_reference_loads(dec, get_sonar_text_decoder_hub(), out / f"{arch}_text_decoder.pt", dec_cfg)

        sent, seqs = encoder_forward(enc, enc_tokens, enc_lens)
        pipe = pipeline_embeddings(enc, tokenizer, enc_batch)
        pipe_diff = float(np.abs(pipe - sent).max())
        assert pipe_diff < 1e-5, pipe_diff
        io_enc = {"tokens": enc_tokens, "seq_lens": enc_lens, "sentence_embeddings": sent,
                  "encoded_seqs": seqs, "pipeline_embeddings": pipe, **texts_langs(enc_batch)}
        io_enc["pipeline_texts"], io_enc["pipeline_langs"] = io_enc["texts"], io_enc["langs"]
        np.savez_compressed(out / f"{arch}_text_encoder_io.npz", **io_enc)

        emb, _ = encoder_forward(enc, dec_src_tokens, dec_src_lens)
        logits = decoder_forward(dec, emb, tgt_tokens, tgt_lens)
        check_not_degenerate(logits, tgt_lens)
        io_dec = {"embeddings": emb, "source_tokens": dec_src_tokens, "source_lens": dec_src_lens,
                  "tgt_tokens": tgt_tokens, "tgt_lens": tgt_lens, "logits": logits,
                  **texts_langs(dec_batch)}
        np.savez_compressed(out / f"{arch}_text_decoder_io.npz", **io_dec)
        report["models"][arch] = {
            "config": dict(zip(("model_dim", "layers", "heads", "ffn_inner_dim"), ARCHS[arch])),
            "encoder_params": sum(p.numel() for p in enc.parameters()),
            "decoder_params": sum(p.numel() for p in dec.parameters()),
            "pipeline_vs_batch_max_abs_diff": pipe_diff,
            "seeds": {"encoder": SEEDS[(arch, "encoder")], "decoder": SEEDS[(arch, "decoder")]},
        }

        if arch == "tiny":
            enc_fs = out / "tiny_text_encoder_fairseq.pt"
            dec_fs = out / "tiny_text_decoder_fairseq.pt"
            torch.save(to_fairseq_layout(enc.state_dict(), FS2_TO_FAIRSEQ_ENCODER,
                                         "encoder_frontend.embed.weight", None), enc_fs)
            torch.save(to_fairseq_layout(dec.state_dict(), FS2_TO_FAIRSEQ_DECODER,
                                         "decoder_frontend.embed.weight", "final_proj.weight"), dec_fs)
            report["fairseq_layout"] = prove_fairseq_layout(
                enc, dec, enc_cfg, dec_cfg, enc_fs, dec_fs, io_enc, io_dec)
        del enc, dec
        gc.collect()

    report["versions"] = versions()
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1, ensure_ascii=False), file=sys.stderr)


def make_full(args, tokenizer, langs, sentences) -> None:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    vocab = 256206
    pad = tokenizer.vocab_info.pad_idx
    assert tokenizer.vocab_info.size <= vocab
    enc_cfg, dec_cfg = arch_configs("basic", vocab)
    t0 = time.time()

    enc_batch = select(sentences, FULL_ENCODER_BATCH)
    dec_batch = select(sentences, FULL_DECODER_BATCH)
    enc_tokens, enc_lens = pad_batch([encode(tokenizer, s["text"], s["lang"], "source") for s in enc_batch], pad)
    dec_src_tokens, dec_src_lens = pad_batch(
        [encode(tokenizer, s["text"], s["lang"], "source") for s in dec_batch], pad)
    tgt_tokens, tgt_lens = pad_batch(
        [encode(tokenizer, s["text"], s["lang"], "target")[:-1] for s in dec_batch], pad)

    enc = build("encoder", "basic", enc_cfg)
    print(f"  built encoder at {time.time() - t0:.1f}s", file=sys.stderr)
    save_released_format(enc, out / "sonar_text_encoder.pt")
    print(f"  saved encoder at {time.time() - t0:.1f}s", file=sys.stderr)
    sent, seqs = encoder_forward(enc, enc_tokens, enc_lens)
    pipe = pipeline_embeddings(enc, tokenizer, enc_batch)
    pipe_diff = float(np.abs(pipe - sent).max())
    assert pipe_diff < 1e-4, pipe_diff
    emb, _ = encoder_forward(enc, dec_src_tokens, dec_src_lens)
    del enc
    gc.collect()

    dec = build("decoder", "basic", dec_cfg)
    print(f"  built decoder at {time.time() - t0:.1f}s", file=sys.stderr)
    save_released_format(dec, out / "sonar_text_decoder.pt")
    print(f"  saved decoder at {time.time() - t0:.1f}s", file=sys.stderr)
    logits = decoder_forward(dec, emb, tgt_tokens, tgt_lens)
    del dec
    gc.collect()
    check_not_degenerate(logits, tgt_lens)

    top5_ids = np.argsort(-logits, axis=-1, kind="stable")[..., :5].astype(np.int64)
    io = {
        "enc_tokens": enc_tokens, "enc_seq_lens": enc_lens, "sentence_embeddings": sent,
        "encoded_seqs": seqs, "pipeline_embeddings": pipe,
        "enc_texts": np.array([s["text"] for s in enc_batch]),
        "enc_langs": np.array([s["lang"] for s in enc_batch]),
        "dec_embeddings": emb, "dec_source_tokens": dec_src_tokens, "dec_source_lens": dec_src_lens,
        "tgt_tokens": tgt_tokens, "tgt_lens": tgt_lens,
        "logits_head": logits[:FULL_LOGIT_SEQS, :FULL_LOGIT_POSITIONS].copy(),
        "logits_argmax": logits.argmax(-1).astype(np.int64),
        "logits_max": logits.max(-1),
        # top-1 is usually the input token itself (tied embeddings of a random model), so
        # the top-5 ids/values per position carry the more informative check
        "logits_top5_ids": top5_ids,
        "logits_top5": np.take_along_axis(logits, top5_ids, axis=-1),
        "dec_texts": np.array([s["text"] for s in dec_batch]),
        "dec_langs": np.array([s["lang"] for s in dec_batch]),
    }
    np.savez_compressed(out / "sonar_text_io.npz", **io)
    report = {"vocab_size": vocab, "pipeline_vs_batch_max_abs_diff": pipe_diff,
              "seeds": {"encoder": SEEDS[("basic", "encoder")], "decoder": SEEDS[("basic", "decoder")]},
              "seconds": round(time.time() - t0, 1), "versions": versions()}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1), file=sys.stderr)


def versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("torch", "fairseq2", "fairseq2n", "sonar-space", "sentencepiece", "numpy")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spm", type=Path, required=True, help="SentencePiece model (NLLB id layout)")
    ap.add_argument("--sentences", type=Path, default=None,
                    help="udhr_sentences.json (default: next to --spm)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--arch", choices=("fixtures", "basic"), default="fixtures",
                    help="'fixtures': tiny + mid models (committed); 'basic': full-size released arch")
    ap.add_argument("--langs-file", type=Path, default=None,
                    help="optional list of 202 codes to check against sonar's card")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    fairseq2.init_fairseq2()

    langs = card_langs()
    if args.langs_file is not None:
        other = args.langs_file.read_text(encoding="utf-8").split()
        assert other == langs, "language list differs from sonar's card"
    tokenizer = load_tokenizer(args.spm, langs)
    sentences_path = args.sentences or args.spm.parent / "udhr_sentences.json"
    sentences = json.loads(sentences_path.read_text(encoding="utf-8"))
    print(f"tokenizer: {tokenizer.vocab_info}", file=sys.stderr)

    if args.arch == "fixtures":
        make_small(args, tokenizer, langs, sentences)
    else:
        make_full(args, tokenizer, langs, sentences)
    return 0


if __name__ == "__main__":
    sys.exit(main())
