"""Helpers shared by the kernel tests: tolerances, comparisons, poisoned runs."""
from __future__ import annotations

import torch

from loci_fast.kernels import use_backend
from loci_fast.kernels.dispatch import poison_outputs
from loci_fast.kernels.testing import TOLERANCE as TOL
from loci_fast.kernels.testing import rel_err

__all__ = ["TOL", "rel_err", "assert_close", "leaf", "run_triton", "run_reference"]


def assert_close(ours: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """``rel_err(ours, ref) <= TOL[dtype]``, with a message naming ``what`` and the failure."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(ours.detach()).all(), f"{what}: non-finite values (unwritten output poison or overflow)"
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
