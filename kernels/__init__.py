"""Fused Triton ops for loci-fast, each with a plain-PyTorch ``*_reference`` twin.

Backend choice: see ``loci_fast.kernels.dispatch`` (``LOCI_FAST_KERNELS`` or ``use_backend``).
"""
from .dispatch import get_backend, use_backend
from .hyperconv import hyper_depthwise_conv2d, hyper_depthwise_conv2d_reference
from .composite import composite_slots, composite_slots_reference

__all__ = ["get_backend", "use_backend", "hyper_depthwise_conv2d", "hyper_depthwise_conv2d_reference", "composite_slots", "composite_slots_reference"]
