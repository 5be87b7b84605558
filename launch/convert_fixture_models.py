"""Main job (offline): convert the committed reference models, then embed and score with them.

Converts the mid-size SONAR text encoder and decoder that `tests/reference/make_text_fixtures.py`
saved with the official code (random weights, released file format) into converted directories
under `runs/`, loads them, embeds the UDHR sentences the reference embedded, and reports the
largest difference from the reference's embeddings and decoder logits (directly and through the
pipelines), runs a beam search through TextToTextModelPipeline, prints the cosine similarities of
the embeddings and the time spent (written to OUT/summary.json too).

    python launch/convert_fixture_models.py [--out runs/fixture_models-TIMESTAMP]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax.numpy as jnp
import numpy as np

from sonar_jax.convert import convert_checkpoint
from sonar_jax.model_dir import load_model, load_tokenizer
from sonar_jax.pipelines import TextToEmbeddingModelPipeline, TextToTextModelPipeline

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path,
                        default=REPO / "runs" / f"fixture_models-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()

    spm = FIXTURES / "spm" / "udhr.spm.model"
    start = time.perf_counter()
    dirs = {kind: convert_checkpoint(FIXTURES / "text" / f"mid_text_{kind}.pt", args.out / kind,
                                     f"text_{kind}", tokenizer=spm, num_heads=8)
            for kind in ("encoder", "decoder")}
    print(f"converted mid encoder and decoder into {args.out} "
          f"in {time.perf_counter() - start:.1f} s")

    encoder, tokenizer = load_model(dirs["encoder"]), load_tokenizer(dirs["encoder"])
    io = np.load(FIXTURES / "text" / "mid_text_encoder_io.npz")
    token_lists = [tokenizer.encode(str(text), str(lang))
                   for text, lang in zip(io["texts"], io["langs"])]
    width = max(map(len, token_lists))
    tokens = np.array([ids + [tokenizer.pad_idx] * (width - len(ids)) for ids in token_lists])
    assert np.array_equal(tokens, io["tokens"][:, :width]), "tokenizer differs from reference"
    embeddings = np.asarray(encoder(jnp.asarray(tokens)).sentence_embeddings)
    enc_err = float(np.abs(embeddings - io["sentence_embeddings"]).max())

    decoder = load_model(dirs["decoder"])
    dec_io = np.load(FIXTURES / "text" / "mid_text_decoder_io.npz")
    logits = np.asarray(decoder(jnp.asarray(dec_io["embeddings"]), jnp.asarray(dec_io["tgt_tokens"])))
    mask = np.arange(logits.shape[1])[None] < dec_io["tgt_lens"][:, None]
    dec_err = float(np.abs(logits - dec_io["logits"])[mask].max())

    # The same sentences through the user-facing pipelines (batched, bucketed, data parallel).
    t2e = TextToEmbeddingModelPipeline(dirs["encoder"])
    by_pipeline = np.concatenate([
        t2e.predict([str(t) for t in io["texts"][io["langs"] == lang]], str(lang))
        for lang in dict.fromkeys(io["langs"])])
    order = np.concatenate([np.flatnonzero(io["langs"] == lang) for lang in dict.fromkeys(io["langs"])])
    pipeline_err = float(np.abs(by_pipeline - io["sentence_embeddings"][order]).max())
    t2t = TextToTextModelPipeline(dirs["encoder"], dirs["decoder"])
    translations = t2t.predict([str(io["texts"][0])], "eng_Latn", "fra_Latn", beam_size=5,
                               max_seq_len=16)
    print(f"beam-5 'translation' with random weights (shows the path runs, not a meaning): "
          f"{translations[0]!r}")

    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    print("\nsentences embedded (language, tokens, text):")
    for lang, ids, text in zip(io["langs"], token_lists, io["texts"]):
        print(f"  {lang}  {len(ids):4d}  {str(text)[:60]}")
    print("\ncosine similarity of the embeddings (random weights: structure, not meaning):")
    print(np.array2string(unit @ unit.T, precision=2, suppress_small=True))
    summary = {"encoder_max_abs_err_vs_reference": enc_err,
               "pipeline_max_abs_err_vs_reference": pipeline_err,
               "decoder_logits_max_abs_err_vs_reference": dec_err,
               "sentences": len(token_lists), "seconds": round(time.perf_counter() - start, 1)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n" + json.dumps(summary, indent=2))
    if max(enc_err, dec_err, pipeline_err) > 1e-4:
        raise SystemExit("parity with the reference is broken (see above)")


if __name__ == "__main__":
    main()
