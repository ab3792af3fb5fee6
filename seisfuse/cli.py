"""The `seisfuse` command. Each subcommand imports its machinery only when it runs."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence


def _convert(args: argparse.Namespace) -> int:
    from seisfuse.convert.common import save_converted

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.model == "sfm":
            from seisfuse.convert.sfm import load_sfm

            cfg, params = load_sfm(args.input, num_heads=args.num_heads,
                                   decoder_num_heads=args.decoder_num_heads)
        else:
            from seisfuse.convert.seislm import load_seislm

            cfg, params = load_seislm(args.input)
    notes = [str(w.message) for w in caught]
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    out = save_converted(args.output_dir, args.model, cfg.to_dict(), params,
                         source=str(args.input), notes=notes)
    print(f"wrote {args.model} params and config.json to {out}")
    print(f"config: {cfg}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seisfuse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = sub.add_parser("convert", help="import released PyTorch weights (no torch needed)",
                             description="Convert a PyTorch SFM/SeisLM checkpoint into an orbax "
                                         "checkpoint plus config.json. Nothing in the file is executed.")
    convert.add_argument("model", choices=["sfm", "seislm"])
    convert.add_argument("input", help="the .pth / .ckpt file")
    convert.add_argument("output_dir", help="directory to create (must not hold a checkpoint)")
    convert.add_argument("--num-heads", type=int, default=None,
                         help="SFM encoder heads, if the width/depth match no preset")
    convert.add_argument("--decoder-num-heads", type=int, default=None,
                         help="SFM decoder heads, if the width/depth match no preset")
    convert.set_defaults(run=_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"seisfuse {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
