"""The ``loci-fast`` command line: parse, validate, call. Work lives in the packages.

Each area contributes its subcommands through ``register(subparsers)`` in a module listed in
``COMMAND_MODULES``; those modules import nothing heavy at module level so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "loci_fast.bench.command",
    "loci_fast.data.command",
    "loci_fast.model.command",
    "loci_fast.train.command",
    "loci_fast.eval.command",
    "loci_fast.viz.command",
    "loci_fast.playground.command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loci-fast", description=__doc__.splitlines()[0])
    # The deepspeed launcher appends --local_rank=N to every script it starts.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:
                continue  # area not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
