"""pytest-benchmark timings of eprop_gate_l0rd: eager reference, torch.compile of it, ours; and the
peak memory and time of a K = 2 truncated-BPTT chunk (upstream's schedule).

Run on a GPU with ``pytest bench/test_eprop.py -m gpu --benchmark-enable`` (pytest.ini disables
benchmarking by default, so a plain run only checks that every variant runs and passes its gate).
The chunk test stores ``peak_mb`` in each benchmark's extra_info.
"""
from __future__ import annotations

import pytest
import torch

from loci_fast.bench.eprop import cases, chunk_peak_memory, run_chunk
from loci_fast.bench.case import cast_inputs
from loci_fast.bench.pytest_timing import IMPLS, PHASES, benchmark_case, implementation

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CASES = cases(quick=False, device=torch.device("cuda"))
IDS = [c.label.replace(" ", "-") for c in CASES]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_eprop_speed(benchmark, index, impl, phase, dtype):
    benchmark_case(benchmark, CASES[index], impl, phase, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_eprop_chunk(benchmark, index, impl, dtype):
    """Peak memory above the inputs and time of two chained steps and their backward."""
    case, device = CASES[index], torch.device("cuda")
    fn = implementation(case, impl)
    memory = chunk_peak_memory(case, fn, dtype, device, steps=2)
    if impl == "ours":  # the last step of the chunk keeps no trace copy: well below the reference
        ref = chunk_peak_memory(case, case.reference, dtype, device, steps=2)
        assert memory["peak_mb"] < 0.8 * ref["peak_mb"], (memory, ref)
    inputs = cast_inputs(case.make_inputs(dtype, device, torch.Generator().manual_seed(0)), dtype)
    xs = [torch.randn_like(inputs["x"]).requires_grad_() for _ in range(2)]

    def run():
        run_chunk(fn, inputs, xs)
        torch.cuda.synchronize()

    run()
    benchmark.extra_info.update(case.shape, dtype=str(dtype), impl=impl, phase="chunk-k2", **memory)
    benchmark(run)
