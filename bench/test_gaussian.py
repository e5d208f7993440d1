"""pytest-benchmark timings of the Gaussian position-mask ops: eager reference, torch.compile of it, ours.

Shapes: the merge with priority and raw maps at (B, O, C, h, w) = (1, 16, 256, 16, 16),
(32, 16, 256, 16, 16), (8, 16, 256, 15, 20), and ``gaussian_maps`` at (512, 256x256).
Run on a GPU with ``pytest bench/test_gaussian.py -m gpu --benchmark-enable`` (pytest.ini disables
benchmarking by default, so a plain run only checks that every variant runs and passes its gate).
"""
from __future__ import annotations

import pytest
import torch

from loci_fast.bench.gaussian import cases
from loci_fast.bench.pytest_timing import IMPLS, PHASES, benchmark_case

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CASES = cases(quick=False, device=torch.device("cuda"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.label.replace(" ", "-") for c in CASES])
def test_gaussian_speed(benchmark, index, impl, phase, dtype):
    benchmark_case(benchmark, CASES[index], impl, phase, dtype)
