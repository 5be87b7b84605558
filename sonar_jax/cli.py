"""The `sonar-jax` command."""

from __future__ import annotations

import argparse
import sys

from sonar_jax.tokenizer import DEFAULT_LANGS_FILE


def _convert(args: argparse.Namespace) -> None:
    from sonar_jax.convert import convert_checkpoint
    from sonar_jax.model_dir import langs_from_arg

    out = convert_checkpoint(args.src, args.out_dir, args.model, tokenizer=args.tokenizer,
                             langs=langs_from_arg(args.langs), num_heads=args.num_heads,
                             dtype=args.dtype)
    print(f"wrote {out}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sonar-jax", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser(
        "convert", help="convert a released SONAR .pt checkpoint (no torch needed)")
    convert.add_argument("src", help="the .pt file (torch.save zip format)")
    convert.add_argument("out_dir", help="new directory to create (must not exist)")
    convert.add_argument("--model", required=True, choices=["text_encoder", "text_decoder"])
    convert.add_argument("--num-heads", type=int, default=16,
                         help="attention heads (not inferable from shapes; released models: 16)")
    convert.add_argument("--tokenizer", required=True,
                         help="SentencePiece model of the checkpoint (copied into OUT_DIR)")
    convert.add_argument("--langs", default=None,
                         help=f"comma-separated language codes or a file with one a line, in id "
                              f"order (default: the released list, {DEFAULT_LANGS_FILE.name})")
    convert.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                         help="dtype of the stored parameters (bfloat16 also makes it the "
                              "default compute dtype when loading)")
    convert.set_defaults(run=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as error:
        print(f"sonar-jax {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
