"""Backend choice and argument checks shared by every op in ``loci_fast.kernels``.

Backends:
  ``auto``      Triton for CUDA tensors when Triton imports, the PyTorch reference otherwise.
  ``triton``    always Triton (on CPU tensors this needs ``TRITON_INTERPRET=1`` set before
                Triton is imported, which is how CI runs every kernel).
  ``reference`` always the plain-PyTorch reference.

Choose with the environment variable ``LOCI_FAST_KERNELS`` or, scoped, with
``loci_fast.kernels.use_backend(name)``. ``backend_summary()`` says in one line which backend
calls will use and why (the trainer prints it at start and stores it with its metrics).
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings
from typing import Iterator, Sequence

import torch

from . import _common

BACKENDS = ("auto", "triton", "reference")
ENV_VAR = "LOCI_FAST_KERNELS"
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
HALF_DTYPES = (torch.float16, torch.bfloat16)

_state = threading.local()


def upcast(t: torch.Tensor) -> torch.Tensor:
    """``t`` in fp32 when it is stored in fp16/bf16 (differentiable); ``t`` itself otherwise."""
    return t.float() if t.dtype in HALF_DTYPES else t


def _validate_backend(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(
            f"{source}: unknown kernel backend {name!r}; choose one of {', '.join(BACKENDS)}"
        )
    return name


def get_backend() -> str:
    """The backend in force: the innermost ``use_backend`` if any, else ``$LOCI_FAST_KERNELS``, else auto."""
    stack = getattr(_state, "stack", None)
    if stack:
        return stack[-1]
    return _validate_backend(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto", ENV_VAR)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Context manager forcing a kernel backend (``auto``, ``triton`` or ``reference``) in its scope."""
    _validate_backend(name, "use_backend")
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(name)
    try:
        yield name
    finally:
        stack.pop()


def interpreter_enabled() -> bool:
    """True when Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    """True when Triton imported (``_common.TRITON_IMPORT_ERROR`` says why not otherwise)."""
    return _common.triton is not None


_fallback_warned = False


def _warn_fallback_once() -> None:
    global _fallback_warned
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(f"loci_fast.kernels: backend 'auto' runs the PyTorch reference on CUDA tensors because "
                      f"Triton does not import ({_common.TRITON_IMPORT_ERROR}); install triton, or set "
                      f"{ENV_VAR}=reference to choose the reference knowingly", RuntimeWarning, stacklevel=4)


def use_triton(*tensors: torch.Tensor) -> bool:
    """Decide, for one call, whether the Triton path runs. Raises when ``triton`` is forced but cannot run.

    Inside ``_common.gpu_plan(...)`` (the compile gate) meta tensors count as GPU tensors.
    """
    backend = get_backend()
    if backend == "reference":
        return False
    on_cuda = all(t.is_cuda or (t.is_meta and _common.planning_gpu()) for t in tensors)
    if backend == "auto":
        if on_cuda and not triton_available():
            _warn_fallback_once()
        return on_cuda and triton_available()
    if not triton_available():
        raise RuntimeError(f"kernel backend 'triton' was requested but Triton does not import "
                           f"({_common.TRITON_IMPORT_ERROR}); install triton or set {ENV_VAR}=reference")
    if not on_cuda and not interpreter_enabled():
        raise RuntimeError("kernel backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 set before "
                           "triton is imported; set it, move the tensors to CUDA, or use backend 'reference'")
    return True


def backend_summary() -> str:
    """One line: the backend kernel calls will use now, and why (context, env var or auto; Triton or not)."""
    stack = getattr(_state, "stack", None)
    if stack:
        backend, source = stack[-1], "use_backend() context"
    elif os.environ.get(ENV_VAR, "").strip():
        backend, source = get_backend(), f"{ENV_VAR}={os.environ[ENV_VAR].strip()}"
    else:
        backend, source = "auto", f"default ({ENV_VAR} unset)"
    if triton_available():
        version = getattr(_common.triton, "__version__", "?")
        mode = ", interpreter on (TRITON_INTERPRET=1)" if interpreter_enabled() else ""
        triton_state = f"triton {version} imports{mode}"
    else:
        triton_state = f"triton does not import ({_common.TRITON_IMPORT_ERROR})"
    if backend == "reference":
        effect = "PyTorch reference for every call"
    elif backend == "triton":
        effect = ("Triton kernels for every call" if triton_available()
                  else "Triton forced but missing: calls will raise")
    elif triton_available():
        effect = "Triton kernels on CUDA tensors, PyTorch reference on CPU tensors"
    else:
        effect = "PyTorch reference for every call (Triton missing)"
    return f"kernels: {backend} [{source}]: {effect}; {triton_state}"


# ---------------------------------------------------------------- argument checks

def _fmt_shape(shape: Sequence) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def check_tensor(name: str, t, *, ndim: int | None = None, shape: Sequence | None = None,
                 floating: bool = True) -> torch.Tensor:
    """Check that ``t`` is a tensor of the expected rank/shape; ``None`` in ``shape`` matches any size."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, received {type(t).__name__}")
    if floating and t.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name}: expected a floating dtype (float16, bfloat16, float32, float64), "
                         f"received {t.dtype}")
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and t.dim() != ndim:
        want = _fmt_shape(shape) if shape is not None else f"{ndim} dimensions"
        raise ValueError(f"{name}: expected shape {want}, received {_fmt_shape(t.shape)}")
    if shape is not None and any(w is not None and w != s for w, s in zip(shape, t.shape)):
        raise ValueError(f"{name}: expected shape {_fmt_shape(['*' if w is None else w for w in shape])}, "
                         f"received {_fmt_shape(t.shape)}")
    return t


def check_same(ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Check that every tensor in ``others`` has the dtype and device of ``ref``."""
    for name, t in others.items():
        if t is None:
            continue
        if t.device != ref.device:
            raise ValueError(f"{name}: expected device {ref.device} (the device of {ref_name}), "
                             f"received {t.device}")
        if t.dtype != ref.dtype:
            raise ValueError(f"{name}: expected dtype {ref.dtype} (the dtype of {ref_name}), "
                             f"received {t.dtype}")


def check_size(name: str, size) -> tuple[int, int]:
    """Check an (h, w) pair of positive ints."""
    try:
        h, w = (int(s) for s in size)
        ok = all(int(s) == s for s in size)
    except (TypeError, ValueError):
        ok = False
    if not ok or h < 1 or w < 1:
        raise ValueError(f"{name}: expected a pair of positive ints (h, w), received {size!r}")
    return h, w


def check_positive(name: str, value, *, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name}: expected a positive number, received {value!r}")
    return value


# ---------------------------------------------------------------- output allocation

# Process-wide, not thread-local: CUDA autograd runs backward on another thread.
_poison_depth = 0


def _poison_enabled() -> bool:
    return _poison_depth > 0 or os.environ.get("LOCI_FAST_POISON", "0") == "1"


@contextlib.contextmanager
def poison_outputs() -> Iterator[None]:
    """Fill every buffer that kernels allocate with NaN (ints with -1) so unwritten elements show up."""
    global _poison_depth
    _poison_depth += 1
    try:
        yield
    finally:
        _poison_depth -= 1


def empty(shape: Sequence[int], *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty`` for kernel outputs and scratch; NaN-poisoned inside ``poison_outputs()``."""
    out = torch.empty(tuple(shape), dtype=dtype, device=device)
    if _poison_enabled():
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out
