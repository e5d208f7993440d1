"""The one error measure and tolerance table that the kernel tests and the benchmark gates share."""
from __future__ import annotations

import math

import torch

# max |ours - ref64| / max(max |ref64|, 1), by storage dtype. Every kernel computes in fp32 (fp64
# for fp64 storage), so fp32 is limited by accumulation order over the largest benchmark
# reductions, fp16/bf16 by rounding of inputs, outputs and gradients.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max(max |ref|, 1), computed in float64 on the CPU.

    ``inf`` when the shapes differ or ``ours`` holds a NaN or inf (an unwritten, NaN-poisoned
    output shows up this way); 0 for empty tensors.
    """
    if tuple(ours.shape) != tuple(ref.shape):
        return math.inf
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    if ref.numel() == 0:
        return 0.0
    if not torch.isfinite(ours).all():
        return math.inf
    return (ours - ref).abs().max().item() / max(ref.abs().max().item(), 1.0)
