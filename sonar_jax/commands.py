"""What each `sonar-jax` subcommand does: one function per command, taking the parsed arguments
(`sonar_jax.cli` builds the parser and turns errors into exit statuses)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import sys

from sonar_jax import stopping
from sonar_jax.errors import UsageError
from sonar_jax.outputs import atomic_path, atomic_text, check_new

# Where `sonar-jax data build` keeps downloaded Debian packages between builds.
DEFAULT_CACHE = pathlib.Path("~/.cache/sonar_jax/debian").expanduser()


def convert(args: argparse.Namespace) -> None:
    from sonar_jax.convert import convert_checkpoint
    from sonar_jax.model_dir import langs_from_arg

    out = convert_checkpoint(args.src, args.out_dir, args.model, tokenizer=args.tokenizer,
                             langs=langs_from_arg(args.langs), num_heads=args.num_heads,
                             dtype=args.dtype, embedding_dim=args.embedding_dim,
                             overwrite=args.overwrite)
    print(f"wrote {out}", file=sys.stderr)


@contextlib.contextmanager
def _sink(path: str, overwrite: bool):
    """Standard output for '-', else a new text file that appears only once complete (an
    existing one is kept unless --overwrite)."""
    if path == "-":
        yield sys.stdout
        return
    check_new(path, overwrite)
    with atomic_text(path) as f:
        yield f


def _generation_args(args: argparse.Namespace) -> dict:
    return dict(beam_size=args.beam_size, max_seq_len=args.max_seq_len,
                batch_size=args.batch_size, progress_bar=False)


def encode(args: argparse.Namespace) -> None:
    from sonar_jax import streaming
    from sonar_jax.pipelines import TextToEmbeddingModelPipeline

    output = args.output or ("embeddings.npy" if args.input == "-" else args.input + ".npy")
    check_new(output, args.overwrite)
    pipeline = TextToEmbeddingModelPipeline(args.model, dtype=args.dtype)
    pipeline.tokenizer.lang_id(args.lang)  # fail on a bad code before reading any input
    with streaming.text_source(args.input) as source:
        scan = _scanned(source, args.input)
        with atomic_path(output) as partial:
            streaming.encode_file(pipeline, source, scan.lines, partial, args.lang,
                                  batch_size=args.batch_size,
                                  batch_max_tokens=args.batch_max_tokens,
                                  progress=not args.quiet,
                                  normalize_embeddings=args.normalize_embeddings,
                                  output_dtype=args.output_dtype)
    print(f"wrote {scan.lines} embeddings to {output}", file=sys.stderr)


def _scanned(source: pathlib.Path, input_arg: str):
    """The input's line count after checking it (UTF-8, not empty), blank lines reported."""
    from sonar_jax import streaming

    label = "standard input" if input_arg == "-" else input_arg
    scan = streaming.scan_text(source, label)
    scan.warn_blank(label)
    return scan


def embed(args: argparse.Namespace) -> None:
    from sonar_jax.train.distributed import maybe_initialize

    maybe_initialize(args.distributed)
    import jax

    from sonar_jax.corpus.embed import embed_corpus

    with stopping.on_signals("finished shards are kept: rerun the same command to resume"):
        result = embed_corpus(args.input, args.output, model=args.model, lang=args.lang,
                              text_column=args.text_column, lang_column=args.lang_column,
                              shard_rows=args.shard_rows, shard_format=args.format,
                              output_dtype=args.output_dtype, batch_size=args.batch_size,
                              batch_max_tokens=args.batch_max_tokens, dtype=args.dtype,
                              overwrite=args.overwrite, progress=not args.quiet)
    if jax.process_index() == 0:
        print(f"embedded {result.embedded} of {result.manifest['rows']} rows into "
              f"{args.output} in {result.seconds:.1f} s ({result.rate:.0f} sentences/s over "
              f"{jax.process_count()} process(es))", file=sys.stderr)


def mine(args: argparse.Namespace) -> None:
    from sonar_jax.train.distributed import maybe_initialize

    maybe_initialize(args.distributed)
    from sonar_jax.evaluate.mining import mine_corpora

    check_new(args.output, args.overwrite)
    pairs = mine_corpora(args.src, args.tgt, args.output, src_lang=args.src_lang,
                         tgt_lang=args.tgt_lang, unify=not args.no_unify, margin=args.margin,
                         k=args.k, retrieval=args.retrieval, threshold=args.threshold)
    print(f"wrote {len(pairs)} pairs to {args.output}", file=sys.stderr)


def _audio_inputs(inputs: list[str]) -> list[str]:
    """Audio paths from `--input`: audio files as given, and list files (.txt / .lst) read as one
    path a line, relative to the list's folder (blank lines and # comments skipped)."""
    paths = []
    for item in inputs:
        if item.endswith((".txt", ".lst")):
            folder = os.path.dirname(item)
            with open(item, encoding="utf-8") as lines:
                paths += [os.path.join(folder, line.strip()) for line in lines
                          if line.strip() and not line.lstrip().startswith("#")]
        else:
            paths.append(item)
    if not paths:
        raise UsageError("no audio inputs: --input names no audio file")
    return paths


def speech_encode(args: argparse.Namespace) -> None:
    import numpy as np

    from sonar_jax.speech_pipelines import SpeechToEmbeddingModelPipeline

    if args.output is None and len(args.input) != 1:
        raise UsageError("pass --output when --input names several files")
    output = args.output or args.input[0] + ".npy"
    check_new(output, args.overwrite)
    paths = _audio_inputs(args.input)
    pipeline = SpeechToEmbeddingModelPipeline(args.model, dtype=args.dtype)
    embeddings = pipeline.predict(paths, batch_size=args.batch_size,
                                  batch_max_frames=args.batch_max_frames,
                                  progress_bar=not args.quiet,
                                  normalize_embeddings=args.normalize_embeddings,
                                  output_dtype=args.output_dtype)
    with atomic_path(output) as partial, open(partial, "wb") as out:
        np.save(out, embeddings)
    print(f"wrote {len(embeddings)} embeddings to {output}", file=sys.stderr)


def _load_embeddings(path: str, flag: str, text_hint: str, width: int | None = None):
    """The [N, D] floating-point array of a .npy file given to `flag`, memory-mapped, with
    errors that name the flag and file: not there, not a .npy, integers, or `check_rows`'."""
    import numpy as np

    from sonar_jax.cosine import check_rows

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path} does not exist")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise ValueError(f"{flag} {path} is not a .npy array of embeddings; {text_hint}"
                         ) from None
    if array.ndim and not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{flag} {path} holds {array.dtype} values; embeddings are floating "
                         "point (the .npy that `sonar-jax encode` writes)")
    check_rows(array, name=f"{flag} {path}", width=width)
    return array


def _write_scores(scores, output: str, overwrite: bool) -> None:
    with _sink(output, overwrite) as sink:
        sink.writelines(f"{float(score):.7g}\n" for score in scores)


def blaser(args: argparse.Namespace) -> None:
    from sonar_jax.scoring_pipelines import BlaserPipeline

    text_only = {"--src-lang": args.src_lang, "--mt-lang": args.mt_lang,
                 "--ref-lang": args.ref_lang}
    if args.encoder is None and any(v is not None for v in text_only.values()):
        given = "/".join(k for k, v in text_only.items() if v is not None)
        raise UsageError(f"{given}: languages are for text files, which need --encoder DIR; "
                         "without it --src/--mt/--ref are .npy embeddings")
    if args.encoder is not None and (args.src_lang is None or args.mt_lang is None):
        raise UsageError("scoring text needs --src-lang and --mt-lang (e.g. eng_Latn, fra_Latn)")
    if args.output != "-":
        check_new(args.output, args.overwrite)
    pipeline = BlaserPipeline(args.model, encoder=args.encoder, dtype=args.dtype)
    if args.encoder is None:
        arrays = {name: None if path is None else _load_embeddings(
                      path, f"--{name}", "to score text files, pass --encoder DIR")
                  for name, path in (("src", args.src), ("mt", args.mt), ("ref", args.ref))}
        scores = pipeline.score(**arrays, batch_size=args.batch_size,
                                progress_bar=not args.quiet)
    else:
        scores = pipeline.predict(args.src, args.mt, args.src_lang, args.mt_lang, ref=args.ref,
                                  ref_lang=args.ref_lang, batch_size=args.batch_size,
                                  progress_bar=not args.quiet)
    _write_scores(scores, args.output, args.overwrite)


def mutox(args: argparse.Namespace) -> None:
    from sonar_jax import scoring_pipelines

    companions = {"--text": {"--lang": args.lang, "--encoder": args.encoder},
                  "--speech-manifest": {"--speech-encoder": args.speech_encoder}}
    source = next(flag for flag, value in (("--embeddings", args.embeddings),
                                           ("--text", args.text),
                                           ("--speech-manifest", args.speech_manifest))
                  if value is not None)
    for input_flag, flags in companions.items():
        for flag, value in flags.items():
            if input_flag == source and value is None:
                raise UsageError(f"{source} needs {flag}")
            if input_flag != source and value is not None:
                raise UsageError(f"{flag} goes with {input_flag}, not {source}")
    if args.output != "-":
        check_new(args.output, args.overwrite)
    progress = dict(batch_size=args.batch_size, progress_bar=not args.quiet)
    if source == "--speech-manifest":
        from sonar_jax.data.manifests import read_manifests

        clips = read_manifests(args.speech_manifest.split(","))
        pipeline = scoring_pipelines.MutoxSpeechClassifierPipeline(
            args.model, args.speech_encoder, dtype=args.dtype)
        scores = pipeline.predict([clip.audio for clip in clips], args.output_prob, **progress)
    else:
        pipeline = scoring_pipelines.MutoxClassifierPipeline(args.model, encoder=args.encoder,
                                                             dtype=args.dtype)
        if source == "--text":
            scores = pipeline.predict(args.text, args.lang, args.output_prob, **progress)
        else:
            embeddings = _load_embeddings(args.embeddings, "--embeddings",
                                          "to score a text file, pass --text FILE")
            scores = pipeline.classify(embeddings, args.output_prob, **progress)
    _write_scores(scores, args.output, args.overwrite)


def decode(args: argparse.Namespace) -> None:
    from sonar_jax import streaming
    from sonar_jax.pipelines import EmbeddingToTextModelPipeline

    pipeline = EmbeddingToTextModelPipeline(args.model, dtype=args.dtype)
    pipeline.tokenizer.lang_id(args.lang)
    embeddings = _load_embeddings(args.input, "--input", "pass the .npy `sonar-jax encode` "
                                  "wrote", width=pipeline.model.cfg.model_dim)
    with _sink(args.output, args.overwrite) as sink:
        streaming.decode_file(pipeline, embeddings, sink, args.lang, progress=not args.quiet,
                              **_generation_args(args))


def translate(args: argparse.Namespace) -> None:
    from sonar_jax import streaming
    from sonar_jax.pipelines import TextToTextModelPipeline

    pipeline = TextToTextModelPipeline(args.encoder, args.decoder, dtype=args.dtype)
    for lang in (args.src, args.tgt):
        pipeline.text_to_embedding.tokenizer.lang_id(lang)
    with streaming.text_source(args.input) as source:
        scan = _scanned(source, args.input)
        with _sink(args.output, args.overwrite) as sink:
            streaming.translate_file(pipeline, source, scan.lines, sink, args.src, args.tgt,
                                     progress=not args.quiet, **_generation_args(args))


def evaluate(args: argparse.Namespace) -> None:
    from sonar_jax.evaluate import run_evaluation

    if args.json:
        check_new(args.json, args.overwrite)
    run_evaluation(data=args.data, split=args.split, langs=args.langs, pivot=args.pivot,
                   encoder=args.encoder, decoder=args.decoder,
                   speech_embeddings=args.speech_embeddings, text_embeddings=args.text_embeddings,
                   transcripts=args.transcripts, speech_encoder=args.speech_encoder,
                   speech_manifest=args.speech_manifest, target_lang=args.target_lang,
                   references=args.references, margin=args.margin, k=args.k,
                   compare="text" if args.text_comparison else "index",
                   batch_size=args.batch_size, beam_size=args.beam_size,
                   max_seq_len=args.max_seq_len, dtype=args.dtype, json_path=args.json,
                   progress=not args.quiet)


def _key_values(items: list[str] | None, kind: type, what: str) -> dict | None:
    """['dev=0.2', 'train=0.6'] or ['dev=0.2,train=0.6'] -> {'dev': 0.2, 'train': 0.6}."""
    if not items:
        return None
    out = {}
    for pair in ",".join(items).split(","):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{what}: expected SPLIT=VALUE, got {pair!r}")
        out[key.strip()] = kind(value)
    return out


def data_build(args: argparse.Namespace) -> None:
    from sonar_jax.data.corpora.build import build_corpus

    options = {key: value for key, value in
               (("speech", args.speech), ("source", args.source), ("workers", args.workers))
               if value is not None}
    if "speech" in options:
        options["speech"] = [code for code in options["speech"].split(",") if code]
    summary = build_corpus(args.name, args.out_dir, args.cache_dir,
                           args.langs.split(",") if args.langs else None,
                           fractions=_key_values(args.fractions, float, "--fractions"),
                           limits=_key_values(args.limit, int, "--limit"),
                           overwrite=args.overwrite, **options)
    print(json.dumps(summary, indent=1, ensure_ascii=False))


def data_sample(args: argparse.Namespace) -> None:
    from sonar_jax.data.corpora.build import build_sample

    print(json.dumps(build_sample(args.out_dir, args.cache_dir), indent=1, ensure_ascii=False))


def data_teacher_cache(args: argparse.Namespace) -> None:
    from sonar_jax.data.teacher_cache import cache_teacher_embeddings
    from sonar_jax.pipelines import TextToEmbeddingModelPipeline

    pipeline = TextToEmbeddingModelPipeline(args.teacher)
    info = cache_teacher_embeddings(
        args.manifest.split(","), lambda texts, lang: pipeline.predict(
            texts, source_lang=lang, batch_size=args.batch_size), args.out, lang=args.lang or "")
    print(json.dumps(info, indent=1))


def train(args: argparse.Namespace) -> None:
    from absl import app

    from sonar_jax.train.entry import run_from_flags

    try:
        run_from_flags(["sonar-jax train"] + args.flags)
    except app.UsageError as error:
        raise UsageError(str(error)) from None
