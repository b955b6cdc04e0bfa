"""The ``protopnet`` console command."""

from __future__ import annotations

import argparse
import sys


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="protopnet",
        description="ProtoPNet image classifier: interpretable by prototypical parts.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="write scikit-learn's digits as PNG files, fit on their paths, report accuracy",
    )
    demo.add_argument("--out", default="protopnet-demo",
                      help="output folder (default: ./protopnet-demo)")
    demo.add_argument("--quiet", action="store_true", help="do not print training progress")
    return parser


def main(argv=None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        run_demo(args.out, verbose=0 if args.quiet else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
