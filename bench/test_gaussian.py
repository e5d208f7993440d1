"""pytest-benchmark timings of the Gaussian position-mask ops: eager reference, torch.compile of it, ours.

Shapes: the merge with priority and raw maps at (B, O, C, h, w) = (1, 16, 256, 16, 16),
(32, 16, 256, 16, 16), (8, 16, 256, 15, 20), and ``gaussian_maps`` at (512, 256x256).
Run on a GPU with ``pytest bench/test_gaussian.py -m gpu --benchmark-enable`` (pytest.ini disables
benchmarking by default, so a plain run only checks that every variant runs and passes its gate).
"""
from __future__ import annotations

import functools

import pytest
import torch

from loci_fast.bench.case import as_tuple, cast_inputs, grad_leaves
from loci_fast.bench.gaussian import cases
from loci_fast.bench.runner import check_case

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CASES = cases(quick=False, device=torch.device("cuda"))


@functools.lru_cache(maxsize=None)
def _compiled(case_index: int):
    return torch.compile(CASES[case_index].reference, dynamic=False)


def _impl(case_index: int, name: str):
    case = CASES[case_index]
    return {"reference": case.reference, "ours": case.fused}.get(name) or _compiled(case_index)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", ["reference", "compiled", "ours"])
@pytest.mark.parametrize("phase", ["fwd", "both"])
@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.label.replace(" ", "-") for c in CASES])
def test_gaussian_speed(benchmark, index, impl, phase, dtype):
    case, device = CASES[index], torch.device("cuda")
    if impl == "ours":
        gate = check_case(case, dtype, device)
        assert gate["ok"], gate["errors"]
    fn = _impl(index, impl)
    gen = torch.Generator().manual_seed(0)
    inputs = cast_inputs(case.make_inputs(dtype, device, gen), dtype)
    leaves = list(grad_leaves(inputs).values())
    gouts = [torch.randn_like(o) for o in as_tuple(fn(**inputs))]

    def run():
        if phase == "fwd":
            with torch.no_grad():
                fn(**inputs)
        else:
            for t in leaves:
                t.grad = None
            torch.autograd.backward(list(as_tuple(fn(**inputs))), gouts)
        torch.cuda.synchronize()

    run()  # warm-up: compilation stays out of the timings
    benchmark.extra_info.update(case.shape, dtype=str(dtype), impl=impl, phase=phase)
    benchmark(run)
