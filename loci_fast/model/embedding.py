"""Position codes: a Fourier embedding of a slot position, and Gaussian-weighted feature pooling.

Reference §4. Upstream's ``legacy`` buffers (an always-off old std parameterisation, §24.11b) are
not reproduced; the checkpoint converter drops them.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from loci_fast import kernels as K

from .convnext import LinearSkip
from .precision import upcast


def _std_column(position: torch.Tensor, name: str = "position") -> torch.Tensor:
    """The std column of a (N, k) position as Gaus2D reads it: col 3 (k=4), col 2 (k=3), zeros (k=2)."""
    if position.dim() != 2 or not 2 <= position.shape[1] <= 4:
        raise ValueError(f"{name}: expected shape (N, k) with k in 2..4 (x, y[, z], std), "
                         f"received {tuple(position.shape)}")
    k = position.shape[1]
    return position[:, k - 1:k] if k > 2 else torch.zeros_like(position[:, :1])


def linspace_grid(size, *, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(grid_x (1,1,1,W), grid_y (1,1,H,1)) with linspace(-1, 1) endpoints, as upstream's grids."""
    h, w = size
    gx = torch.linspace(-1, 1, w, device=device, dtype=dtype).view(1, 1, 1, w)
    gy = torch.linspace(-1, 1, h, device=device, dtype=dtype).view(1, 1, h, 1)
    return gx, gy


class PositionEmbedding(nn.Module):
    """Fourier code of a slot position on an h×w grid (§4.1), (N, k) -> (N, 2·num_frequencies, h, w).

    ``forward(position, size)`` takes the grid size per call (upstream's ``update_grid(size)`` then
    ``forward(position)`` folded into one call). f = 0.1 / clip(std, 1/min(h, w), max_std),
    f_y = f, f_x = f·W/H; a = (grid - centre)·f·π/2; channels cos(a_x·2^i), cos(a_y·2^i) interleaved.
    The code takes the position's dtype; for fp16/bf16 positions the angles are computed in fp32
    (angles reach ~100 rad at 2^7 times the base frequency, where bf16 rounds them by tenths of a
    radian).
    """

    def __init__(self, num_frequencies: int = 8, max_std: float = 0.5, position_limit: float = 1.0):
        super().__init__()
        self.num_frequencies, self.max_std, self.position_limit = num_frequencies, max_std, position_limit

    def forward(self, position: torch.Tensor, size) -> torch.Tensor:
        h, w = (int(s) for s in size)
        dtype, position = position.dtype, upcast(position)
        std = _std_column(position).view(-1, 1, 1, 1)
        x = position[:, 0].view(-1, 1, 1, 1).clamp(-self.position_limit, self.position_limit)
        y = position[:, 1].view(-1, 1, 1, 1).clamp(-self.position_limit, self.position_limit)
        f = 0.1 / std.clamp(1.0 / min(h, w), self.max_std)
        gx, gy = linspace_grid((h, w), device=position.device, dtype=position.dtype)
        # Same operation order as upstream so float32 rounding matches at the high frequencies.
        ax = (gx - x) * (f * (w / h)) * math.pi / 2
        ay = (gy - y) * f * math.pi / 2
        codes = []
        for i in range(self.num_frequencies):
            codes += [torch.cos(ax * 2 ** i).expand(-1, 1, h, w), torch.cos(ay * 2 ** i).expand(-1, 1, h, w)]
        return torch.cat(codes, dim=1).to(dtype)

    def extra_repr(self) -> str:
        return f"num_frequencies={self.num_frequencies}"


class PositionPooling(nn.Module):
    """Gaussian-weighted global pooling of a feature map at a slot position (§4.2).

    w = G(position) / (ΣG + 1e-8) on the ``size`` grid (``loci_fast.kernels.gaussian_maps``,
    min_std = 1/min(size)); v = Σ_hw w·F; output LinearSkip(v) + MLP(in -> 4·max(in, out) -> out).
    """

    def __init__(self, size, in_channels: int, out_channels: int):
        super().__init__()
        self.size = tuple(int(s) for s in size)
        self.in_channels = in_channels
        hidden = 4 * max(in_channels, out_channels)
        self.skip = LinearSkip(in_channels, out_channels)
        self.residual = nn.Sequential(nn.Linear(in_channels, hidden), nn.SiLU(), nn.Linear(hidden, out_channels))

    def forward(self, feature_maps: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        n = feature_maps.shape[0]
        if feature_maps.dim() != 4 or feature_maps.shape[1:] != (self.in_channels, *self.size):
            raise ValueError(f"feature_maps: expected shape (N, {self.in_channels}, {self.size[0]}, "
                             f"{self.size[1]}), received {tuple(feature_maps.shape)}")
        _std_column(position)
        if position.shape[0] != n:
            raise ValueError(f"position: expected {n} rows (one per feature map), received {position.shape[0]}")
        weight = K.gaussian_maps(position, self.size)
        weight = weight / (weight.sum((2, 3), keepdim=True) + 1e-8)
        pooled = (weight * feature_maps).sum((2, 3))
        return self.skip(pooled) + self.residual(pooled)
