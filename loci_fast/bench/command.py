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
    p.add_argument("--eval", action="store_true",
                   help="time the evaluation metrics against upstream-style loops at MOVi shapes (instead of the op suite)")
    t = p.add_argument_group("training step (instead of the op suite)")
    t.add_argument("--train-step", metavar="CONFIG", default=None,
                   help="time training steps of this config's stage with each kernel backend, e.g. "
                        "configs/pretrain-encoder-decoder-stage2.json")
    t.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="bf16",
                   help="model dtype for --train-step (default: %(default)s)")
    t.add_argument("--steps", type=int, default=20, help="timed steps per backend (default: %(default)s)")
    t.add_argument("--batch-size", type=int, default=None, help="override the config's batch size")
    t.add_argument("--input-size", type=int, default=None, help="override the config's input size (square)")
    t.add_argument("--backends", nargs="+", choices=("reference", "triton"), default=["reference", "triton"],
                   help="kernel backends to compare (default: both)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available():
        # The gates run the Triton kernels in the interpreter; it must be on before triton imports.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if args.train_step:
        return _train_step(args)
    if args.eval:
        from .eval_metrics import run_eval_bench

        results = run_eval_bench(quick=args.quick, out_dir=args.out)
        print(f"wrote {results['path']}: {results['speedup']:.0f}x, agreement {'ok' if results['ok'] else 'FAILED'}")
        return 0 if results["ok"] else 1
    from .runner import OPS, run_suite

    results = run_suite(args.ops or OPS, quick=args.quick, out_dir=args.out,
                        compile_reference=not args.no_compile, data=args.data, data_workers=args.data_workers)
    print(f"wrote {results['path']} ({results['mode']}, {len(results['cases'])} cases)")
    if not results["ok"]:
        print("some correctness gates FAILED: see the results file")
        return 1
    return 0


def _train_step(args: argparse.Namespace) -> int:
    from .train_step import run_train_step

    if args.steps < 1:
        raise SystemExit("loci-fast bench: --steps must be >= 1")
    results = run_train_step(args.train_step, backends=args.backends, out_dir=args.out, steps=args.steps,
                             dtype=args.dtype, batch_size=args.batch_size, input_size=args.input_size)
    for row in results["rows"]:
        print(f"{row['stage']} {row['backend']:9s} {row['dtype']}: {row['step_ms']:.1f} ms/step, "
              f"{row['samples_per_s']:.1f} samples/s")
    print(f"wrote {results['path']}")
    return 0
