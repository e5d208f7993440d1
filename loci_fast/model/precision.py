"""The model's precision rule for half-precision storage (bf16/fp16 parameters and inputs).

Every module computes in the dtype of its inputs: grids, constants and buffers are cast to it at
the point of use (DeepSpeed's bf16/fp16 engines cast parameters but leave buffers in fp32). A few
numerically sensitive steps (whole-image reductions, SSIM's variance differences, high-frequency
Fourier codes, the random pick inside a mask) run in fp32 when the storage is half precision and
cast their results back, through ``upcast`` (the one the kernels' references use). For fp32 and
fp64 inputs it returns its argument unchanged, so the full-precision math stays exactly as it was.
"""
from __future__ import annotations

from loci_fast.kernels.dispatch import upcast

__all__ = ["upcast"]
