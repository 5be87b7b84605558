"""The `sonar-jax` command.

A model (--model, --encoder, --decoder, ...) is a converted directory or a released SONAR name
(text_sonar_basic_encoder, sonar_speech_encoder_eng, blaser_2_0_qe, ...) found in the model
store: --model-store, else $SONAR_JAX_MODELS, else ~/.cache/sonar_jax/models. Exit status: 0
done, 1 a failure, 2 a usage error, 130 Ctrl-C, 143 SIGTERM; an interrupted command leaves no
output behind.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from sonar_jax import commands, stopping
from sonar_jax.corpus.shards import DEFAULT_SHARD_ROWS
from sonar_jax.errors import UsageError
from sonar_jax.model_store import DEFAULT_STORE, STORE_ENV
from sonar_jax.models import registry
from sonar_jax.tokenizer import DEFAULT_LANGS_FILE


def _positive(value: str) -> int:
    """argparse type of counts that must be at least 1 (batch sizes, beams, k)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{number} must be at least 1")
    return number


def _add_common(command: argparse.ArgumentParser, batch_size: int) -> None:
    command.add_argument("--batch-size", type=_positive, default=batch_size)
    command.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                         help="compute dtype (default: as converted)")
    command.add_argument("--overwrite", action="store_true", help="replace an existing output")
    command.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_embedding_output(command: argparse.ArgumentParser) -> None:
    command.add_argument("--normalize-embeddings", action="store_true",
                         help="write unit-length rows (for cosine / dot-product retrieval)")
    command.add_argument("--output-dtype", default="float32", choices=["float32", "float16"],
                         help="dtype of the written .npy (default: %(default)s)")


def _add_scoring(command: argparse.ArgumentParser, model_help: str, run) -> None:
    command.add_argument("--model", required=True, help=model_help)
    command.add_argument("--output", default="-", help="scores file, or - for standard output")
    _add_common(command, batch_size=64)
    command.set_defaults(run=run)


def _add_generation(command: argparse.ArgumentParser) -> None:
    command.add_argument("--beam-size", type=_positive, default=5)
    command.add_argument("--max-seq-len", type=_positive, default=None,
                         help="total tokens per output, the 2-token prompt included (cap 512)")


def _add_distributed(command: argparse.ArgumentParser) -> None:
    command.add_argument("--distributed", default="auto", choices=["auto", "on", "off"],
                         help="jax.distributed.initialize(): auto = when the environment shows "
                              "several processes (Slurm, a TPU pod, JAX_COORDINATOR_*)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sonar-jax", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_global_options(parser, top_level=True)
    subcommands = parser.add_subparsers(dest="command", required=True)

    convert = subcommands.add_parser(
        "convert", help="convert a released SONAR .pt checkpoint (no torch needed)")
    convert.add_argument("src", help="the .pt file (torch.save zip format)")
    convert.add_argument("out_dir", help="directory to create (missing parent folders are made)")
    convert.add_argument("--model", required=True, choices=list(registry.KINDS))
    convert.add_argument("--num-heads", type=_positive, default=16,
                         help="attention heads (not inferable from shapes; released models: "
                              "16; for a speech encoder, the pooler's)")
    convert.add_argument("--tokenizer", default=None,
                         help="SentencePiece model of a text checkpoint (copied into OUT_DIR; "
                              "speech encoders have none)")
    convert.add_argument("--langs", default=None,
                         help=f"comma-separated language codes or a file with one a line, in id "
                              f"order (default: the released list, {DEFAULT_LANGS_FILE.name})")
    convert.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                         help="dtype of the stored parameters (bfloat16 also makes it the "
                              "default compute dtype when loading)")
    convert.add_argument("--embedding-dim", type=_positive, default=None,
                         help="blaser: width of the SONAR embeddings it scores, when the file "
                              "fits both forms (default: 1024 where that fits)")
    convert.add_argument("--overwrite", action="store_true",
                         help="replace an existing OUT_DIR (once the new one is complete)")
    convert.set_defaults(run=commands.convert)

    encode = subcommands.add_parser("encode", help="embed sentences (one a line) into a .npy")
    encode.add_argument("--model", required=True, help="converted text encoder directory")
    encode.add_argument("--lang", required=True, help="source language code, e.g. eng_Latn")
    encode.add_argument("--input", default="-", help="text file, or - for standard input")
    encode.add_argument("--output", help="the .npy to write (default: INPUT.npy)")
    encode.add_argument("--batch-max-tokens", type=_positive, default=None)
    _add_embedding_output(encode)
    _add_common(encode, batch_size=64)
    encode.set_defaults(run=commands.encode)

    embed = subcommands.add_parser(
        "embed", help="embed a corpus into shards + a manifest, split over the processes of a "
                      "job (Slurm, TPU pod, JAX_COORDINATOR_*); rerun to resume")
    embed.add_argument("--model", required=True, help="converted text encoder directory")
    embed.add_argument("--input", required=True, nargs="+",
                       help="text files (one sentence a line), FLORES split folders "
                            "(LANG.SPLIT files), .tsv (with a header) or .parquet tables")
    embed.add_argument("--output", required=True, help="folder for the shards and manifest")
    embed.add_argument("--lang", help="language of every input (default: from a LANG.* file "
                                      "name or --lang-column)")
    embed.add_argument("--text-column", default="text", help="TSV/Parquet text column")
    embed.add_argument("--lang-column", help="TSV/Parquet column of per-row language codes")
    embed.add_argument("--format", default="npy", choices=["npy", "parquet"],
                       help="shard files: .npy, or Parquet with a fixed-size list column "
                            "(needs pyarrow: pip install 'sonar_jax[parquet]')")
    embed.add_argument("--output-dtype", default="float32", choices=["float32", "float16"])
    embed.add_argument("--shard-rows", type=_positive, default=DEFAULT_SHARD_ROWS,
                       help="rows per shard: the unit of work and of resuming")
    embed.add_argument("--batch-max-tokens", type=_positive, default=None)
    _add_distributed(embed)
    _add_common(embed, batch_size=64)
    embed.set_defaults(run=commands.embed)

    mine = subcommands.add_parser(
        "mine", help="margin-based bitext mining (LASER's mine_bitexts) of two embed outputs")
    mine.add_argument("--src", required=True, help="`sonar-jax embed` output of the sources")
    mine.add_argument("--tgt", required=True, help="`sonar-jax embed` output of the targets")
    mine.add_argument("--output", required=True, help="TSV to write: score, source, target")
    mine.add_argument("--src-lang", help="check that every source sentence is in this language")
    mine.add_argument("--tgt-lang", help="check that every target sentence is in this language")
    mine.add_argument("--margin", default="ratio", choices=["ratio", "distance", "absolute"])
    mine.add_argument("-k", "--k", type=_positive, default=4, help="neighbours in each direction")
    mine.add_argument("--retrieval", default="max",
                      choices=["forward", "backward", "max", "intersection"])
    mine.add_argument("--threshold", type=float, default=None,
                      help="keep pairs scoring above this (default: all)")
    mine.add_argument("--no-unify", action="store_true",
                      help="search duplicate sentences once per row (LASER without --unify)")
    _add_distributed(mine)
    mine.add_argument("--overwrite", action="store_true", help="replace an existing output")
    mine.set_defaults(run=commands.mine)

    speech = subcommands.add_parser("speech-encode", help="embed audio files into a .npy")
    speech.add_argument("--model", required=True, help="converted speech encoder directory")
    speech.add_argument("--input", required=True, nargs="+",
                        help="audio files, and/or .txt/.lst files listing one audio path a line "
                             "(relative to the list); embeddings keep this order")
    speech.add_argument("--output", help="the .npy to write (default: INPUT.npy for one input)")
    speech.add_argument("--batch-max-frames", type=_positive, default=None,
                        help="bound on rows × longest utterance per batch, in 10 ms frames")
    _add_embedding_output(speech)
    _add_common(speech, batch_size=16)
    speech.set_defaults(run=commands.speech_encode)

    decode = subcommands.add_parser("decode", help="turn embeddings (.npy) into text")
    decode.add_argument("--model", required=True, help="converted text decoder directory")
    decode.add_argument("--lang", required=True, help="target language code, e.g. fra_Latn")
    decode.add_argument("--input", required=True, help="the .npy of embeddings [N, D]")
    decode.add_argument("--output", default="-", help="text file, or - for standard output")
    _add_generation(decode)
    _add_common(decode, batch_size=16)
    decode.set_defaults(run=commands.decode)

    translate = subcommands.add_parser("translate", help="translate through the SONAR space")
    translate.add_argument("--encoder", required=True)
    translate.add_argument("--decoder", required=True)
    translate.add_argument("--src", required=True)
    translate.add_argument("--tgt", required=True)
    translate.add_argument("--input", default="-", help="text file, or - for standard input")
    translate.add_argument("--output", default="-", help="text file, or - for standard output")
    _add_generation(translate)
    _add_common(translate, batch_size=16)
    translate.set_defaults(run=commands.translate)

    blaser = subcommands.add_parser(
        "blaser", help="BLASER 2.0 translation quality, one score per line (about 1-5)")
    _add_scoring(blaser, "converted BLASER directory (qe or ref)", run=commands.blaser)
    blaser.add_argument("--src", required=True, help="source: text file (with --encoder) or .npy")
    blaser.add_argument("--mt", required=True, help="translations, aligned with --src")
    blaser.add_argument("--ref", help="reference translations (the reference-based model only)")
    blaser.add_argument("--encoder", help="converted text encoder: --src/--mt/--ref are text "
                                          "files, one segment a line")
    blaser.add_argument("--src-lang", help="language of --src, e.g. eng_Latn (text input)")
    blaser.add_argument("--mt-lang", help="language of --mt, e.g. fra_Latn (text input)")
    blaser.add_argument("--ref-lang", help="language of --ref (default: --mt-lang)")

    mutox = subcommands.add_parser("mutox", help="MuTox toxicity, one score per line")
    _add_scoring(mutox, "converted MuTox directory", run=commands.mutox)
    inputs = mutox.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--embeddings", help=".npy of SONAR embeddings [N, D]")
    inputs.add_argument("--text", help="text file, one sentence a line (with --lang, --encoder)")
    inputs.add_argument("--speech-manifest", help="TSV manifest(s) (audio, transcription[, lang]),"
                                                  " comma-separated (with --speech-encoder)")
    mutox.add_argument("--lang", help="language of --text, e.g. eng_Latn")
    mutox.add_argument("--encoder", help="converted text encoder (for --text)")
    mutox.add_argument("--speech-encoder", help="converted speech encoder (for --speech-manifest)")
    mutox.add_argument("--output-prob", action="store_true",
                       help="probabilities (sigmoid) instead of logits")

    evaluate = subcommands.add_parser(
        "evaluate", help="xsim/xsim++ retrieval, BLEU/chrF, speech-to-text retrieval")
    evaluate.add_argument("--data", help="FLORES layout: DATA/SPLIT/LANG.SPLIT "
                                         "(+ DATA/SPLIT_augmented/ for xsim++)")
    evaluate.add_argument("--split", default="devtest")
    evaluate.add_argument("--langs", default=None,
                          help="comma-separated codes (default: every file of the split)")
    evaluate.add_argument("--pivot", default="eng_Latn")
    evaluate.add_argument("--encoder", help="converted text encoder directory (xsim)")
    evaluate.add_argument("--decoder", help="converted text decoder directory (BLEU/chrF)")
    evaluate.add_argument("--speech-embeddings", help=".npy of utterance embeddings")
    evaluate.add_argument("--text-embeddings", help=".npy of their transcriptions' embeddings")
    evaluate.add_argument("--transcripts", help="transcriptions, one a line (text comparison)")
    evaluate.add_argument("--speech-encoder", help="converted speech encoder directory: "
                                                   "speech-to-text BLEU/chrF with --decoder")
    evaluate.add_argument("--speech-manifest", help="TSV manifest(s) (audio, transcription, lang)")
    evaluate.add_argument("--target-lang", help="decode speech into this language (default: the "
                                                "clips' own)")
    evaluate.add_argument("--references", help="reference translations, one per manifest row "
                                               "(default: the transcriptions)")
    evaluate.add_argument("--margin", default="ratio", choices=["ratio", "distance", "absolute"])
    evaluate.add_argument("--k", type=_positive, default=4)
    evaluate.add_argument("--text-comparison", action="store_true",
                          help="count a retrieved duplicate of the gold sentence as right "
                               "(LASER eval.py's default; ours: the gold index itself)")
    evaluate.add_argument("--json", help="write the results as JSON")
    _add_generation(evaluate)
    _add_common(evaluate, batch_size=32)
    evaluate.set_defaults(run=commands.evaluate)

    data = subcommands.add_parser("data", help="build real multilingual corpora from Debian "
                                            "packages (FLORES layout + audio manifests)")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    build = data_commands.add_parser("build", help="build one corpus")
    build.add_argument("name", choices=["libreoffice", "firefox", "fillets", "lo-help", "espeak"])
    build.add_argument("out_dir")
    build.add_argument("--cache-dir", default=str(commands.DEFAULT_CACHE),
                       help="downloaded .deb files are kept here (default: %(default)s)")
    build.add_argument("--langs", help="comma-separated locale codes of the source "
                                       "(espeak: NLLB codes); default: the builder's set")
    build.add_argument("--fractions", action="append",
                       help="share of rows per split, e.g. dev=0.2,devtest=0.2,train=0.6")
    build.add_argument("--limit", action="append",
                       help="at most N rows in a split (a stable subset), e.g. dev=200")
    build.add_argument("--speech", help="fillets: locales whose recordings to add, e.g. cs,nl")
    build.add_argument("--source", help="espeak: a built corpus whose sentences to synthesise")
    build.add_argument("--workers", type=_positive, help="espeak: synthesis processes")
    build.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    build.set_defaults(run=commands.data_build)
    sample = data_commands.add_parser("sample", help="rebuild the committed sample (data/sample)")
    sample.add_argument("out_dir")
    sample.add_argument("--cache-dir", default=str(commands.DEFAULT_CACHE))
    sample.set_defaults(run=commands.data_sample)
    cache = data_commands.add_parser(
        "teacher-cache", help="embed every transcription of speech manifests once with a text "
                              "encoder, for speech distillation with teacher.mode=cached")
    cache.add_argument("--teacher", required=True, help="converted text encoder directory")
    cache.add_argument("--manifest", required=True, help="TSV manifest(s), comma-separated, in "
                                                         "the order training lists them")
    cache.add_argument("--out", required=True, help=".npy to write (and OUT.json beside it)")
    cache.add_argument("--lang", help="NLLB code for manifests without a lang column")
    cache.add_argument("--batch-size", type=_positive, default=64)
    cache.set_defaults(run=commands.data_teacher_cache)

    train = subcommands.add_parser(
        "train", help="train (same flags as launch/train.py: --config=FILE[:VARIANT] "
                      "--workdir=DIR [--config.section.field=VALUE ...])")
    train.add_argument("flags", nargs=argparse.REMAINDER)
    train.set_defaults(run=commands.train)
    for command in [*subcommands.choices.values(), *data_commands.choices.values()]:
        if command is not data:
            _add_global_options(command)
    return parser


# Exceptions whose message is written for the user; any other is a bug to report.
_EXPECTED = (ValueError, OSError, LookupError, TypeError, ImportError)


def _one_line(error: BaseException) -> str:
    """The error as one line: its message, or for an unexpected error its type and the start of
    its message with a pointer to --debug."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    message = " ".join(str(message).split())
    if isinstance(error, _EXPECTED) and message:
        return message
    return (f"{type(error).__name__}: {message[:300]} (unexpected: rerun with --debug for the "
            "traceback and please report it)")


def _add_global_options(parser: argparse.ArgumentParser, top_level: bool = False) -> None:
    """--debug and --model-store, accepted before the subcommand and after it (after it, an
    unset option leaves the value parsed before it alone)."""
    unset = {} if top_level else {"default": argparse.SUPPRESS}
    parser.add_argument("--debug", action="store_true", **unset,
                        help="on an error, show the Python traceback instead of one line")
    parser.add_argument("--model-store", metavar="DIR", **unset,
                        help=f"folder of converted models named as SONAR's released assets "
                             f"(default: ${STORE_ENV}, else {DEFAULT_STORE})")


def main(argv: list[str] | None = None) -> int:
    """Runs one command: 0 on success, 2 for a usage error (a bad flag or value, an output that
    exists), 1 for a failure, 130 on Ctrl-C; SIGTERM exits with 143. Every error is one line on
    standard error (--debug: the traceback), and no interrupted output is left looking whole."""
    parser = build_parser()
    # `train` hands its flags to absl; argparse's REMAINDER does not take a leading --flag.
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if args.command != "train":
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.flags = unknown + list(args.flags)
    if args.model_store:
        os.environ[STORE_ENV] = args.model_store
    name = f"sonar-jax {args.command}"
    logging.basicConfig(format=f"{name}: %(levelname)s: %(message)s")
    try:
        with stopping.on_signals("no partial output is left"):
            args.run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        if args.debug:
            raise
        print(f"{name}: error: {_one_line(error)}", file=sys.stderr)
        return 2 if isinstance(error, (UsageError, FileExistsError)) else 1
    return 0


INTERRUPTED = (130, 143)  # Ctrl-C, SIGTERM


def console() -> None:
    """The `sonar-jax` executable. After an interruption (its outputs already cleaned up) the
    process ends at once: Python's normal teardown can crash inside XLA when a device program
    was cut off mid-flight."""
    try:
        status = main()
    except SystemExit as stop:
        status = stop.code
    if status in INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    console()
