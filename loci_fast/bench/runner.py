"""The benchmark suite: a correctness gate against float64, then timings, then a results file.

For every case and dtype: check the fused op against the reference run in float64 (values and
gradients); then, on a GPU only, time eager reference, ``torch.compile(reference)`` and ours for
forward, backward and both (medians of CUDA-event timings via ``triton.testing.do_bench``), and
compute achieved bandwidth from the minimal bytes moved against a measured device copy. On a CPU
only the gates run: interpreted Triton timings mean nothing, and the results file says so.
"""
from __future__ import annotations

import datetime as _dt
import importlib
import platform
import re
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from ..kernels import OPS  # the op list lives with the kernels
from .case import DTYPE_NAMES, TOLERANCE, BenchCase, as_tuple, cast_inputs, grad_leaves, rel_err
Timer = Callable[[Callable[[], Any]], float]  # returns a median time in milliseconds


def load_cases(ops: Iterable[str], quick: bool, device: torch.device) -> list[BenchCase]:
    """Collect the cases of each op module ``loci_fast.bench.<op>`` (each exposes ``cases(quick, device)``)."""
    cases = []
    for op in ops:
        if op not in OPS:
            raise ValueError(f"unknown op {op!r} for the benchmark suite; choose from {', '.join(OPS)}")
        try:
            mod = importlib.import_module(f"loci_fast.bench.{op}")
        except ModuleNotFoundError as err:
            if err.name == f"loci_fast.bench.{op}":
                continue  # no cases yet: run_suite reports the op as skipped, never as ok
            raise
        cases.extend(mod.cases(quick=quick, device=device))
    return cases


def check_case(case: BenchCase, dtype: torch.dtype, device: torch.device, seed: int = 0) -> dict[str, Any]:
    """Gate: run ``case.fused`` in ``dtype`` and ``case.reference`` in float64 on the same inputs.

    Returns ``{"ok", "max_rel_err", "tolerance", "errors": {name: err}}``.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    base = case.make_inputs(torch.float64, device, gen)
    # The oracle sees the same dtype-rounded inputs: the gate measures the op, not input rounding.
    our_in = cast_inputs(base, dtype)
    ref_in = cast_inputs(our_in, torch.float64)
    ref_out, our_out = as_tuple(case.reference(**ref_in)), as_tuple(case.fused(**our_in))
    errors = {f"out{i}": rel_err(o, r) for i, (o, r) in enumerate(zip(our_out, ref_out))}
    if len(ref_out) != len(our_out):
        errors["num_outputs"] = float("inf")
    diff_ref = [(r, o) for r, o in zip(ref_out, our_out) if r.requires_grad]
    if diff_ref:
        gen.manual_seed(seed + 1)
        gouts = [torch.randn(r.shape, generator=gen, dtype=torch.float64).to(device) for r, _ in diff_ref]
        ref_leaves, our_leaves = grad_leaves(ref_in), grad_leaves(our_in)
        ref_g = torch.autograd.grad([r for r, _ in diff_ref], list(ref_leaves.values()), gouts, allow_unused=True)
        our_g = torch.autograd.grad([o for _, o in diff_ref], list(our_leaves.values()),
                                    [g.to(dtype) for g in gouts], allow_unused=True)
        for name, rg, og in zip(ref_leaves, ref_g, our_g):
            rg = torch.zeros_like(ref_leaves[name]) if rg is None else rg
            og = torch.zeros_like(our_leaves[name]) if og is None else og
            errors[f"grad_{name}"] = rel_err(og, rg)
    tol = TOLERANCE[dtype]
    worst = max(errors.values()) if errors else 0.0
    return {"ok": worst <= tol, "max_rel_err": worst, "tolerance": tol, "errors": errors}


def cuda_timer(fn: Callable[[], Any]) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def copy_bandwidth_gbs(device: torch.device, timer: Timer, nbytes: int | None = None) -> float:
    """Bandwidth of a plain device-to-device copy (bytes read + bytes written per second), in GB/s."""
    nbytes = nbytes or ((1 << 30) if device.type == "cuda" else (1 << 24))  # 1 GiB: far beyond any cache
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def _both_fn(fn, inputs, gouts_for):
    leaves = list(grad_leaves(inputs).values())

    def run():
        for leaf in leaves:
            leaf.grad = None
        outs = [o for o in as_tuple(fn(**inputs)) if o.requires_grad]
        torch.autograd.backward(outs, gouts_for(outs))

    return run


def time_case(case: BenchCase, dtype: torch.dtype, device: torch.device, timer: Timer,
              compile_reference: bool = True) -> dict[str, Any]:
    """Median times (ms) of forward and forward+backward for reference, compiled reference and ours.

    Backward is reported as both − forward, measured the same way for all three.
    """
    gen = torch.Generator(device="cpu").manual_seed(0)
    inputs = cast_inputs(case.make_inputs(dtype, device, gen), dtype)
    grad_cache: dict[tuple, torch.Tensor] = {}

    def gouts_for(outs):
        return [grad_cache.setdefault(tuple(o.shape), torch.randn_like(o)) for o in outs]

    impls = {"reference": case.reference, "ours": case.fused}
    if compile_reference:
        impls["compiled"] = torch.compile(case.reference, dynamic=False)
    times: dict[str, dict[str, float]] = {}
    for name, fn in impls.items():
        fwd = timer(lambda fn=fn: fn(**inputs))
        both = timer(_both_fn(fn, inputs, gouts_for))
        times[name] = {"fwd": fwd, "bwd": max(both - fwd, 0.0), "both": both}
    return times


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def run_suite(ops: Iterable[str] = OPS, *, quick: bool = False, out_dir: str | Path = "bench/results",
              device: torch.device | None = None, timer: Timer | None = None,
              compile_reference: bool = True, data: Any = None, data_workers: int = 1,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the gates (and, with a timer, the timings) for ``ops``; write JSON and Markdown results.

    ``timer`` defaults to CUDA-event timing on a GPU and to ``None`` (gates only) on a CPU.
    ``data`` (shard paths/patterns) adds the decode throughput of each data view (frames/s per
    worker; CPU work, so meaningful on any machine).
    Returns the results dict; ``results["ok"]`` is False when any gate failed.
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if timer is None and device.type == "cuda":
        timer = cuda_timer
    mode = "timed" if timer is not None else "correctness-only"
    if mode == "correctness-only":
        log("No CUDA device: running the correctness gates only (interpreted Triton timings mean nothing).")
    import triton

    results: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "mode": mode,
        "quick": quick,
        "ops": list(ops),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "cases": [],
    }
    if timer is not None:
        results["copy_bandwidth_gbs"] = copy_bandwidth_gbs(device, timer)
    results["skipped"] = []
    for case in load_cases(results["ops"], quick, device):
        for dtype in case.dtypes:
            dname = next(k for k, v in DTYPE_NAMES.items() if v == dtype)
            if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
                results["skipped"].append({"op": case.op, "label": case.label, "dtype": dname,
                                           "reason": "the Triton interpreter computes bf16/fp16 wrongly: GPU only"})
                continue
            entry: dict[str, Any] = {"op": case.op, "label": case.label, "shape": case.shape, "dtype": dname}
            entry["gate"] = check_case(case, dtype, device)
            status = "ok" if entry["gate"]["ok"] else "FAILED"
            log(f"[{case.op}] {case.label} {dname}: gate {status} (max rel err {entry['gate']['max_rel_err']:.2e})")
            if timer is not None and entry["gate"]["ok"]:
                times = time_case(case, dtype, device, timer, compile_reference)
                elem = torch.empty((), dtype=dtype).element_size()
                nbytes = {"fwd": case.bytes_fwd(elem), "bwd": case.bytes_bwd(elem)}
                nbytes["both"] = nbytes["fwd"] + nbytes["bwd"]
                entry["times_ms"] = times
                entry["bytes"] = nbytes
                entry["speedup_vs_reference"] = {k: times["reference"][k] / times["ours"][k] for k in nbytes}
                if "compiled" in times:
                    entry["speedup_vs_compiled"] = {k: times["compiled"][k] / times["ours"][k] for k in nbytes}
                entry["bandwidth_gbs"] = {k: nbytes[k] / (times["ours"][k] * 1e-3) / 1e9 for k in nbytes}
                entry["bandwidth_fraction"] = {k: v / results["copy_bandwidth_gbs"]
                                               for k, v in entry["bandwidth_gbs"].items()}
                log(f"    both: ours {times['ours']['both']:.3f} ms, x{entry['speedup_vs_reference']['both']:.2f} "
                    f"vs eager" + (f", x{entry['speedup_vs_compiled']['both']:.2f} vs compile"
                                   if "compiled" in times else ""))
            results["cases"].append(entry)
    if data is not None:
        from .decode import decode_throughput

        results["decode"] = decode_throughput(data, seconds=2.0 if quick else 5.0, workers=data_workers)
        for row in results["decode"]:
            log(f"[decode] {row['view']}: {row['frames_per_s_per_worker']:.0f} frames/s per worker")
    results["op_status"] = op_status(results)
    for op, status in results["op_status"].items():
        if status == "skipped":
            results["skipped"].append({"op": op, "reason": f"no case ran (no loci_fast/bench/{op}.py, or no "
                                                            f"case for this device)"})
            log(f"[{op}] SKIPPED: no case ran")
    results["ok"] = all(status == "ok" for status in results["op_status"].values())
    write_results(results, Path(out_dir))
    return results


def op_status(results: dict[str, Any]) -> dict[str, str]:
    """Per requested op: ``ok`` (every gate passed), ``FAILED`` (one failed) or ``skipped`` (none ran)."""
    status = {}
    for op in results["ops"]:
        gates = [c["gate"]["ok"] for c in results["cases"] if c["op"] == op]
        status[op] = "skipped" if not gates else ("ok" if all(gates) else "FAILED")
    return status


def write_results(results: dict[str, Any], out_dir: Path) -> Path:
    """Write ``<date>-<device>[-quick].json`` and the matching ``.md`` table into ``out_dir``."""
    from .results_files import write_results as write_files

    stem = f"{results['date'][:10]}-{_slug(results['device'])}" + ("-quick" if results["quick"] else "")
    if tuple(results["ops"]) != OPS:  # a partial run must not overwrite the day's full results
        stem += "-" + "-".join(results["ops"])
    return write_files(out_dir, stem, results, markdown_table(results))


def markdown_table(results: dict[str, Any]) -> str:
    lines = [f"# Benchmark results: {results['device']}", "",
             f"- date: {results['date']}", f"- torch {results['torch']}, triton {results['triton']}",
             f"- mode: **{results['mode']}**" + (" (no GPU: correctness gates only, no timings)"
                                                  if results["mode"] == "correctness-only" else "")]
    if "copy_bandwidth_gbs" in results:
        lines.append(f"- measured copy bandwidth: {results['copy_bandwidth_gbs']:.0f} GB/s")
    if results.get("op_status"):
        lines.append("- ops: " + ", ".join(f"{op} **{st}**" for op, st in results["op_status"].items()))
    for sk in results.get("skipped", []):
        what = f"{sk['op']} {sk['label']} {sk['dtype']}" if "label" in sk else sk["op"]
        lines.append(f"- skipped: {what} ({sk['reason']})")
    lines.append("")
    if results["mode"] == "timed":
        lines += ["| op | shape | dtype | pass | ref ms | compile ms | ours ms | x ref | x compile | GB/s | % copy |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
    else:
        lines += ["| op | shape | dtype | gate | max rel err | tolerance |", "|---|---|---|---|---|---|"]
    for c in results["cases"]:
        gate = "ok" if c["gate"]["ok"] else "FAILED"
        if results["mode"] != "timed":
            lines.append(f"| {c['op']} | {c['label']} | {c['dtype']} | {gate} | {c['gate']['max_rel_err']:.1e} "
                         f"| {c['gate']['tolerance']:.0e} |")
            continue
        if "times_ms" not in c:  # failed gate: not timed
            lines.append(f"| {c['op']} | {c['label']} | {c['dtype']} | {gate} |" + " |" * 7)
            continue
        t = c["times_ms"]
        for p in ("fwd", "bwd", "both"):
            comp = f"{t['compiled'][p]:.3f}" if "compiled" in t else "-"
            xc = f"{c['speedup_vs_compiled'][p]:.2f}" if "speedup_vs_compiled" in c else "-"
            lines.append(f"| {c['op']} | {c['label']} | {c['dtype']} | {p} | {t['reference'][p]:.3f} | {comp} | "
                         f"{t['ours'][p]:.3f} | {c['speedup_vs_reference'][p]:.2f} | {xc} | "
                         f"{c['bandwidth_gbs'][p]:.0f} | {100 * c['bandwidth_fraction'][p]:.0f}% |")
    if results.get("decode"):
        lines += ["", "| data view | workers | frames/s | frames/s per worker |", "|---|---|---|---|"]
        lines += [f"| {r['view']} | {r['workers']} | {r['frames_per_s']:.0f} | {r['frames_per_s_per_worker']:.0f} |"
                  for r in results["decode"]]
    return "\n".join(lines) + "\n"
