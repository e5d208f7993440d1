"""One benchmark case: an op at one shape and dtype, its reference, its fused version and its byte count."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..kernels.testing import TOLERANCE, rel_err  # noqa: F401  (the one table, shared with the kernel tests)

DTYPE_NAMES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


@dataclass
class BenchCase:
    """An op at one shape.

    ``make_inputs(dtype, device, generator)`` returns keyword arguments for ``reference`` and ``fused``;
    tensors that take gradients must be leaves with ``requires_grad=True``. Non-tensor keyword
    arguments pass through unchanged. ``bytes_fwd``/``bytes_bwd`` give the minimal bytes moved
    (each input read once, each output written once) for an element size in bytes.
    """

    op: str
    label: str
    shape: dict[str, Any]
    make_inputs: Callable[[torch.dtype, torch.device, torch.Generator], dict[str, Any]]
    reference: Callable[..., Any]
    fused: Callable[..., Any]
    bytes_fwd: Callable[[int], int]
    bytes_bwd: Callable[[int], int]
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def as_tuple(out) -> tuple[torch.Tensor, ...]:
    """Normalise an op's output (tensor or tuple) to a tuple of tensors."""
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def cast_inputs(inputs: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """Fresh leaf copies of every floating tensor in ``dtype``; other values unchanged."""
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            out[k] = v.detach().to(dtype).requires_grad_(v.requires_grad)
        else:
            out[k] = v
    return out


def grad_leaves(inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.requires_grad}
