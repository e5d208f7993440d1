"""`loci-fast bench --traffic`: interpreted loads and stores counted against the minimal bytes."""
from __future__ import annotations

import json

import pytest
import torch
import triton
import triton.language as tl

from loci_fast.bench import traffic
from loci_fast.bench.composite import cases as composite_cases
from loci_fast.bench.hyperconv import cases as hyperconv_cases


@triton.jit
def _masked_copy_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(src_ptr + offs, mask=offs < n, other=0.0)
    y = tl.load(src_ptr + offs, mask=offs < n, other=0.0)  # the same addresses again: requested, not unique
    tl.store(dst_ptr + offs, x + y, mask=offs < n)


@pytest.mark.parametrize("n", [5, 13])
def test_counts_active_lanes_and_distinct_addresses(gen, n):
    src = torch.randn(16, generator=gen, dtype=torch.float64)
    dst = torch.empty(16, dtype=torch.float64)
    with traffic.count_traffic() as c:
        _masked_copy_kernel[(1,)](src, dst, n, BLOCK=16)
    assert torch.equal(dst[:n], 2 * src[:n])
    assert c.requested == 3 * n * 8 and c.unique == 2 * n * 8 and c.glue == 0
    assert c.kernels["_masked_copy_kernel"]["launches"] == 1


def test_composite_touches_every_byte_once():
    """The one-pass claim of composite_slots as a number: unique = requested = minimal, no glue."""
    for row in traffic.measure_case(composite_cases(quick=True, device=torch.device("cpu"))[0], torch.float32):
        assert row["unique"] == row["requested"] == row["minimal"], row
        assert row["glue"] == 0 and row["unique_over_minimal"] == 1.0


def test_convolution_taps_are_requested_many_times_but_stored_once():
    case = hyperconv_cases(quick=True, device=torch.device("cpu"))[0]
    fwd, _ = traffic.measure_case(case, torch.float32)
    assert fwd["unique"] == fwd["minimal"]
    assert fwd["requested"] > 5 * fwd["unique"]  # k*k shifted loads of each tile (k = 7, masked at edges)


def test_report_lists_every_case_and_pass(tmp_path):
    res = traffic.run_traffic(["composite"], quick=True, out_dir=tmp_path, log=lambda s: None)
    labels = [c.label for c in composite_cases(quick=True, device=torch.device("cpu"))]
    assert [(r["label"], r["dtype"], r["pass"]) for r in res["rows"]] == [
        (lab, d, p) for lab in labels for d in ("fp32", "bf16") for p in ("fwd", "bwd")]
    saved = json.loads((tmp_path / res["path"].split("/")[-1]).read_text())
    assert saved["rows"] == json.loads(json.dumps(res["rows"]))
    md = (tmp_path / res["path"].split("/")[-1]).with_suffix(".md").read_text()
    assert md.count("| composite |") == len(res["rows"])
