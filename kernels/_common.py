"""What every op module of ``loci_fast.kernels`` shares: the guarded Triton import, launch-planning
helpers (powers of two, compute dtype, flat pixel views) and the GPU-planning switch.

Triton is optional. Without it (or when it fails to import) ``triton`` and ``tl`` are None,
``TRITON_IMPORT_ERROR`` says why, ``jit`` leaves kernel bodies as plain, never-called functions and
every op runs its reference (``dispatch.use_triton`` says so once, on CUDA tensors). Op modules use
``from __future__ import annotations`` so ``tl.constexpr`` annotations are never evaluated there.

GPU planning: launchers choose block shapes for a GPU or for the CPU interpreter. They ask
``plan_for_gpu(tensor)`` rather than ``tensor.is_cuda``, so that the compile gate can record the
GPU launches on meta tensors (inside ``gpu_plan(...)``) on a machine without a GPU, and
``sm_count(device)`` rather than ``torch.cuda``, which the same context answers with the target's.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

try:  # Triton is optional: without it only the references run.
    import triton
    import triton.language as tl

    TRITON_IMPORT_ERROR: str | None = None
except Exception as err:  # ImportError, or a broken install raising at import
    triton = None
    tl = None
    TRITON_IMPORT_ERROR = f"{type(err).__name__}: {err}"


def jit(fn):
    """``triton.jit``, or (without Triton) the function itself: kernels are then never launched."""
    return triton.jit(fn) if triton is not None else fn


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def compute_dtype(dtype: torch.dtype):
    """(Triton dtype, torch dtype) kernels compute in: fp64 for fp64 storage (gradcheck in the
    interpreter), fp32 for fp32/fp16/bf16 storage."""
    if dtype == torch.float64:
        return tl.float64, torch.float64
    return tl.float32, torch.float32


def flat_pixels(t: torch.Tensor) -> torch.Tensor:
    """``t`` with its last two (spatial) dims merged and unit pixel stride; copies only when needed."""
    t = t.flatten(-2)
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


# ---------------------------------------------------------------- GPU planning

class _Planning(threading.local):
    sm_count: int | None = None


_planning = _Planning()


@contextlib.contextmanager
def gpu_plan(sm_count: int = 132) -> Iterator[None]:
    """Plan every launch in this scope as for a GPU with ``sm_count`` SMs, whatever the tensors'
    device (the compile gate records launches on meta tensors this way; 132 = H100/H200 SXM)."""
    previous = _planning.sm_count
    _planning.sm_count = int(sm_count)
    try:
        yield
    finally:
        _planning.sm_count = previous


def planning_gpu() -> bool:
    """True inside ``gpu_plan(...)``."""
    return _planning.sm_count is not None


def plan_for_gpu(t: torch.Tensor) -> bool:
    """Whether launch shapes for ``t`` are chosen for a GPU (CUDA tensors, or inside ``gpu_plan``)."""
    return t.is_cuda or planning_gpu()


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (the planned target's inside ``gpu_plan``)."""
    if _planning.sm_count is not None:
        return _planning.sm_count
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


_sm_cache: dict[int, int] = {}


def _cuda_sm_count(index: int) -> int:
    if index not in _sm_cache:
        _sm_cache[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _sm_cache[index]
