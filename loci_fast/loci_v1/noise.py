"""The random draws of one original-Loci frame, injectable (reference loci.md §2.11).

Upstream draws, per frame and in this order, from the global torch RNG:
1. slot seeding: ``randn(B·O, G)`` (new gestalts), then ``rand(B·O·10, 2)`` (candidate positions, as
   drawn, before ·2 - 1);
2. one ``normal(0, gate_noise_level, (Hd,))`` per GateL0RD layer;
3. the tracker gate's ``randn_like`` (B, O, 1) (only with a tracker);
4. the gestalt bottleneck's ``randn_like`` (B·O, G, 1, 1);
5. the priority jitter's ``randn_like`` (B·O, 1).
Any field left None is drawn at its point with upstream's call, so a step without injection consumes
the global stream exactly as upstream does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class StepNoise:
    """Values for some or all of one step's draws (shapes in the module docstring)."""

    init_gestalt: torch.Tensor | None = None  # (B·O, G) standard normal
    init_candidates: torch.Tensor | None = None  # (B·O·10, 2) uniform [0, 1)
    gate: Sequence[torch.Tensor] | None = None  # one (Hd,) per GateL0RD layer
    tracker: torch.Tensor | None = None  # (B, O, 1)
    bottleneck: torch.Tensor | None = None  # (B·O, G, 1, 1)
    priority: torch.Tensor | None = None  # (B·O, 1)


def given_or_drawn(value: torch.Tensor | None, name: str, shape: tuple[int, ...], draw) -> torch.Tensor:
    """``value`` checked against ``shape``, or ``draw()`` when it is None."""
    if value is None:
        return draw()
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"StepNoise.{name}: expected shape {tuple(shape)}, received {tuple(value.shape)}")
    return value


def binarize(x: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
    """x + x(1-x)·eps (upstream's noise binariser, pushes sigmoid/softmax outputs towards 0 or 1);
    ``eps`` None returns x (the noise-free evaluation of compat ``noise_in_eval`` False)."""
    return x if eps is None else x + x * (1 - x) * eps
