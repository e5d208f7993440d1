"""The body shared by the pytest-benchmark files in bench/: one case, one implementation, one phase."""
from __future__ import annotations

from typing import Any

import torch

from .case import BenchCase, as_tuple, cast_inputs, grad_leaves
from .runner import check_case

IMPLS = ("reference", "compiled", "ours")
PHASES = ("fwd", "both")
_compiled: dict[int, Any] = {}


def implementation(case: BenchCase, impl: str):
    """The eager reference, ``torch.compile`` of it (cached per case), or the fused op."""
    if impl == "compiled":
        return _compiled.setdefault(id(case), torch.compile(case.reference, dynamic=False))
    return {"reference": case.reference, "ours": case.fused}[impl]


def benchmark_case(benchmark, case: BenchCase, impl: str, phase: str, dtype: torch.dtype) -> None:
    """Gate ``ours`` against float64, then time ``impl`` for ``phase`` (forward, or forward+backward
    with random upstream gradients for every output, as in a training step)."""
    device = torch.device("cuda")
    if impl == "ours":
        gate = check_case(case, dtype, device)
        assert gate["ok"], gate["errors"]
    fn = implementation(case, impl)
    inputs = cast_inputs(case.make_inputs(dtype, device, torch.Generator().manual_seed(0)), dtype)
    leaves = list(grad_leaves(inputs).values())
    gouts = [torch.randn_like(o) for o in as_tuple(fn(**inputs)) if o.requires_grad]

    def run():
        if phase == "fwd":
            with torch.no_grad():
                fn(**inputs)
        else:
            for t in leaves:
                t.grad = None
            torch.autograd.backward([o for o in as_tuple(fn(**inputs)) if o.requires_grad], gouts)
        torch.cuda.synchronize()

    run()  # warm-up: compilation and autotuning stay out of the timings
    benchmark.extra_info.update(case.shape, dtype=str(dtype), impl=impl, phase=phase)
    benchmark(run)
