"""Memory traffic of the fused ops, counted without a GPU (``loci-fast bench --traffic``).

Every benchmark case runs forward and backward in the Triton interpreter with its loads and
stores instrumented (``InterpreterBuilder.create_masked_load/store``, through which unmasked ones
go too). Per pass it reports, against the minimal bytes the suite already computes (each input
read once, each output written once):

* ``requested``: bytes of every active lane of every load and store, the traffic with no cache
  at all (the k*k shifted tiles of a convolution count k*k times);
* ``unique``: bytes at distinct addresses per kernel launch, the traffic with a perfect cache: what
  DRAM must at least see for these launches (scratch partial sums included);
* ``glue``: bytes read and written by the torch ops between the kernels inside the op (partial
  sums, casts, contiguous copies), counted with a dispatch mode.

So ``(unique + glue) / minimal`` is how far a launch plan is from the memory floor, on any machine.
``plan="gpu"`` (default) runs the launch plans a GPU would choose (``_common.gpu_plan``; autotuned
kernels take their first config that survives pruning), ``plan="interpreter"`` the interpreter's own.
Needs ``TRITON_INTERPRET=1`` before Triton is imported; the command starts a child process for it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .case import DTYPE_NAMES, as_tuple, cast_inputs, grad_leaves

TRAFFIC_DTYPES = (torch.float32, torch.bfloat16)  # bytes are counted right even where bf16 math is not

# aten ops that move no data (metadata, allocation)
_FREE_OPS = {"view", "_unsafe_view", "reshape", "as_strided", "expand", "permute", "transpose", "t", "unsqueeze",
             "squeeze", "select", "slice", "detach", "alias", "empty", "empty_like", "empty_strided", "unflatten",
             "flatten", "split", "split_with_sizes", "unbind", "lift_fresh", "set_", "_local_scalar_dense"}


class _Counter:
    def __init__(self):
        self.kernel: str | None = None
        self.in_kernel = False
        self.launch: dict[str, list[np.ndarray]] = {}
        self.requested = 0
        self.unique = 0
        self.glue = 0
        self.kernels: dict[str, dict[str, int]] = {}

    def access(self, ptrs, mask, itemsize: int) -> None:
        addr = ptrs.data if mask is None else ptrs.data[mask.data.astype(bool)]
        addr = np.asarray(addr, dtype=np.uint64).ravel()
        self.requested += addr.size * itemsize
        self.launch.setdefault(itemsize, []).append(addr)
        k = self.kernels.setdefault(self.kernel or "?", {"requested": 0, "unique": 0, "launches": 0})
        k["requested"] += addr.size * itemsize

    def end_launch(self) -> None:
        unique = sum(np.unique(np.concatenate(parts)).size * size for size, parts in self.launch.items() if parts)
        self.unique += unique
        k = self.kernels.setdefault(self.kernel or "?", {"requested": 0, "unique": 0, "launches": 0})
        k["unique"] += unique
        k["launches"] += 1
        self.launch = {}


class _GlueMode(TorchDispatchMode):
    """Bytes of the torch ops run inside the op (outside the kernels)."""

    def __init__(self, counter: _Counter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if self.counter.in_kernel or name in _FREE_OPS:
            return out
        # In-place ops (fill_, copy_, add_): the first argument is the output; factories read nothing.
        ins = [a for a in (args[1:] if name.endswith("_") else args) if isinstance(a, torch.Tensor)]
        ins += [v for v in (kwargs or {}).values() if isinstance(v, torch.Tensor)]
        outs = [t for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)]
        self.counter.glue += sum(t.numel() * t.element_size() for t in ins + outs)
        return out


@contextlib.contextmanager
def count_traffic() -> Iterator[_Counter]:
    """Count the bytes of every interpreted kernel launch (and torch glue op) in this scope."""
    from triton.runtime import interpreter
    from triton.runtime.autotuner import Autotuner

    counter = _Counter()
    builder = interpreter.InterpreterBuilder
    real_load, real_store = builder.create_masked_load, builder.create_masked_store
    real_run, real_tuned = interpreter.InterpretedFunction.run, Autotuner.run

    def load(self, ptrs, mask, other, *args, **kwargs):
        counter.access(ptrs, mask, interpreter._get_np_dtype(ptrs.get_element_ty()).itemsize)
        return real_load(self, ptrs, mask, other, *args, **kwargs)

    def store(self, ptrs, value, mask, *args, **kwargs):
        counter.access(ptrs, mask, interpreter._get_np_dtype(ptrs.get_element_ty()).itemsize)
        return real_store(self, ptrs, value, mask, *args, **kwargs)

    def run(fn, *args, grid, warmup, **kwargs):
        counter.kernel, counter.in_kernel = fn.fn.__name__, True
        try:
            return real_run(fn, *args, grid=grid, warmup=warmup, **kwargs)
        finally:
            counter.in_kernel = False
            counter.end_launch()

    def tuned(tuner, *args, **kwargs):  # the interpreter cannot autotune: the first config that fits
        grid = kwargs.pop("grid")
        kwargs.pop("warmup", None)
        tuner.nargs = dict(zip(tuner.arg_names, args))
        config = tuner.prune_configs({**tuner.nargs, **kwargs})[0]
        full = {**kwargs, **config.all_kwargs()}
        g = grid(full) if callable(grid) else grid
        return tuner.fn.run(*args, grid=g, warmup=False, **full)

    builder.create_masked_load, builder.create_masked_store = load, store
    interpreter.InterpretedFunction.run, Autotuner.run = run, tuned
    try:
        with _GlueMode(counter):
            yield counter
    finally:
        builder.create_masked_load, builder.create_masked_store = real_load, real_store
        interpreter.InterpretedFunction.run, Autotuner.run = real_run, real_tuned


def measure_case(case, dtype: torch.dtype, plan: str = "gpu") -> list[dict[str, Any]]:
    """Rows for the forward and the backward pass of ``case`` in ``dtype`` (CPU tensors, interpreted)."""
    from ..kernels._common import gpu_plan

    gen = torch.Generator().manual_seed(0)
    inputs = cast_inputs(case.make_inputs(torch.float64, torch.device("cpu"), gen), dtype)
    planning = gpu_plan() if plan == "gpu" else contextlib.nullcontext()
    elem = torch.empty((), dtype=dtype).element_size()
    rows = []
    with planning:
        with count_traffic() as fwd:
            outs = [o for o in as_tuple(case.fused(**inputs)) if o is not None]
        diff = [o for o in outs if o.requires_grad]
        gouts = [torch.randn(o.shape, generator=gen).to(o.dtype) for o in diff]
        leaves = list(grad_leaves(inputs).values())
        with count_traffic() as bwd:  # autograd.grad: no AccumulateGrad copies into .grad
            torch.autograd.grad(diff, leaves, gouts, allow_unused=True)
    for name, counter, minimal in (("fwd", fwd, case.bytes_fwd(elem)), ("bwd", bwd, case.bytes_bwd(elem))):
        rows.append({"op": case.op, "label": case.label, "dtype": next(k for k, v in DTYPE_NAMES.items() if v == dtype),
                     "pass": name, "minimal": int(minimal), "requested": counter.requested,
                     "unique": counter.unique, "glue": counter.glue,
                     "unique_over_minimal": (counter.unique + counter.glue) / minimal,
                     "requested_over_minimal": (counter.requested + counter.glue) / minimal,
                     "kernels": counter.kernels})
    return rows


def run_traffic(ops=None, *, quick: bool = False, plan: str = "gpu", out_dir: str | Path | None = "bench/results",
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Traffic rows for every case of ``ops`` (the CPU benchmark cases); writes ``<date>-traffic.{json,md}``."""
    import triton

    from ..kernels import OPS
    from .runner import load_cases

    ops = list(ops or OPS)
    res: dict[str, Any] = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                           "triton": triton.__version__, "torch": torch.__version__, "plan": plan, "rows": []}
    for case in load_cases(ops, quick, torch.device("cpu")):
        for dtype in TRAFFIC_DTYPES:
            for row in measure_case(case, dtype, plan):
                res["rows"].append(row)
                log(f"[{row['op']}] {row['label']} {row['dtype']} {row['pass']}: minimal {row['minimal']} B, "
                    f"unique {row['unique']} B + glue {row['glue']} B ({row['unique_over_minimal']:.2f}x), "
                    f"requested {row['requested']} B ({row['requested_over_minimal']:.2f}x)")
    res["ops_without_rows"] = [op for op in ops if not any(r["op"] == op for r in res["rows"])]
    if out_dir is not None:
        from .results_files import write_results

        write_results(out_dir, f"{res['date'][:10]}-traffic-{plan}-plan", res, markdown(res))
    return res


def markdown(res: dict[str, Any]) -> str:
    lines = [f"# Memory traffic against the minimal bytes ({res['plan']} launch plans)", "",
             f"- date: {res['date']}; triton {res['triton']} (interpreter), torch {res['torch']}",
             "- unique: distinct addresses per launch (perfect cache); requested: every active load/store lane "
             "(no cache); glue: torch ops inside the op", ""]
    lines += ["| op | case | dtype | pass | minimal B | unique B | glue B | (unique+glue)/min | requested B | "
              "(requested+glue)/min |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['op']} | {r['label']} | {r['dtype']} | {r['pass']} | {r['minimal']} | {r['unique']} | "
                     f"{r['glue']} | {r['unique_over_minimal']:.2f} | {r['requested']} | "
                     f"{r['requested_over_minimal']:.2f} |")
    if res["ops_without_rows"]:
        lines += ["", "No case (skipped): " + ", ".join(res["ops_without_rows"])]
    return "\n".join(lines) + "\n"
