"""Benchmark cases for ``hyper_depthwise_conv2d`` (the encoder's per-slot depthwise 7x7 convolutions).

GPU shapes are the encoder's (reference/loci-segmented.md §22.1-22.2): C = 32..256 at 64x64..8x8,
with a slot batch of 16 (one loci-s step) and 128 (pretraining-size batches). On a CPU, where only
the correctness gates run through the Triton interpreter, small 'cpu-gate' shapes stand in.
"""
from __future__ import annotations

from typing import Any

import torch

from ..kernels import hyper_depthwise_conv2d, hyper_depthwise_conv2d_reference, use_backend
from .case import BenchCase

KERNEL_SIZE = 7
GPU_SHAPES = [(n, c, s, s) for n in (16, 128) for c, s in ((32, 64), (64, 32), (128, 16), (256, 8))]
QUICK_SHAPES = [(128, 128, 16, 16)]
# Interpreted Triton costs ~1.5 ms per program: odd sizes, an image smaller than the kernel, and
# one several-tile image, each only a handful of programs.
CPU_GATE_SHAPES = [(2, 3, 9, 7), (2, 4, 4, 4), (1, 2, 80, 40)]
CPU_QUICK_SHAPES = [(2, 3, 9, 7)]


def fused(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Our op with the Triton backend forced (also on CPU tensors, where ``auto`` means the reference)."""
    with use_backend("triton"):  # backward follows the forward's choice: it is the Function's
        return hyper_depthwise_conv2d(x, weight, bias)


def _make_inputs(shape: tuple[int, int, int, int], k: int):
    n, c, h, w = shape

    def make(dtype: torch.dtype, device: torch.device, gen: torch.Generator) -> dict[str, Any]:
        def randn(*size, scale=1.0):
            t = torch.randn(*size, generator=gen, dtype=torch.float64) * scale
            return t.to(device=device, dtype=dtype).requires_grad_()

        # Kernel scale as upstream's base-weight init, std sqrt(6 / (k^2 + C)) (§6.1).
        return {"x": randn(n, c, h, w), "weight": randn(n, c, k, k, scale=(6 / (k * k + c)) ** 0.5),
                "bias": randn(n, c, scale=c ** -0.5)}

    return make


def _case(shape: tuple[int, int, int, int], k: int, notes: str = "") -> BenchCase:
    n, c, h, w = shape
    pixels, kernels = n * c * h * w, n * c * k * k

    return BenchCase(
        op="hyperconv",
        label=f"{notes + ' ' if notes else ''}N{n} C{c} {h}x{w} k{k}",
        shape={"N": n, "C": c, "H": h, "W": w, "k": k, "bias": True},
        make_inputs=_make_inputs(shape, k),
        reference=hyper_depthwise_conv2d_reference,
        fused=fused,
        # Forward reads x, weight, bias and writes out; backward reads grad_out, x, weight and
        # writes grad x, grad weight, grad bias.
        bytes_fwd=lambda e: e * (2 * pixels + kernels + n * c),
        bytes_bwd=lambda e: e * (3 * pixels + 2 * kernels + n * c),
        dtypes=(torch.float32, torch.bfloat16),
        notes=notes,
    )


def cases(quick: bool, device: torch.device) -> list[BenchCase]:
    """The hyperconv cases for ``device``: encoder shapes on a GPU, small 'cpu-gate' shapes on a CPU."""
    if torch.device(device).type == "cpu":
        shapes = CPU_QUICK_SHAPES if quick else CPU_GATE_SHAPES
        return [_case(s, KERNEL_SIZE, notes="cpu-gate") for s in shapes]
    return [_case(s, KERNEL_SIZE) for s in (QUICK_SHAPES if quick else GPU_SHAPES)]


def compile_cases() -> list[BenchCase]:
    """Launch variants only the compile gate needs (``bench --compile --shapes all``): the other kernel
    sizes, no bias, and an odd channel count and image size."""
    import dataclasses

    no_bias = _case((16, 64, 32, 32), KERNEL_SIZE, notes="no-bias")
    inputs = no_bias.make_inputs
    no_bias = dataclasses.replace(no_bias, make_inputs=lambda *a: {**inputs(*a), "bias": None})
    return [_case((16, 128, 16, 16), 3), _case((16, 128, 16, 16), 5), no_bias,
            _case((3, 37, 33, 70), KERNEL_SIZE, notes="odd")]
