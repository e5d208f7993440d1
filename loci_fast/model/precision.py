"""Working dtype helpers for half-precision storage (bf16/fp16 parameters and inputs).

Every module computes in the dtype of its inputs: grids, constants and buffers are cast to it at
the point of use (DeepSpeed's bf16/fp16 engines cast parameters but leave buffers in fp32). A few
numerically sensitive steps (whole-image reductions, SSIM's variance differences, high-frequency
Fourier codes, the random pick inside a mask) run in fp32 when the storage is half precision and
cast their results back. For fp32 and fp64 inputs these helpers return their argument unchanged, so
the full-precision math stays exactly as it was.
"""
from __future__ import annotations

import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half-precision storage dtypes, ``dtype`` itself otherwise."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


def upcast(t: torch.Tensor) -> torch.Tensor:
    """``t`` in fp32 when it is stored in fp16/bf16; ``t`` itself (no copy) otherwise."""
    return t.float() if t.dtype in HALF_DTYPES else t
