"""Helpers shared by the kernel tests: tolerances, comparisons, poisoned runs."""
from __future__ import annotations

import torch

from loci_fast.kernels import use_backend
from loci_fast.kernels.dispatch import poison_outputs

# max |ours - ref64| / max(max |ref64|, 1), per storage dtype (fp32 compute inside every kernel).
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape, f"shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(ours).all(), "non-finite values (unwritten output poison or overflow)"
    return (ours - ref).abs().max().item() / max(ref.abs().max().item(), 1.0) if ref.numel() else 0.0


def assert_close(ours: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    err = rel_err(ours, ref)
    assert err <= TOL[dtype], f"{what}: relative error {err:.3e} above the {dtype} tolerance {TOL[dtype]:.0e}"


def leaf(t: torch.Tensor, dtype: torch.dtype, grad: bool = True) -> torch.Tensor:
    return t.detach().to(dtype).requires_grad_(grad)


def run_triton(fn, *args, **kwargs):
    """Run ``fn`` with the Triton backend forced and every kernel output poisoned with NaN first."""
    with use_backend("triton"), poison_outputs():
        return fn(*args, **kwargs)


def run_reference(fn, *args, **kwargs):
    with use_backend("reference"):
        return fn(*args, **kwargs)
