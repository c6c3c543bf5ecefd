"""The `fastdia` command: thin subcommands over the library.

Every flag maps to a library parameter. Errors a user can fix (FastDiaError) print one line and
exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import FastDiaError
from .bench import add_bench
from .common import EXIT_USAGE
from .convert import add_convert
from .export import add_export
from .info import add_info
from .say import add_say
from .serve import add_serve
from .voice import add_voice


class _Version(argparse.Action):
    """`--version`: the package version and what runs its matmuls on this CPU (the kernel dispatch)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from .. import __version__
        from ..backends.cpu import kernels

        print(f"fastdia {__version__} (CPU kernels: {kernels.dispatch()})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastdia", description="Fast inference for Nari Labs' Dia dialogue text-to-speech models."
    )
    parser.add_argument("--version", action=_Version, help="print the version and the CPU kernel dispatch, then exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    add_info(sub)
    add_say(sub)
    add_bench(sub)
    add_convert(sub)
    add_export(sub)
    add_voice(sub)
    add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except FastDiaError as exc:
        print(f"fastdia: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fastdia: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
