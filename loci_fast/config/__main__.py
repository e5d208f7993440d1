"""``python -m loci_fast.config [FILE ...] [--set key.path=value ...]``.

With files: validate each and print its hash (exit 1 if any fails, with the error). Without files:
print the defaults table.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .errors import ConfigError
from .load import describe_defaults, load_config, parse_overrides


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Validate config files (or print the defaults table); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m loci_fast.config", description=__doc__.split("\n\n")[1])
    parser.add_argument("files", nargs="*", help="config JSON files to validate")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted-key override, e.g. model.batch_size=4 (repeatable)")
    parser.add_argument("--dump", action="store_true", help="print each config with defaults filled in")
    args = parser.parse_args(argv)
    if not args.files:
        print(describe_defaults())
        return 0
    failed = 0
    for path in args.files:
        try:
            cfg = load_config(path, overrides=parse_overrides(args.set))
        except (ConfigError, OSError) as err:
            print(f"FAIL {err}", file=sys.stderr)
            failed += 1
            continue
        print(f"ok   {path}  {cfg.hash()[:16]}")
        if args.dump:
            print(cfg.to_json())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
