"""pytest-benchmark timings of hyper_depthwise_conv2d: eager grouped conv, torch.compile of it, ours.

Run on a GPU with ``pytest bench/test_hyperconv.py -m gpu --benchmark-enable`` (pytest.ini disables
benchmarking by default, so a plain run only checks that every variant runs and passes its gate).
"""
from __future__ import annotations

import pytest
import torch

from loci_fast.bench.hyperconv import cases
from loci_fast.bench.pytest_timing import IMPLS, PHASES, benchmark_case

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CASES = cases(quick=False, device=torch.device("cuda"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.label.replace(" ", "-") for c in CASES])
def test_hyperconv_speed(benchmark, index, impl, phase, dtype):
    benchmark_case(benchmark, CASES[index], impl, phase, dtype)
