"""Fused Triton ops for loci-fast, each with a plain-PyTorch ``*_reference`` twin.

Backend choice: see ``loci_fast.kernels.dispatch`` (``LOCI_FAST_KERNELS`` or ``use_backend``).
"""
from .dispatch import get_backend, use_backend

__all__ = ["get_backend", "use_backend"]
