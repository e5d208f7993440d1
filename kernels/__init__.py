"""Fused Triton ops for loci-fast, each with a plain-PyTorch ``*_reference`` twin.

The op pattern (every op module ``kernels/<op>.py`` follows it; the e-prop op and later ones too):
  * ``<op>_reference(...)``: plain PyTorch, the oracle. It checks its arguments exactly as the op
    does (ValueError naming the argument) and computes fp16/bf16 inputs in fp32, returning the
    input dtype; fp64 stays fp64. Any float dtype, autograd.
  * Triton kernels ``_<op>_<pass>_kernel`` (``@_common.jit``; device helpers without the suffix)
    and one ``torch.autograd.Function`` named ``_<Op>Function`` joining forward and backward.
    Kernels compute in ``_common.compute_dtype`` (fp32, fp64 for fp64 storage); outputs take the
    input dtype. Outputs and scratch come from ``dispatch.empty`` (NaN-poisoned in tests).
  * Launchers choose GPU or interpreter block shapes with ``_common.plan_for_gpu(t)`` and SM counts
    with ``_common.sm_count(device)``, never ``t.is_cuda`` / ``torch.cuda``, and read no tensor
    data on the host, so that the compile gate (``loci-fast bench --compile``) can record their GPU
    launches on meta tensors. Autotuning is chosen per call, never at import.
  * The public ``<op>(...)``: checks arguments, then ``dispatch.use_triton(*tensors)`` decides
    between the autograd Function and the unchecked reference.
  * Registration: the op's name in ``OPS`` below; ``loci_fast/bench/<op>.py`` with
    ``cases(quick, device)`` (benchmarks, CPU gates, and the compile gate's launches) and optionally
    ``compile_cases()`` (variants only the compile gate needs); tests in ``tests/kernels/test_<op>.py``
    against float64 with ``kernels.testing.TOLERANCE`` / ``rel_err``.

Backend choice: see ``loci_fast.kernels.dispatch`` (``LOCI_FAST_KERNELS`` or ``use_backend``);
``backend_summary()`` says which backend calls use and why. Without Triton everything imports and
every op runs its reference.
"""
from .composite import composite_slots, composite_slots_reference
from .dispatch import backend_summary, get_backend, use_backend
from .eprop import eprop_gate_l0rd, eprop_gate_l0rd_reference
from .gaussian import gaussian_maps, gaussian_maps_reference, slot_gaussian_merge, slot_gaussian_merge_reference
from .hyperconv import hyper_depthwise_conv2d, hyper_depthwise_conv2d_reference

# The ops with Triton kernels, by module name (bench suites, compile gate and traffic report follow it).
OPS = ("gaussian", "composite", "hyperconv", "eprop")

__all__ = [
    "OPS", "backend_summary", "get_backend", "use_backend",
    "gaussian_maps", "gaussian_maps_reference", "slot_gaussian_merge", "slot_gaussian_merge_reference",
    "composite_slots", "composite_slots_reference",
    "hyper_depthwise_conv2d", "hyper_depthwise_conv2d_reference",
    "eprop_gate_l0rd", "eprop_gate_l0rd_reference",
]
