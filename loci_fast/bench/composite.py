"""Benchmark cases for ``composite_slots`` (softmax over slots + background, RGB and depth blend).

GPU shapes (reference/loci-segmented.md §22.1): one loci-s step (B = 1, O = 16 at 256x256), a
batch of 8 such samples, and 32 samples at 128x128. Slot RGB comes in upstream's (B, 3O, H, W)
layout and the mask is returned and gets a gradient, as in upstream's training step. On a CPU,
where only the correctness gates run through the Triton interpreter, small 'cpu-gate' shapes
stand in.
"""
from __future__ import annotations

from typing import Any

import torch

from ..kernels import composite_slots, composite_slots_reference, use_backend
from .case import BenchCase

BG_LOGIT = 1.0  # upstream's constant background logit
GPU_SHAPES = [(1, 16, 256, 256), (8, 16, 256, 256), (32, 16, 128, 128)]
QUICK_SHAPES = [(8, 16, 256, 256)]
# Interpreted Triton costs ~1.5 ms per program: odd sizes, O = 3 padded to 4 and O = 16 over two
# pixel tiles, each only a handful of programs.
CPU_GATE_SHAPES = [(2, 3, 9, 13), (1, 16, 17, 19)]
CPU_QUICK_SHAPES = [(1, 16, 17, 19)]


def fused(mask_logits: torch.Tensor, slot_rgb: torch.Tensor, slot_depth: torch.Tensor, bg_rgb: torch.Tensor,
          bg_depth: torch.Tensor, bg_logit: float = BG_LOGIT):
    """Our op with the Triton backend forced (also on CPU tensors, where ``auto`` means the reference)."""
    with use_backend("triton"):  # backward follows the forward's choice: it is the Function's
        return composite_slots(mask_logits, slot_rgb, slot_depth, bg_rgb, bg_depth, bg_logit=bg_logit)


def reference(mask_logits: torch.Tensor, slot_rgb: torch.Tensor, slot_depth: torch.Tensor, bg_rgb: torch.Tensor,
              bg_depth: torch.Tensor, bg_logit: float = BG_LOGIT):
    """The eager reference (what upstream computes), also the function ``torch.compile`` gets."""
    return composite_slots_reference(mask_logits, slot_rgb, slot_depth, bg_rgb, bg_depth, bg_logit=bg_logit)


def _make_inputs(shape: tuple[int, int, int, int]):
    B, O, H, W = shape

    def make(dtype: torch.dtype, device: torch.device, gen: torch.Generator) -> dict[str, Any]:
        def rand(*size, lo=-1.0, hi=1.0):
            t = torch.rand(*size, generator=gen, dtype=torch.float64) * (hi - lo) + lo
            return t.to(device=device, dtype=dtype).requires_grad_()

        # Logits spread like trained mask logits (mostly saturated), colours in [-1, 1], depth > 0.
        return {"mask_logits": rand(B, O, H, W, lo=-8.0, hi=8.0), "slot_rgb": rand(B, 3 * O, H, W),
                "slot_depth": rand(B, O, H, W, lo=0.5, hi=4.0), "bg_rgb": rand(B, 3, H, W),
                "bg_depth": rand(B, 1, H, W, lo=0.5, hi=4.0), "bg_logit": BG_LOGIT}

    return make


def minimal_elements(B: int, O: int, H: int, W: int) -> tuple[int, int]:
    """Elements moved by the forward and the backward, each input read once, each output written once.

    Forward reads logits (O), slot rgb (3O), slot depth (O), bg rgb (3), bg depth (1) and writes the
    mask (O + 1), rgb (3), depth (1) per pixel. Backward reads the logits, slot and bg rgb/depth
    (5O + 4) and the upstream grads of mask, rgb, depth (O + 5), and writes the grads of all five
    inputs (5O + 4).
    """
    pixels = B * H * W
    return pixels * (6 * O + 9), pixels * (11 * O + 13)


def _case(shape: tuple[int, int, int, int], notes: str = "") -> BenchCase:
    B, O, H, W = shape
    fwd, bwd = minimal_elements(B, O, H, W)
    return BenchCase(
        op="composite",
        label=f"{notes + ' ' if notes else ''}B{B} O{O} {H}x{W}",
        shape={"B": B, "O": O, "H": H, "W": W, "mask": True},
        make_inputs=_make_inputs(shape),
        reference=reference,
        fused=fused,
        bytes_fwd=lambda e: e * fwd,
        bytes_bwd=lambda e: e * bwd,
        dtypes=(torch.float32, torch.bfloat16),
        notes=notes,
    )


def cases(quick: bool, device: torch.device) -> list[BenchCase]:
    """The composite cases for ``device``: §22.1 shapes on a GPU, small 'cpu-gate' shapes on a CPU."""
    if torch.device(device).type == "cpu":
        shapes = CPU_QUICK_SHAPES if quick else CPU_GATE_SHAPES
        return [_case(s, notes="cpu-gate") for s in shapes]
    return [_case(s) for s in (QUICK_SHAPES if quick else GPU_SHAPES)]


def compile_cases() -> list[BenchCase]:
    """Launch variants only the compile gate needs (``bench --compile --shapes all``): no mask output
    (neither written nor given a gradient), and slot counts padded to a power of two."""
    import dataclasses

    def fused_no_mask(mask_logits, slot_rgb, slot_depth, bg_rgb, bg_depth, bg_logit=BG_LOGIT):
        with use_backend("triton"):
            return composite_slots(mask_logits, slot_rgb, slot_depth, bg_rgb, bg_depth, bg_logit=bg_logit,
                                   return_mask=False)

    no_mask = dataclasses.replace(_case((8, 16, 128, 128), notes="no-mask"), fused=fused_no_mask)
    return [no_mask, _case((4, 3, 64, 64), notes="odd-slots"), _case((4, 5, 96, 80), notes="odd-slots")]
