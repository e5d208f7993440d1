"""Benchmark cases for ``eprop_gate_l0rd`` (one e-prop GateL0RD step of the Loci-s predictor).

GPU shapes (reference/loci-segmented.md §22.1): the predictor's layers at one loci-s step
(N = B·O = 16, Hd = I = 1024) and a larger slot batch at half the width (N = 128, Hd = I = 512).
The six traces are separate keyword arguments so the suite gives reference and ours their own
copies (both update them in place); the wrappers return them after h and openings, so the
correctness gate compares the updated traces too. ``chunk_peak_memory`` measures the peak device
memory of a K = 2 truncated-BPTT chunk (two chained steps, then one backward), upstream's schedule.
On a CPU, where only the correctness gates run through the Triton interpreter, small 'cpu-gate'
shapes stand in.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..kernels import eprop_gate_l0rd, eprop_gate_l0rd_reference, use_backend
from .case import BenchCase, cast_inputs

REG = 1e-8  # the predictor's λ (§10.2)
GPU_SHAPES = [(16, 1024, 1024), (128, 512, 512)]
QUICK_SHAPES = [(16, 1024, 1024)]
# Interpreted Triton costs ~1.5 ms per program: odd sizes, one over two interpreter tiles.
CPU_GATE_SHAPES = [(3, 19, 13), (2, 24, 70)]
CPU_QUICK_SHAPES = [(3, 19, 13)]
TRACES = ("e_gx", "e_gh", "e_bg", "e_rx", "e_rh", "e_br")


def _call(op, kw: dict[str, Any]):
    traces = tuple(kw[k] for k in TRACES)
    h, openings = op(kw["x"], kw["h_last"], kw["w_gx"], kw["w_gh"], kw["b_g"], kw["w_rx"], kw["w_rh"], kw["b_r"],
                     traces, kw["reg"], kw["gate_noise"])
    return (h, openings, *traces)


def fused(**kw):
    """Our op with the Triton backend forced; returns (h, openings, *updated traces)."""
    with use_backend("triton"):  # backward follows the forward's choice: it is the Function's
        return _call(eprop_gate_l0rd, kw)


def reference(**kw):
    """The eager reference (upstream's computation), also the function ``torch.compile`` gets."""
    return _call(eprop_gate_l0rd_reference, kw)


def _make_inputs(shape: tuple[int, int, int]):
    n, hd, i = shape

    def make(dtype: torch.dtype, device: torch.device, gen: torch.Generator) -> dict[str, Any]:
        def uni(*size, b, grad=True):
            t = (torch.rand(*size, generator=gen, dtype=torch.float64) * 2 - 1) * b
            return t.to(device=device, dtype=dtype).requires_grad_(grad)

        b_ih, b_hh = (6 / (i + hd)) ** 0.5, (3 / hd) ** 0.5   # upstream's init (§9.3)
        kw = {"x": uni(n, i, b=1.0), "h_last": uni(n, hd, b=0.9),
              "w_gx": uni(hd, i, b=b_ih), "w_gh": uni(hd, hd, b=b_hh), "b_g": uni(hd, b=0.5),
              "w_rx": uni(hd, i, b=b_ih), "w_rh": uni(hd, hd, b=b_hh), "b_r": uni(hd, b=0.5)}
        for name, size in zip(TRACES, ((n, hd, i), (n, hd, hd), (n, hd), (n, hd, i), (n, hd, hd), (n, hd))):
            kw[name] = uni(*size, b=0.5, grad=False)
        kw["gate_noise"] = uni(hd, b=0.1, grad=False)
        kw["reg"] = REG
        return kw

    return make


def minimal_elements(n: int, hd: int, i: int) -> tuple[int, int]:
    """Elements moved by the forward and the backward, each input read once, each output written once.

    Forward reads x, h_last, the weights and biases, the noise and the traces, and writes h and the
    traces. Backward reads grad h, the traces, x, h_last and the weight matrices, and writes grad x,
    grad h_last and the weight and bias gradients.
    """
    traces = n * hd * (2 * i + 2 * hd + 2)
    matrices = 2 * hd * (i + hd)
    weights = matrices + 2 * hd
    fwd = n * i + n * hd + weights + hd + 2 * traces + n * hd
    bwd = n * hd + traces + n * i + n * hd + matrices + n * i + n * hd + weights
    return fwd, bwd


def _case(shape: tuple[int, int, int], notes: str = "") -> BenchCase:
    n, hd, i = shape
    fwd, bwd = minimal_elements(n, hd, i)
    return BenchCase(
        op="eprop",
        label=f"{notes + ' ' if notes else ''}N{n} Hd{hd} I{i}",
        shape={"N": n, "Hd": hd, "I": i},
        make_inputs=_make_inputs(shape),
        reference=reference,
        fused=fused,
        bytes_fwd=lambda e: e * fwd,
        bytes_bwd=lambda e: e * bwd,
        dtypes=(torch.float32, torch.bfloat16),
        notes=notes,
    )


def cases(quick: bool, device: torch.device) -> list[BenchCase]:
    """The e-prop cases for ``device``: §22.1 shapes on a GPU, small 'cpu-gate' shapes on a CPU."""
    if torch.device(device).type == "cpu":
        shapes = CPU_QUICK_SHAPES if quick else CPU_GATE_SHAPES
        return [_case(s, notes="cpu-gate") for s in shapes]
    return [_case(s) for s in (QUICK_SHAPES if quick else GPU_SHAPES)]


def run_chunk(fn: Callable[..., Any], inputs: dict[str, Any], xs: list[torch.Tensor]) -> None:
    """K chained steps (x_t from ``xs``, h threaded through) inside one graph, then one backward."""
    kw = dict(inputs)
    loss = 0.0
    for x in xs:
        kw["x"] = x
        h = fn(**kw)[0]
        kw["h_last"] = h
        loss = loss + h.float().square().sum()
    loss.backward()


def chunk_peak_memory(case: BenchCase, fn: Callable[..., Any], dtype: torch.dtype, device: torch.device,
                      steps: int = 2) -> dict[str, float]:
    """Peak CUDA memory of a ``steps``-step chunk of ``fn`` above what its inputs already hold, in MB."""
    inputs = cast_inputs(case.make_inputs(dtype, device, torch.Generator().manual_seed(0)), dtype)
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(inputs["x"].shape, generator=gen).to(device=device, dtype=dtype).requires_grad_()
          for _ in range(steps)]
    run_chunk(fn, inputs, xs)  # warm-up: compilation, autotuning, allocator pools
    for t in [*inputs.values(), *xs]:
        if isinstance(t, torch.Tensor):
            t.grad = None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run_chunk(fn, inputs, xs)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    return {"peak_mb": peak / 1e6, "inputs_mb": base / 1e6}
