"""Encoder heads: one channel of the position encoder's output each gives x/y, z, std or priority.

Reference §7.2. Inputs are in batch layout (B·O, 1, h, w).
"""
from __future__ import annotations

import torch
from torch import nn


def _check_head_input(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"input: expected shape (N, 1, h, w) (one channel of the position encoder), "
                         f"received {tuple(x.shape)}")


class PixelToPosition(nn.Module):
    """(x, y) = expectation of the Gaus2D grid (2j/(w-1) - 1, 2i/(h-1) - 1) under softmax over all h·w logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_head_input(x)
        n, _, h, w = x.shape
        p = torch.softmax(x.reshape(n, 1, h * w), dim=2).view(n, 1, h, w)
        # Grid written like upstream's (arange / (size-1) * 2 - 1) to match its float32 rounding.
        gx = (torch.arange(w, device=x.device) / (w - 1) * 2 - 1).to(x.dtype).view(1, 1, 1, w)
        gy = (torch.arange(h, device=x.device) / (h - 1) * 2 - 1).to(x.dtype).view(1, 1, h, 1)
        return torch.cat(((p * gx).sum((2, 3)), (p * gy).sum((2, 3))), dim=1)


class PixelToDepth(nn.Module):
    """z = sigmoid(spatial mean) -> (N, 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_head_input(x)
        return torch.sigmoid(x.mean((2, 3)))


class PixelToSTD(nn.Module):
    """std = spatial mean, raw (no activation; Gaus2D clips it, §24.3) -> (N, 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_head_input(x)
        return x.mean((2, 3))


class PixelToPriority(nn.Module):
    """π_o = tanh(mean(x_o))·a + b·idx_o + z_o·|c| -> (B·O, 1), with idx_o = 2o/(O-1) - 1.

    Learnt scalars a = ``priority_factor`` (1e-16), b = ``index_factor`` (1), c = ``depth_factor``
    (1e-16) at init. For O = 1 idx is 0 (upstream divides 0 by 0, giving NaN; §24.13, fixed).
    """

    def __init__(self, num_slots: int):
        super().__init__()
        self.num_slots = num_slots
        self.index_factor = nn.Parameter(torch.ones(1))
        self.priority_factor = nn.Parameter(torch.full((1,), 1e-16))
        self.depth_factor = nn.Parameter(torch.full((1,), 1e-16))

    def indices(self, device=None, dtype=torch.float32) -> torch.Tensor:
        o = self.num_slots
        if o == 1:
            return torch.zeros(1, 1, device=device, dtype=dtype)
        return (torch.arange(o, device=device) / (o - 1) * 2 - 1).to(dtype).view(1, o)

    def forward(self, x: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        _check_head_input(x)
        o = self.num_slots
        if x.shape[0] % o:
            raise ValueError(f"input: expected B·{o} rows (batch layout, {o} slots), received {x.shape[0]}")
        if depth.shape != (x.shape[0], 1):
            raise ValueError(f"depth: expected shape ({x.shape[0]}, 1), received {tuple(depth.shape)}")
        priority = torch.tanh(x.mean((1, 2, 3)).view(-1, o))
        priority = priority * self.priority_factor + self.index_factor * self.indices(x.device, x.dtype)
        return priority.reshape(-1, 1) + depth * self.depth_factor.abs()
