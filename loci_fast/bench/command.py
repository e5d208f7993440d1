"""``loci-fast bench``: run the benchmark suite (gates everywhere, timings on a GPU)."""
from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark the fused ops against PyTorch and torch.compile",
                       description=__doc__)
    p.add_argument("--ops", nargs="+", default=None, metavar="OP",
                   help="ops to run (default: all of loci_fast.kernels.OPS)")
    p.add_argument("--quick", action="store_true", help="one shape per op, fewer repetitions")
    p.add_argument("--out", default="bench/results", help="folder for the results files (default: %(default)s)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the references")
    p.add_argument("--data", nargs="+", default=None, metavar="SHARDS",
                   help="also measure decode throughput of each data view over these loci-video shards")
    p.add_argument("--data-workers", type=int, default=1, help="DataLoader workers for --data (default: 1)")
    p.add_argument("--eval", action="store_true",
                   help="time the evaluation metrics against upstream-style loops at MOVi shapes (instead of the op suite)")
    p.add_argument("--eval-model", metavar="CONFIG", default=None,
                   help="time end-to-end Loci-s evaluation (model and metrics) of this config in frames/s "
                        "(instead of the op suite), e.g. configs/loci-s.json")
    p.add_argument("--eval-batches", default="1,max",
                   help="--eval-model batch sizes; max = the largest power of two that fits on the GPU "
                        "(default: %(default)s)")
    t = p.add_argument_group("training step (instead of the op suite)")
    t.add_argument("--train-step", metavar="CONFIG", default=None,
                   help="time training steps of this config's stage with each kernel backend, e.g. "
                        "configs/pretrain-encoder-decoder-stage2.json")
    t.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="bf16",
                   help="model dtype for --train-step (default: %(default)s)")
    t.add_argument("--steps", type=int, default=20, help="timed steps per backend (default: %(default)s)")
    t.add_argument("--warmup", type=int, default=5, help="untimed steps before them (default: %(default)s)")
    t.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice; 1 on a CPU shared with other jobs)")
    t.add_argument("--keep-freed-memory", action="store_true",
                   help="on a CPU: keep freed memory in the process (glibc mallopt: no mmap for large blocks), "
                        "which spares the page faults of every new large tensor; see loci_fast/bench/cpu_malloc.py")
    t.add_argument("--bo", default=None, metavar="N,N,...",
                   help="loci stage: sweep the slot batch B·O = batch x model.num_slots, e.g. 16,32,64,128 "
                        "(instead of --batch-size)")
    t.add_argument("--batch-size", type=int, default=None, help="override the config's batch size")
    t.add_argument("--input-size", type=int, default=None, help="override the config's input size (square)")
    t.add_argument("--backends", nargs="+", choices=("reference", "triton"), default=["reference", "triton"],
                   help="kernel backends to compare (default: both)")
    c = p.add_argument_group("compile gate (instead of the op suite)")
    c.add_argument("--compile", action="store_true",
                   help="compile every Triton kernel ahead of time for --arch at the launch parameters of "
                        "the GPU benchmark shapes; report registers, spills, shared memory, occupancy")
    c.add_argument("--arch", type=int, default=90, help="compute capability to compile for (default: %(default)s)")
    c.add_argument("--shapes", choices=("default", "all"), default="default",
                   help="default: the benchmark cases in fp32/bf16/fp16; all: also the ops' compile_cases() "
                        "variants")
    c.add_argument("--max-spill-bytes", type=int, default=0,
                   help="fail when a kernel spills more than this many bytes (default: %(default)s)")
    c.add_argument("--triton-path", default=None, metavar="DIR",
                   help="compile with the triton package found in DIR (e.g. .venv/triton-3.6.0)")
    c.add_argument("--real-driver", action="store_true",
                   help="on a GPU: compile for the real device and also record the driver's register counts")
    m = p.add_argument_group("memory traffic (instead of the op suite)")
    m.add_argument("--traffic", action="store_true",
                   help="count the bytes the kernels load and store (Triton interpreter, CPU benchmark cases) "
                        "against the minimal bytes of each case")
    m.add_argument("--traffic-plan", choices=("gpu", "interpreter"), default="gpu",
                   help="launch plans to count: a GPU's (default) or the interpreter's")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.compile:
        return _compile_gate(args)
    if args.traffic:
        return _traffic(args)
    import torch

    if not torch.cuda.is_available():
        # The gates run the Triton kernels in the interpreter; it must be on before triton imports.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if args.train_step:
        return _train_step(args)
    if args.eval_model:
        return _eval_model(args)
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
        bad = {op: st for op, st in results["op_status"].items() if st != "ok"}
        print("not ok: " + ", ".join(f"{op} {st}" for op, st in bad.items()) + " (see the results file)")
        return 1
    return 0


def _eval_model(args: argparse.Namespace) -> int:
    from .eval_model import parse_batches, run_eval_model_bench

    try:
        batches = parse_batches(args.eval_batches)
    except ValueError as err:
        raise SystemExit(f"loci-fast bench: {err}") from None
    res = run_eval_model_bench(args.eval_model, batches=batches, out_dir=args.out)
    print(f"wrote {res['path']}: " + ", ".join(f"batch {r['batch_size']}: {r['frames_per_s']:.2f} frames/s"
                                                for r in res["rows"]))
    return 0


def _compile_gate(args: argparse.Namespace) -> int:
    from .compile_gate import run_gate

    res = run_gate(arch=args.arch, shapes=args.shapes, max_spill_bytes=args.max_spill_bytes, out_dir=args.out,
                   triton_path=args.triton_path, real_driver=args.real_driver, ops=args.ops)
    print(f"wrote {res['path']}")
    return 0 if res["ok"] else 1


def _train_step(args: argparse.Namespace) -> int:
    from .train_step import batch_for_bo, parse_bo, run_train_step

    if args.steps < 1:
        raise SystemExit("loci-fast bench: --steps must be >= 1")
    if args.warmup < 0:
        raise SystemExit("loci-fast bench: --warmup must be >= 0")
    if args.bo and args.batch_size:
        raise SystemExit("loci-fast bench: give --bo (batch x slots) or --batch-size, not both")
    bo = None
    if args.bo:
        from loci_fast.config import load_config

        try:
            bo = parse_bo(args.bo)
            for size in bo:
                batch_for_bo(load_config(args.train_step), size)
        except ValueError as err:
            raise SystemExit(f"loci-fast bench: {err}") from None
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit("loci-fast bench: --threads must be >= 1")
        import torch

        torch.set_num_threads(args.threads)
    malloc = "default"
    if args.keep_freed_memory:
        from .cpu_malloc import keep_freed_memory

        malloc = "keep freed memory (mmap off)" if keep_freed_memory() else "default (mallopt unavailable)"
    results = run_train_step(args.train_step, backends=args.backends, out_dir=args.out, steps=args.steps,
                             warmup=args.warmup, dtype=args.dtype, batch_size=args.batch_size,
                             input_size=args.input_size, bo=bo, malloc=malloc)
    print(f"wrote {results['path']}")
    return 0 if all("error" not in r for r in results["rows"]) else 1


def _traffic(args: argparse.Namespace) -> int:
    import subprocess
    import sys

    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        # Triton already imported for a GPU: count in a child process with the interpreter on.
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        argv = ["bench", "--traffic", "--traffic-plan", args.traffic_plan, "--out", args.out]
        argv += (["--ops", *args.ops] if args.ops else []) + (["--quick"] if args.quick else [])
        return subprocess.run([sys.executable, "-m", "loci_fast.cli", *argv], env=env).returncode
    os.environ["TRITON_INTERPRET"] = "1"
    from .traffic import run_traffic

    res = run_traffic(args.ops, quick=args.quick, plan=args.traffic_plan, out_dir=args.out)
    print(f"wrote {res['path']} ({len(res['rows'])} rows)")
    if res["ops_without_rows"]:
        print("no traffic measured for: " + ", ".join(res["ops_without_rows"]))
        return 1
    return 0
