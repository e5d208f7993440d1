"""Noise-regularised binarisation of a code (reference §1.3)."""
from __future__ import annotations

import torch
from torch import nn


class Binarize(nn.Module):
    """s = sigmoid(x); training: s + s·(1 - s)·ε with ε ~ N(0, 1); evaluation: round(s).

    ``noise`` (same shape as ``x``) replaces the fresh ε, for reproducible tests; it is ignored in
    evaluation mode. The noise draw uses ``torch.randn_like``, so with equal seeds and call order the
    draws match upstream's.
    """

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        s = torch.sigmoid(x)
        if not self.training:
            return torch.round(s)
        if noise is None:
            noise = torch.randn_like(s)
        elif noise.shape != s.shape:
            raise ValueError(f"noise: expected shape {tuple(s.shape)} (that of x), received {tuple(noise.shape)}")
        return s + s * (1 - s) * noise
