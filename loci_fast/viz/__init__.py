"""``loci-fast viz``: per-step image grids, per-slot panels, animations, latent exports and an index page.

``render(checkpoint, data, out, ...)`` is the Python entry point (what ``make demo`` calls); the modules:
``grid`` (the training-time image grid), ``panels`` (colours, overlays, Gaussians, canvases),
``rollout`` (the Loci-s ``--save`` rollout), ``cater`` (the original Loci's rollout and views),
``latents`` (safetensors + JSON export), ``animate`` (GIF and MP4), ``html`` (index.html) and
``rendering`` (loading weights and videos, writing a video's files). Nothing heavy is imported here:
the trainer imports ``loci_fast.viz.grid``.
"""
from __future__ import annotations

from typing import Any

__all__ = ["render"]


def __getattr__(name: str) -> Any:
    if name == "render":
        from .rendering import render

        return render
    raise AttributeError(f"module 'loci_fast.viz' has no attribute {name!r}")
