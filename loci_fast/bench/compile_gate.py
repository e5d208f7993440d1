"""The compile gate: every Triton kernel of ``loci_fast.kernels`` compiled ahead of time for a GPU
architecture, on a machine without one (``loci-fast bench --compile``).

How: the benchmark cases of every op (``loci_fast.bench.<op>.cases`` at their GPU shapes, plus
``compile_cases()`` with ``--shapes all``) run forward and backward on *meta* tensors inside
``kernels._common.gpu_plan``, so our own launchers choose block shapes, warps and autotune
configs exactly as on the GPU. Every launch is intercepted: instead of running, Triton's JIT
compiles it (``warmup``) for the target that a stand-in driver reports (``GPUTarget("cuda", 90,
32)``), down to cubin with the ``ptxas`` bundled in the Triton wheel. Autotuned kernels compile
every config that survives pruning. The ``ptxas -v`` log gives registers, spills and stack per
kernel, the compiled metadata the shared memory; occupancy is estimated from both.

Fails (exit 1) on a compile error, spills above ``--max-spill-bytes``, shared memory above the
architecture's per-block limit, or a ``*_kernel`` of an op module that no case launches.

A new op is covered by (1) listing it in ``loci_fast.kernels.OPS``, (2) naming its launched
kernels ``_<op>_..._kernel`` and planning launches with ``_common.plan_for_gpu`` / ``sm_count``
and (3) a ``loci_fast/bench/<op>.py`` with ``cases(quick, device)`` (and optionally
``compile_cases()`` for the variants the benchmarks do not time).

The work runs in a child process (``python -m loci_fast.bench.compile_gate --worker``): it needs
Triton imported *without* ``TRITON_INTERPRET`` and patches Triton's launch path, and
``--triton-path`` puts another Triton (e.g. the GPU image's 3.6.0) first on its path.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

GATE_DTYPES = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Arch:
    """Per-SM limits used for the shared-memory check and the occupancy estimate."""

    sm_count: int            # SMs of the reference part (planning the grid)
    max_shared_block: int    # bytes of shared memory one block may use
    shared_sm: int           # bytes of shared memory per SM
    max_warps_sm: int
    max_blocks_sm: int
    regs_sm: int = 65536


ARCHS = {
    80: Arch(108, 166912, 167936, 64, 32),    # A100
    86: Arch(84, 101376, 102400, 48, 16),     # RTX 30xx / A40
    89: Arch(128, 101376, 102400, 48, 24),    # L4 / RTX 40xx
    90: Arch(132, 232448, 233472, 64, 32),    # H100 / H200 SXM
    100: Arch(148, 232448, 233472, 64, 32),   # B200
}

_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def parse_ptxas_log(text: str) -> dict[str, int]:
    """Registers, stack and spill bytes from a ``ptxas -v`` log of one kernel."""
    out = {}
    if m := _REGS.search(text):
        out["registers"] = int(m.group(1))
    if m := _STACK.search(text):
        out["stack"], out["spill_stores"], out["spill_loads"] = (int(g) for g in m.groups())
    return out


def occupancy(registers: int, shared: int, num_warps: int, arch: Arch) -> dict[str, float]:
    """Blocks per SM and the share of the SM's warp slots they fill (registers: 8-register, 256-per-
    warp allocation granularity; shared memory: 1 KiB reserved per block)."""
    per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_regs = (arch.regs_sm // per_warp) // num_warps
    by_warps = arch.max_warps_sm // num_warps
    by_smem = arch.shared_sm // (shared + 1024) if shared else arch.max_blocks_sm
    blocks = max(0, min(by_regs, by_warps, by_smem, arch.max_blocks_sm))
    limiter = min((by_regs, "registers"), (by_warps, "warps"), (by_smem, "shared"),
                  (arch.max_blocks_sm, "blocks"))[1]
    return {"blocks_per_sm": blocks, "occupancy": blocks * num_warps / arch.max_warps_sm, "limited_by": limiter}


# ---------------------------------------------------------------- worker (child process)

def _install_stand_in_driver(arch: int) -> None:
    """Make Triton believe a CUDA device of compute capability ``arch`` is current."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase
    from triton.runtime.driver import driver

    class StandInDriver(DriverBase):
        @classmethod
        def is_active(cls):
            return False

        def map_python_to_cpp_type(self, ty: str) -> str:
            return ty

        def get_current_target(self):
            return GPUTarget("cuda", arch, 32)

        def get_active_torch_device(self):
            return torch.device("meta")

        def get_benchmarker(self):
            raise RuntimeError("compile gate: nothing is timed")

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_device_interface(self):
            return torch.cuda

    driver.set_active(StandInDriver())


class _Recorder:
    """Patches Triton's launch path: each launch compiles (no run) and is recorded with its log."""

    def __init__(self, real_driver: bool):
        self.real_driver = real_driver
        self.rows: dict[str, dict[str, Any]] = {}   # by compiled-kernel hash
        self.logs: list[str] = []
        self.context: dict[str, Any] = {}
        self.launched: set[str] = set()

    def __enter__(self):
        import subprocess as real_subprocess

        import triton.backends.nvidia.compiler as nvidia
        from triton.runtime.autotuner import Autotuner
        from triton.runtime.jit import JITFunction

        recorder = self

        class LoggingSubprocess:  # ptxas writes its -v log to a temp file Triton deletes: read it first
            def __getattr__(self, name):
                return getattr(real_subprocess, name)

            def run(self, cmd, *args, **kwargs):
                result = real_subprocess.run(cmd, *args, **kwargs)
                err = kwargs.get("stderr")
                if "ptxas" in os.path.basename(str(cmd[0])) and hasattr(err, "name"):
                    with open(err.name) as f:
                        recorder.logs.append(f.read())
                return result

        def jit_run(fn, *args, grid, warmup, **kwargs):
            return recorder._compile(fn, args, kwargs)

        def tuned_run(tuner, *args, **kwargs):
            kwargs.pop("grid", None)
            kwargs.pop("warmup", None)
            tuner.nargs = dict(zip(tuner.arg_names, args))
            for config in tuner.prune_configs({**tuner.nargs, **kwargs}):
                recorder._compile(tuner.fn, args, {**kwargs, **config.all_kwargs()})

        self._jit_run = JITFunction.run
        self._saved = [(nvidia, "subprocess", nvidia.subprocess), (JITFunction, "run", JITFunction.run),
                       (Autotuner, "run", Autotuner.run)]
        nvidia.subprocess = LoggingSubprocess()
        JITFunction.run = jit_run
        Autotuner.run = tuned_run
        return self

    def __exit__(self, *exc):
        for owner, name, value in self._saved:
            setattr(owner, name, value)

    def _compile(self, fn, args, kwargs):
        name = fn.fn.__name__
        self.launched.add(name)
        bound = dict(zip(fn.arg_names, args))
        bound.update(kwargs)
        constexprs = {p.name: _short(bound.get(p.name)) for p in fn.params if p.is_constexpr}
        options = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
        config = ", ".join(f"{k}={v}" for k, v in {**constexprs, **options}.items())
        n_logs = len(self.logs)
        started = time.perf_counter()
        try:
            kernel = self._jit_run(fn, *args, grid=None, warmup=True, **kwargs)
        except Exception as err:  # a compile error: one FAIL row, the gate goes on
            key = f"{name}|{config}|{self.context['dtype']}"
            row = self.rows.setdefault(key, self._row(name, config))
            row["error"] = _first_line(err)
            return None
        row = self.rows.get(kernel.hash)
        if row is None:
            row = self.rows[kernel.hash] = self._row(name, config)
            if len(self.logs) > n_logs:
                row.update(parse_ptxas_log(self.logs[-1]))
            meta = kernel.metadata
            row.update(shared=int(meta.shared), num_warps=int(meta.num_warps), num_stages=int(meta.num_stages),
                       compile_s=round(time.perf_counter() - started, 2))
            if self.real_driver:
                kernel._init_handles()
                row.update(driver_registers=int(kernel.n_regs), driver_spills=int(kernel.n_spills))
        return kernel

    def _row(self, name: str, config: str) -> dict[str, Any]:
        ctx = self.context
        return {"op": ctx["op"], "kernel": name, "dtype": ctx["dtype"], "config": config, "case": ctx["case"]}


def _short(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value).replace("triton.language.", "")


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    # Triton's compile errors end with the message after a source excerpt.
    return f"{type(err).__name__}: " + (lines[-1] if lines else "")[:300]


def kernel_names(op: str) -> set[str]:
    """The launched kernels of ``loci_fast.kernels.<op>``: its ``@triton.jit`` functions named ``*_kernel``."""
    from triton.runtime.jit import JITFunction

    mod = importlib.import_module(f"loci_fast.kernels.{op}")
    return {v.fn.__name__ for k, v in vars(mod).items() if isinstance(v, JITFunction) and k.endswith("_kernel")}


def gate_cases(op: str, shapes: str) -> list:
    """The BenchCases whose launches the gate compiles for ``op``."""
    import torch

    mod = importlib.import_module(f"loci_fast.bench.{op}")
    cases = list(mod.cases(quick=False, device=torch.device("cuda")))
    if shapes == "all" and hasattr(mod, "compile_cases"):
        cases += list(mod.compile_cases())
    return cases


def _launch_case(case, dtype) -> None:
    """Forward and backward of ``case.fused`` on meta tensors (the launches are what matter)."""
    import torch

    from loci_fast.bench.case import as_tuple, cast_inputs

    with torch.device("meta"):
        inputs = cast_inputs(case.make_inputs(dtype, torch.device("meta"), torch.Generator()), dtype)
    outs = [o for o in as_tuple(case.fused(**inputs)) if o is not None and o.requires_grad]
    if outs:
        torch.autograd.backward(outs, [torch.empty_like(o) for o in outs])


def worker(arch: int, shapes: str, real_driver: bool, ops: list[str] | None = None) -> dict[str, Any]:
    """Compile every launch of every case (child process). Returns rows, kernels found and launched."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("compile gate: TRITON_INTERPRET must be unset (kernels would be interpreted)")
    import torch
    import triton

    from loci_fast.bench.case import DTYPE_NAMES
    from loci_fast.kernels import OPS, use_backend
    from loci_fast.kernels._common import gpu_plan

    if not real_driver:
        _install_stand_in_driver(arch)
    ops = list(ops or OPS)
    found = {op: sorted(kernel_names(op)) for op in ops}
    started = time.perf_counter()
    with _Recorder(real_driver) as rec, gpu_plan(ARCHS[arch].sm_count), use_backend("triton"):
        for op in ops:
            try:
                cases = gate_cases(op, shapes)
            except ModuleNotFoundError as err:  # no loci_fast/bench/<op>.py: its kernels go unlaunched
                rec.context = {"op": op, "case": "-", "dtype": "-"}
                rec.rows[f"cases|{op}"] = {**rec._row("(no cases)", ""), "error": _first_line(err)}
                continue
            for case in cases:
                for dname in GATE_DTYPES:
                    rec.context = {"op": op, "case": case.label, "dtype": dname}
                    try:
                        _launch_case(case, DTYPE_NAMES[dname])
                    except Exception as err:  # a launcher bug: name the case, fail the gate
                        key = f"launch|{op}|{case.label}|{dname}"
                        rec.rows[key] = {**rec._row("(launcher)", ""), "error": _first_line(err)}
    return {"arch": arch, "shapes": shapes, "triton": triton.__version__, "torch": torch.__version__,
            "real_driver": real_driver, "seconds": time.perf_counter() - started,
            "kernels_found": found, "kernels_launched": sorted(rec.launched), "rows": list(rec.rows.values())}


# ---------------------------------------------------------------- verdict, files, command

def judge(raw: dict[str, Any], max_spill_bytes: int) -> dict[str, Any]:
    """Add per-row status and occupancy, the unlaunched kernels and the overall ``ok``."""
    arch = ARCHS[raw["arch"]]
    problems = []
    for row in raw["rows"]:
        reasons = []
        if "error" in row:
            reasons.append(row["error"])
        else:
            spill = row.get("spill_stores", 0) + row.get("spill_loads", 0)
            if "registers" not in row:
                reasons.append("no ptxas log (kernel came from a cache?)")
            if spill > max_spill_bytes:
                reasons.append(f"spills {row['spill_stores']} B stores + {row['spill_loads']} B loads "
                               f"> {max_spill_bytes} B")
            if row["shared"] > arch.max_shared_block:
                reasons.append(f"shared memory {row['shared']} B > {arch.max_shared_block} B")
            if "registers" in row:
                row.update(occupancy(row["registers"], row["shared"], row["num_warps"], arch))
            if "driver_registers" in row and row["driver_registers"] != row.get("registers"):
                row["driver_mismatch"] = True
        row["status"] = "FAIL" if reasons else "ok"
        if reasons:
            row["reasons"] = reasons
            problems.append(f"{row['kernel']} [{row['dtype']}; {row['config']}]: {'; '.join(reasons)}")
    launched = set(raw["kernels_launched"])
    unlaunched = [f"{op}.{k}" for op, ks in raw["kernels_found"].items() for k in ks if k not in launched]
    problems += [f"{k}: no case launches it" for k in unlaunched]
    return {**raw, "device": f"sm_{raw['arch']}-static", "max_spill_bytes": max_spill_bytes,
            "unlaunched": unlaunched, "problems": problems, "ok": not problems}


def markdown(res: dict[str, Any]) -> str:
    lines = [f"# Compile gate: {res['device']}", "",
             f"- date: {res['date']}", f"- triton {res['triton']}, torch {res['torch']}, shapes: {res['shapes']}",
             f"- {len(res['rows'])} compiled kernel configs in {res['seconds']:.0f} s; "
             f"max spill bytes allowed: {res['max_spill_bytes']}",
             f"- verdict: **{'ok' if res['ok'] else 'FAIL'}**", ""]
    driver = any("driver_registers" in r for r in res["rows"])
    head = "| op | kernel | dtype | config | status | regs | spill st/ld B | stack B | smem B | blocks/SM | occupancy |"
    lines += [head + (" driver regs |" if driver else ""), "|" + "---|" * (11 + driver)]
    for r in sorted(res["rows"], key=lambda r: (r["op"], r["kernel"], r["dtype"], r["config"])):
        if r["status"] == "FAIL" and "registers" not in r:
            lines.append(f"| {r['op']} | {r['kernel']} | {r['dtype']} | {r['config']} | FAIL: "
                         f"{'; '.join(r['reasons'])} |" + " |" * (6 + driver))
            continue
        cells = [r["op"], r["kernel"], r["dtype"], r["config"], r["status"], r.get("registers", "?"),
                 f"{r.get('spill_stores', '?')}/{r.get('spill_loads', '?')}", r.get("stack", "?"), r["shared"],
                 r.get("blocks_per_sm", "?"), f"{100 * r.get('occupancy', 0):.0f}% ({r.get('limited_by', '?')})"]
        if driver:
            cells.append(r.get("driver_registers", "-"))
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    if res["problems"]:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in res["problems"]]
    return "\n".join(lines) + "\n"


def run_gate(*, arch: int = 90, shapes: str = "default", max_spill_bytes: int = 0,
             out_dir: str | Path | None = "bench/results", triton_path: str | None = None,
             real_driver: bool = False, ops: list[str] | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the gate in a child process, judge it, write ``<date>-sm_<arch>-static-compile-triton-<v>``
    JSON and Markdown into ``out_dir`` (None: no files); returns the results (``ok`` and ``problems``)."""
    if arch not in ARCHS:
        raise ValueError(f"--arch {arch}: choose one of {', '.join(map(str, ARCHS))}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = str(Path(__file__).resolve().parents[2])
    paths = [triton_path] if triton_path else []
    env["PYTHONPATH"] = os.pathsep.join(paths + [root] + [p for p in [env.get("PYTHONPATH")] if p])
    with tempfile.TemporaryDirectory(prefix="loci-fast-compile-gate-") as tmp:
        env["TRITON_CACHE_DIR"] = os.path.join(tmp, "cache")  # a fresh cache: every kernel runs ptxas
        out_json = os.path.join(tmp, "raw.json")
        cmd = [sys.executable, "-m", "loci_fast.bench.compile_gate", "--worker", "--arch", str(arch),
               "--shapes", shapes, "--json", out_json] + (["--real-driver"] if real_driver else [])
        if ops:
            cmd += ["--ops", *ops]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(out_json):
            raise RuntimeError(f"compile gate worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        raw = json.loads(Path(out_json).read_text())
    if triton_path:
        raw["triton_path"] = triton_path
    res = judge(raw, max_spill_bytes)
    res["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    for r in sorted(res["rows"], key=lambda r: (r["op"], r["kernel"], r["dtype"])):
        if "registers" in r:
            log(f"[{r['op']}] {r['kernel']} {r['dtype']} ({r['config']}): {r['status']}, {r['registers']} regs, "
                f"spill {r['spill_stores']}/{r['spill_loads']} B, stack {r['stack']} B, smem {r['shared']} B, "
                f"{r['blocks_per_sm']} blocks/SM ({100 * r['occupancy']:.0f}%)")
        else:
            log(f"[{r['op']}] {r['kernel']} {r['dtype']} ({r['config']}): FAIL {'; '.join(r['reasons'])}")
    for p in res["problems"]:
        log(f"FAIL {p}")
    log(f"compile gate {res['device']} triton {res['triton']}: {len(res['rows'])} kernel configs, "
        f"{'ok' if res['ok'] else 'FAIL'} ({res['seconds']:.0f} s)")
    if out_dir is not None:
        from .results_files import write_results

        stem = f"{res['date'][:10]}-{res['device']}-compile-triton-{res['triton']}" + (
            "-driver" if real_driver else "")
        write_results(out_dir, stem, res, markdown(res))
    return res


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loci_fast.bench.compile_gate", description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--shapes", choices=("default", "all"), default="default")
    p.add_argument("--real-driver", action="store_true")
    p.add_argument("--ops", nargs="+", default=None)
    args = p.parse_args(argv)
    if not args.worker:
        return 0 if run_gate(arch=args.arch, shapes=args.shapes, real_driver=args.real_driver, ops=args.ops)["ok"] else 1
    raw = worker(args.arch, args.shapes, args.real_driver, args.ops)
    Path(args.json).write_text(json.dumps(raw))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
