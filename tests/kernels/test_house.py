"""What every op of loci_fast.kernels shares: Triton optional, one reference promise, one naming
scheme, backend reporting, GPU planning for the compile gate."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import loci_fast.kernels as K
from loci_fast.kernels import _common, composite, dispatch, hyperconv, use_backend

ROOT = Path(__file__).resolve().parents[2]
OP_MODULES = {op: importlib.import_module(f"loci_fast.kernels.{op}") for op in K.OPS}

# A python that cannot import triton: a meta-path finder refusing it, as on a machine without it.
_NO_TRITON = """
import sys
class _NoTriton:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "triton":
            raise ImportError("No module named 'triton' (blocked by the test)")
sys.meta_path.insert(0, _NoTriton())
"""


def test_import_and_references_without_triton():
    code = _NO_TRITON + """
import torch, warnings
import loci_fast.kernels as K
g = torch.Generator().manual_seed(3)
pos = torch.rand(6, 4, generator=g) * 1.6 - 0.8
gest = torch.randn(6, 5, generator=g)
prio = torch.randn(2, 3, generator=g)
m = K.slot_gaussian_merge(pos, gest, prio, size=(7, 9), num_slots=3, with_raw=True)
assert torch.equal(m, K.slot_gaussian_merge_reference(pos, gest, prio, size=(7, 9), num_slots=3, with_raw=True))
x, w, b = torch.randn(2, 3, 6, 5, generator=g), torch.randn(2, 3, 3, 3, generator=g), torch.randn(2, 3, generator=g)
assert torch.equal(K.hyper_depthwise_conv2d(x, w, b), K.hyper_depthwise_conv2d_reference(x, w, b))
ins = [torch.randn(1, 2, 4, 5, generator=g), torch.randn(1, 6, 4, 5, generator=g), torch.rand(1, 2, 4, 5, generator=g),
       torch.randn(1, 3, 4, 5, generator=g), torch.rand(1, 1, 4, 5, generator=g)]
out = K.composite_slots(*ins)
assert all(torch.equal(a, b) for a, b in zip(out, K.composite_slots_reference(*ins)))
print(K.backend_summary())
try:
    with K.use_backend("triton"):
        K.gaussian_maps(pos, (4, 4))
except RuntimeError as err:
    print("forced:", err)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    summary, forced = proc.stdout.strip().splitlines()
    assert "triton does not import (ImportError" in summary and "reference for every call" in summary
    assert "'triton' was requested but Triton does not import" in forced and "blocked by the test" in forced


def test_auto_warns_once_when_falling_back_on_gpu_tensors(monkeypatch):
    """Meta tensors inside gpu_plan stand in for CUDA tensors (no GPU here)."""
    monkeypatch.setattr(_common, "triton", None)
    monkeypatch.setattr(_common, "TRITON_IMPORT_ERROR", "ImportError: pretend")
    monkeypatch.setattr(dispatch, "_fallback_warned", False)
    t = torch.empty(3, device="meta")
    with _common.gpu_plan(), use_backend("auto"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert dispatch.use_triton(t) is False
        assert dispatch.use_triton(t) is False
    assert len(caught) == 1 and "ImportError: pretend" in str(caught[0].message)
    with use_backend("auto"), warnings.catch_warnings(record=True) as caught:  # CPU tensors: no warning
        warnings.simplefilter("always")
        monkeypatch.setattr(dispatch, "_fallback_warned", False)
        assert dispatch.use_triton(torch.empty(3)) is False
    assert caught == []


def test_backend_summary_names_the_source(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert K.backend_summary().startswith("kernels: auto [default (LOCI_FAST_KERNELS unset)]: Triton kernels on CUDA")
    assert "interpreter on" in K.backend_summary()  # the tests run Triton interpreted
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    assert K.backend_summary().startswith("kernels: reference [LOCI_FAST_KERNELS=reference]: PyTorch reference")
    with use_backend("triton"):
        assert K.backend_summary().startswith("kernels: triton [use_backend() context]: Triton kernels")


def _reference_calls(gen, dtype):
    pos = (torch.rand(6, 4, generator=gen) * 1.6 - 0.8).to(dtype)
    gest, prio = torch.randn(6, 5, generator=gen).to(dtype), torch.randn(2, 3, generator=gen).to(dtype)
    x, w, b = (torch.randn(*s, generator=gen).to(dtype) for s in ((2, 3, 6, 5), (2, 3, 5, 5), (2, 3)))
    comp = [torch.randn(1, 2, 4, 5, generator=gen), torch.randn(1, 2, 3, 4, 5, generator=gen) * 4,
            torch.rand(1, 2, 4, 5, generator=gen), torch.randn(1, 3, 4, 5, generator=gen),
            torch.rand(1, 1, 4, 5, generator=gen)]
    comp = [t.to(dtype) for t in comp]
    return {
        "gaussian_maps": (K.gaussian_maps_reference, (pos, (7, 9)), {}),
        "slot_gaussian_merge": (K.slot_gaussian_merge_reference, (pos, gest, prio),
                                {"size": (7, 9), "num_slots": 3, "with_raw": True}),
        "hyperconv": (K.hyper_depthwise_conv2d_reference, (x, w, b), {}),
        "composite": (K.composite_slots_reference, tuple(comp), {"bg_logit": 1.5}),
    }


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("op", ["gaussian_maps", "slot_gaussian_merge", "hyperconv", "composite"])
def test_every_reference_computes_half_inputs_in_fp32(gen, op, dtype):
    """The promise: fp16/bf16 in, fp32 compute, the input dtype out (so: exactly the fp32 result rounded)."""
    fn, args, kw = _reference_calls(gen, dtype)[op]
    half = fn(*args, **kw)
    wide = fn(*[a.float() if isinstance(a, torch.Tensor) else a for a in args], **kw)
    for h, f in zip(half if isinstance(half, tuple) else (half,), wide if isinstance(wide, tuple) else (wide,)):
        assert h.dtype == dtype
        assert torch.equal(h, f.to(dtype))


@pytest.mark.parametrize("op", ["gaussian_maps", "slot_gaussian_merge", "hyperconv", "composite"])
def test_every_reference_checks_its_arguments(gen, op):
    fn, args, kw = _reference_calls(gen, torch.float32)[op]
    bad = (args[0].double(),) + args[1:]  # first tensor in another dtype (or a wrong rank for maps)
    if op == "gaussian_maps":
        bad = (args[0][:, :1],) + args[1:]
    with pytest.raises(ValueError) as err:
        fn(*bad, **kw)
    first = {"gaussian_maps": "position", "slot_gaussian_merge": "gestalt", "hyperconv": "weight",
             "composite": "slot_rgb"}[op]
    assert str(err.value).startswith(f"{first}:"), str(err.value)


def test_one_naming_scheme():
    """Launched kernels are _<op>_..._kernel; each op has one autograd Function, _<Op>Function, and
    at most a second, _<Op>ReferenceFunction, where upstream's own backward is not autograd's
    (e-prop: the reference is upstream's custom gradient)."""
    from triton.runtime.interpreter import InterpretedFunction

    for op, mod in OP_MODULES.items():
        kernels = [k for k, v in vars(mod).items() if isinstance(v, InterpretedFunction) and k.endswith("_kernel")]
        assert kernels and all(k.startswith(f"_{op}_") for k in kernels), (op, kernels)
        functions = [k for k, v in vars(mod).items()
                     if isinstance(v, type) and issubclass(v, torch.autograd.Function)]
        own = f"_{op.capitalize()}Function"
        assert own in functions and set(functions) <= {own, f"_{op.capitalize()}ReferenceFunction"}, (op, functions)


def test_composite_builds_its_autotuner_whatever_the_interpreter_flag():
    """Import order and TRITON_INTERPRET at import time no longer decide the GPU path."""
    from triton.runtime.autotuner import Autotuner

    assert dispatch.interpreter_enabled()
    assert isinstance(composite._fwd_tuned, Autotuner) and isinstance(composite._bwd_tuned, Autotuner)


def test_gpu_plan_makes_launchers_plan_for_a_gpu():
    x = torch.empty(128, 128, 16, 16, device="meta")
    interp = hyperconv._launch_geometry(x, backward=False)[0]
    with _common.gpu_plan(sm_count=7):
        gpu = hyperconv._launch_geometry(x, backward=False)[0]
        assert _common.sm_count(torch.device("cuda", 0)) == 7
    assert gpu == hyperconv.pick_blocks(128, 16, 16, interpret=False)
    assert interp == hyperconv.pick_blocks(128, 16, 16, interpret=True) != gpu
    assert not _common.planning_gpu()


@pytest.mark.parametrize("n, want", [(0, 1), (1, 1), (2, 2), (3, 4), (16, 16), (17, 32)])
def test_next_pow2(n, want):
    assert _common.next_pow2(n) == want


def test_flat_pixels_copies_only_when_needed(gen):
    t = torch.randn(2, 3, 4, 5, generator=gen)
    assert _common.flat_pixels(t).data_ptr() == t.data_ptr()
    strided = t.transpose(2, 3)
    flat = _common.flat_pixels(strided)
    assert flat.stride(-1) == 1 and torch.equal(flat, strided.reshape(2, 3, 20))
