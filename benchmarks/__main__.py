"""One command for every benchmark workload of a suite:

    python -m benchmarks --suite cpu --out benchmarks/results/        # small models, float32
    python -m benchmarks --suite gpu --out benchmarks/results/        # released shapes, bf16
    python -m benchmarks --suite gpu --tiny                           # the GPU suite's code
                                                                      # paths on tiny shapes

Each workload (encode, encode_corpus, decode, speech, train) writes `<suite>_<workload>.json`
(results, method, environment, command) and the suite a markdown table `<suite>.md`, also
printed. Needs torch and transformers next to sonar_jax (never installed with it):
`python -m venv --system-site-packages BENCHVENV && BENCHVENV/bin/pip install torch transformers`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import pathlib
import sys

from benchmarks import harness, suites

WORKLOADS = ("encode", "encode_corpus", "decode", "speech", "train")
METHOD = ("per side: a first call (wall time and JAX compile time recorded) and a warm-up call "
          "excluded; then `repeats` rounds with the sides alternating; each call returns once "
          "its result is ready (jax.block_until_ready / torch.cuda.synchronize, or numpy); "
          "medians with [min, max]")
TINY = dict(text=dict(model_dim=64, num_layers=2, num_heads=4, ffn_dim=128, vocab_size=None),
            speech=dict(model_dim=64, num_layers=2, num_heads=4, ffn_dim=128, pooler_layers=1,
                        pooler_heads=4, pooler_ffn_dim=128, pooler_vocab_size=16),
            encode_shapes=((8, 16),), corpus_repeat=1, corpus_batch_size=16,
            decode=((4, 8, 1), (4, 8, 5)), speech_batch=(2, 1.0), train_variant="tiny",
            train_batches=((8, 16),), repeats=2)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=sorted(suites.SUITES), required=True)
    parser.add_argument("--only", type=lambda s: s.split(","), default=list(WORKLOADS),
                        help=f"comma-separated workloads of {WORKLOADS}")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
    parser.add_argument("--repeats", type=int, help="timed rounds (default: the suite's)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny shapes with the suite's dtypes (a dry run of its code paths)")
    parser.add_argument("--wait-for-idle", type=float, default=0.0, metavar="SECONDS",
                        help="before each workload, wait up to this long for a quiet CPU")
    parser.add_argument("--train-remat", type=lambda s: s.split(","), default=None,
                        help="remat policies to measure the train step with (default: the "
                             "config's), e.g. none,dots,full")
    parser.add_argument("--torch-compile", action="store_true",
                        help="also time the training peer under torch.compile")
    parser.add_argument("--no-peer", action="store_true",
                        help="train workload only: time ours alone (no torch needed)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {WORKLOADS}")
    return args


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    suite = suites.SUITES[args.suite]
    if args.tiny:
        suite = dataclasses.replace(suite, **TINY)
    args.repeats = args.repeats or suite.repeats
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as error:
        if not (args.no_peer and args.only == ["train"]):
            raise SystemExit(f"{error}: the PyTorch peers need torch and transformers, which "
                             "sonar_jax never installs; see benchmarks/README.md") from None
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"{suite.name}{'_tiny' if args.tiny else ''}"
    lines = [("| workload | unit | sonar_jax (median [min–max]) | PyTorch peer | ours / peer "
              "(per round: median [min–max]) |"),
             "|---|---|---|---|---|"]
    for workload in args.only:
        module = importlib.import_module(f"benchmarks.{workload}")
        harness.log(f"--- {workload}")
        record = module.run(suite, args)
        record.update(suite=dataclasses.asdict(suite), repeats=args.repeats, method=METHOD,
                      command=harness.command_line(argv), environment=harness.environment())
        (args.out / f"{name}_{workload}.json").write_text(json.dumps(record, indent=2) + "\n")
        lines += module.table(record)
    table = "\n".join(lines)
    (args.out / f"{name}.md").write_text(
        f"`{harness.command_line(argv)}` on {harness.environment()['device_kind']}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
