"""``loci-fast bench``: run the benchmark suite (gates everywhere, timings on a GPU)."""
from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark the fused ops against PyTorch and torch.compile",
                       description=__doc__)
    p.add_argument("--ops", nargs="+", default=None, metavar="OP",
                   help="ops to run (default: all of gaussian, composite, hyperconv)")
    p.add_argument("--quick", action="store_true", help="one shape per op, fewer repetitions")
    p.add_argument("--out", default="bench/results", help="folder for the results files (default: %(default)s)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the references")
    p.add_argument("--data", nargs="+", default=None, metavar="SHARDS",
                   help="also measure decode throughput of each data view over these loci-video shards")
    p.add_argument("--data-workers", type=int, default=1, help="DataLoader workers for --data (default: 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available():
        # The gates run the Triton kernels in the interpreter; it must be on before triton imports.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from .runner import OPS, run_suite

    results = run_suite(args.ops or OPS, quick=args.quick, out_dir=args.out,
                        compile_reference=not args.no_compile, data=args.data, data_workers=args.data_workers)
    print(f"wrote {results['path']} ({results['mode']}, {len(results['cases'])} cases)")
    if not results["ok"]:
        print("some correctness gates FAILED: see the results file")
        return 1
    return 0
