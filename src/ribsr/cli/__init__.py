"""The ``ribsr`` command line: one module per sub-command.

Each sub-command module exposes ``add_parser(subparsers)`` which registers its
arguments and sets ``func`` (called with the parsed namespace, returning an exit code).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ribsr.allocator import tune_cpu_allocator
from ribsr.cli import (
    bench,
    compare,
    convert,
    degrade,
    evaluate,
    export,
    export_onnx,
    info,
    serve,
    train,
    upscale,
    verify,
)
from ribsr.files import Terminated, terminate_as_exception

# Plain list: adding a command means importing its module and listing it here.
COMMANDS = [upscale, evaluate, compare, serve, degrade, train, export, export_onnx, verify, convert, info, bench]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ribsr",
        description="Super-resolution with SST / RIB transformers.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="only show warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    tune_cpu_allocator()  # reuse freed tensor memory instead of fresh zero-filled pages (ribsr.allocator)
    try:
        # SIGTERM/SIGHUP raise Terminated, so that temporary (.part) files are removed on the way out
        with terminate_as_exception(replace_handlers=True):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"ribsr {args.command}: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except (ValueError, FileNotFoundError, OSError) as exc:
        # Library errors carry the bad value in their message; show it without a traceback.
        if args.verbose:
            raise
        print(f"ribsr {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
