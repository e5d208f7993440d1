"""Benchmark cases for the Gaussian position-mask ops (``slot_gaussian_merge``, ``gaussian_maps``).

GPU shapes (issue 3, reference/loci-segmented.md §22): the decoder merge with priority and raw maps
(B, O, C, h, w) = (1, 16, 256, 16, 16) (one loci-s step), (32, 16, 256, 16, 16) and
(8, 16, 256, 15, 20) (non-square), and the full-resolution maps ``gaussian_maps`` at (512, 256x256).
The merge writes 2·N·C·h·w values and reads as many in the backward: it is bound by memory. On a
CPU, where only the correctness gates run through the Triton interpreter, small 'cpu-gate' shapes
stand in.
"""
from __future__ import annotations

from typing import Any

import torch

from ..kernels import gaussian_maps, gaussian_maps_reference, slot_gaussian_merge, slot_gaussian_merge_reference
from ..kernels import use_backend
from .case import BenchCase

MERGE_SHAPES = [(1, 16, 256, 16, 16), (32, 16, 256, 16, 16), (8, 16, 256, 15, 20)]
MAPS_SHAPES = [(512, 256, 256)]
QUICK_MERGE_SHAPES = [(32, 16, 256, 16, 16)]
# Interpreted Triton costs ~1.5 ms per program: a few programs per launch, odd sizes.
CPU_MERGE_SHAPES = [(2, 3, 5, 15, 20)]
CPU_MAPS_SHAPES = [(3, 15, 20)]


def merge_fused(position, gestalt, priority, size, num_slots, with_raw=True):
    """Our merge with the Triton backend forced (also on CPU tensors, where ``auto`` means the reference)."""
    with use_backend("triton"):  # the backward belongs to the Function the forward chose
        return slot_gaussian_merge(position, gestalt, priority, size=size, num_slots=num_slots, with_raw=with_raw)


def merge_reference(position, gestalt, priority, size, num_slots, with_raw=True):
    """The eager reference (upstream's math), also what ``torch.compile`` gets."""
    return slot_gaussian_merge_reference(position, gestalt, priority, size=size, num_slots=num_slots,
                                         with_raw=with_raw)


def maps_fused(position, size):
    with use_backend("triton"):
        return gaussian_maps(position, size)


def maps_reference(position, size):
    return gaussian_maps_reference(position, size)


def _positions(n: int, gen: torch.Generator) -> torch.Tensor:
    """(n, 4) rows x, y, depth, std: positions over the whole grid, stds between min_std and max_std."""
    pos = torch.rand(n, 4, generator=gen, dtype=torch.float64) * 1.8 - 0.9
    pos[:, 2] = torch.randn(n, generator=gen, dtype=torch.float64)
    pos[:, 3] = torch.rand(n, generator=gen, dtype=torch.float64) * 0.35 + 0.1
    return pos


def _leaf(t: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A leaf in ``dtype`` holding bf16-representable values.

    The gate runs the reference on these values in float64 and ours on them cast to the case
    dtype; on the bf16 grid both see the same numbers, so the gate measures the kernel rather
    than input rounding, which a narrow Gaussian amplifies (its position gradient scales with
    1/σ²: rounding positions to bf16 alone moves it by ~10%).
    """
    return t.to(torch.bfloat16).to(device=device, dtype=dtype).requires_grad_()


def merge_elements(B: int, O: int, C: int, h: int, w: int) -> tuple[int, int]:
    """Elements moved by forward and backward (inputs read once, outputs written once), with raw maps.

    Forward reads position (4N), gestalt (NC), priority (N) and writes 2·N·C·h·w; backward reads
    the output gradient (2·N·C·h·w) and the three inputs again, and writes their gradients.
    """
    n = B * O
    small = n * (4 + C + 1)
    big = 2 * n * C * h * w
    return small + big, big + 2 * small


def maps_elements(n: int, h: int, w: int) -> tuple[int, int]:
    """Forward reads (n, 4) and writes n·h·w; backward reads n·h·w and (n, 4), writes (n, 4)."""
    return 4 * n + n * h * w, n * h * w + 8 * n


def merge_case(shape: tuple[int, int, int, int, int], notes: str = "") -> BenchCase:
    B, O, C, h, w = shape
    fwd, bwd = merge_elements(*shape)

    def make(dtype: torch.dtype, device: torch.device, gen: torch.Generator) -> dict[str, Any]:
        n = B * O
        return {"position": _leaf(_positions(n, gen), dtype, device),
                "gestalt": _leaf(torch.randn(n, C, generator=gen, dtype=torch.float64), dtype, device),
                # final logits: upstream's 250·π + 2.5·ε spans hard and soft occlusion
                "priority": _leaf(torch.randn(B, O, generator=gen, dtype=torch.float64) * 5, dtype, device),
                "size": (h, w), "num_slots": O, "with_raw": True}

    return BenchCase(op="gaussian", label=f"{notes + ' ' if notes else ''}merge B{B} O{O} C{C} {h}x{w} prio raw",
                     shape={"fn": "slot_gaussian_merge", "B": B, "O": O, "C": C, "h": h, "w": w,
                            "priority": True, "with_raw": True},
                     make_inputs=make, reference=merge_reference, fused=merge_fused,
                     bytes_fwd=lambda e: e * fwd, bytes_bwd=lambda e: e * bwd,
                     dtypes=(torch.float32, torch.bfloat16), notes=notes)


def maps_case(shape: tuple[int, int, int], notes: str = "") -> BenchCase:
    n, h, w = shape
    fwd, bwd = maps_elements(*shape)

    def make(dtype: torch.dtype, device: torch.device, gen: torch.Generator) -> dict[str, Any]:
        return {"position": _leaf(_positions(n, gen), dtype, device), "size": (h, w)}

    return BenchCase(op="gaussian", label=f"{notes + ' ' if notes else ''}maps N{n} {h}x{w}",
                     shape={"fn": "gaussian_maps", "N": n, "h": h, "w": w},
                     make_inputs=make, reference=maps_reference, fused=maps_fused,
                     bytes_fwd=lambda e: e * fwd, bytes_bwd=lambda e: e * bwd,
                     dtypes=(torch.float32, torch.bfloat16), notes=notes)


def cases(quick: bool, device: torch.device) -> list[BenchCase]:
    """The gaussian cases for ``device``: the issue's shapes on a GPU, 'cpu-gate' shapes on a CPU.

    ``quick`` keeps the merge at (32, 16, 256, 16, 16) only (on a CPU: the small merge only).
    """
    if torch.device(device).type == "cpu":
        merges = [merge_case(s, "cpu-gate") for s in CPU_MERGE_SHAPES]
        return merges if quick else merges + [maps_case(s, "cpu-gate") for s in CPU_MAPS_SHAPES]
    if quick:
        return [merge_case(s) for s in QUICK_MERGE_SHAPES]
    return [merge_case(s) for s in MERGE_SHAPES] + [maps_case(s) for s in MAPS_SHAPES]


def compile_cases() -> list[BenchCase]:
    """Launch variants only the compile gate needs (``bench --compile --shapes all``): the merge
    without priority and with priority but no raw maps, other slot counts, and positions without a
    std column (k = 2) or with it in column 2 (k = 3)."""
    import dataclasses

    def without(case: BenchCase, label: str, **changes) -> BenchCase:
        make = case.make_inputs

        def make_inputs(dtype, device, gen):
            inputs = make(dtype, device, gen)
            for key, value in changes.items():
                inputs[key] = value(inputs[key]) if callable(value) else value
            return inputs

        return dataclasses.replace(case, make_inputs=make_inputs, label=label)

    merge = merge_case((8, 16, 256, 16, 16), "variant")
    maps = maps_case((64, 64, 64), "variant")
    return [without(merge, "variant merge B8 O16 C256 16x16 no prio", priority=None, with_raw=False),
            without(merge, "variant merge B8 O16 C256 16x16 prio", with_raw=False),
            merge_case((4, 4, 64, 32, 32), "variant"), merge_case((2, 24, 64, 8, 8), "variant"),
            without(maps, "variant maps N64 64x64 k2", position=lambda p: p.detach()[:, :2].requires_grad_()),
            without(maps, "variant maps N64 64x64 k3", position=lambda p: p.detach()[:, [0, 1, 3]].requires_grad_())]
