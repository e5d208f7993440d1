"""Fused Triton ops for loci-fast, each with a plain-PyTorch ``*_reference`` twin.

Backend choice: see ``loci_fast.kernels.dispatch`` (``LOCI_FAST_KERNELS`` or ``use_backend``).
"""
from .composite import composite_slots, composite_slots_reference
from .dispatch import get_backend, use_backend
from .eprop import eprop_gate_l0rd, eprop_gate_l0rd_reference
from .gaussian import gaussian_maps, gaussian_maps_reference, slot_gaussian_merge, slot_gaussian_merge_reference
from .hyperconv import hyper_depthwise_conv2d, hyper_depthwise_conv2d_reference

__all__ = [
    "get_backend", "use_backend",
    "gaussian_maps", "gaussian_maps_reference", "slot_gaussian_merge", "slot_gaussian_merge_reference",
    "composite_slots", "composite_slots_reference",
    "hyper_depthwise_conv2d", "hyper_depthwise_conv2d_reference",
    "eprop_gate_l0rd", "eprop_gate_l0rd_reference",
]
