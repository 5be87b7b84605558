"""Full-size parity and conversion memory: the released `basic` shapes, random init.

Inputs come from `tests/reference/make_text_fixtures.py --arch basic --out DIR` (run in the
reference venv): `sonar_text_encoder.pt` / `sonar_text_decoder.pt` saved like the released files
and `sonar_text_io.npz` with the reference's outputs. This script runs in the project's own
environment (no torch): it converts both files with `sonar-jax convert` in a child process,
reads that child's peak RSS, and compares our outputs with the reference's.

    python tests/reference/check_full_size.py --dir DIR [--json OUT.json]

The random-init models have 256,206 embedding rows while the fixture SentencePiece model has
3,000 pieces, so the tokenizer copied into the converted directories is the fixture model padded
with never-produced filler pieces to the released 256,000 (ids of real pieces are unchanged).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURE_SPM = REPO / "tests" / "fixtures" / "spm" / "udhr.spm.model"
RELEASED_PIECES = 256000


def padded_tokenizer(out: pathlib.Path) -> pathlib.Path:
    """The fixture SentencePiece model grown to the released piece count with filler pieces."""
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(FIXTURE_SPM.read_bytes())
    for i in range(RELEASED_PIECES - len(model.pieces)):
        piece = model.pieces.add()
        piece.piece, piece.score = f"<filler_{i}>", -1e9
    out.write_bytes(model.SerializeToString())
    return out


def convert(src: pathlib.Path, out: pathlib.Path, kind: str, spm: pathlib.Path) -> dict:
    """Runs `sonar-jax convert` in a child process; returns its wall time and peak RSS."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sonar_jax.cli", "convert", str(src), str(out),
                    "--model", kind, "--tokenizer", str(spm)], check=True, cwd=REPO)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: KiB
    size = src.stat().st_size
    return {"file_bytes": size, "peak_rss_bytes": peak, "peak_over_file": peak / size,
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=pathlib.Path, required=True)
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp

    from sonar_jax.model_dir import load_model

    work = args.dir / "converted"
    work.mkdir(exist_ok=True)
    spm = padded_tokenizer(work / "padded.spm.model")
    report = {}
    # Both conversions run before this process loads any model: a child's peak RSS counts the
    # pages it shares with its parent between fork and exec. RUSAGE_CHILDREN is a running
    # maximum, so the smaller file (the encoder) goes first.
    report["encoder_conversion"] = convert(args.dir / "sonar_text_encoder.pt", work / "encoder",
                                           "text_encoder", spm)
    report["decoder_conversion"] = convert(args.dir / "sonar_text_decoder.pt", work / "decoder",
                                           "text_decoder", spm)
    io = np.load(args.dir / "sonar_text_io.npz")
    encoder = load_model(work / "encoder")
    out = encoder(jnp.asarray(io["enc_tokens"]), jnp.asarray(io["enc_seq_lens"]))
    states_err = max(float(np.abs(np.asarray(out.encoded_seqs[i, :n]) - io["encoded_seqs"][i, :n]).max())
                     for i, n in enumerate(io["enc_seq_lens"]))
    ref = io["sentence_embeddings"]
    bf16 = np.asarray(load_model(work / "encoder", dtype="bfloat16")(
        jnp.asarray(io["enc_tokens"]), jnp.asarray(io["enc_seq_lens"])).sentence_embeddings)
    norms = np.linalg.norm(ref, axis=1)
    report["encoder"] = {
        "sentence_embeddings_max_abs_err": float(np.abs(out.sentence_embeddings - ref).max()),
        "encoded_seqs_max_abs_err": states_err,
        "bf16_compute_max_rel_err": float((np.linalg.norm(bf16 - ref, axis=1) / norms).max()),
        "bf16_compute_min_cosine": float(((bf16 * ref).sum(1)
                                          / (np.linalg.norm(bf16, axis=1) * norms)).min()),
    }
    del encoder, out

    decoder = load_model(work / "decoder")
    logits = np.asarray(decoder(jnp.asarray(io["dec_embeddings"]), jnp.asarray(io["tgt_tokens"])))
    mask = np.arange(logits.shape[1])[None] < io["tgt_lens"][:, None]
    head = io["logits_head"]
    report["decoder"] = {
        "logits_head_max_abs_err": float(np.abs(logits[:head.shape[0], :head.shape[1]]
                                                - head).max()),
        "logits_max_max_abs_err": float(np.abs(logits.max(-1) - io["logits_max"])[mask].max()),
        "top5_values_max_abs_err": float(np.abs(np.sort(logits, -1)[..., -5:][..., ::-1]
                                                - io["logits_top5"])[mask].max()),
        "argmax_agreement": float((logits.argmax(-1) == io["logits_argmax"])[mask].mean()),
    }
    report["run"] = {"date": time.strftime("%Y-%m-%d"), "platform": platform.platform(),
                     "cpus": os.cpu_count(), "jax": jax.__version__,
                     "command": "python tests/reference/check_full_size.py --dir DIR"}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
