"""Mask statistics: the centroid and area-based std of a soft mask, and a random point inside it.

Reference §1.4. Both compute on a linspace(-1, 1) grid (the Gaus2D grid, endpoints included).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .precision import upcast


def _check_mask(mask: torch.Tensor, size: tuple[int, int]) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or tuple(mask.shape[2:]) != size:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask: expected shape (N, C, {size[0]}, {size[1]}), received {shape}")


def _grids(size: tuple[int, int], normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = size
    if normalize:
        xs, ys = torch.linspace(-1, 1, w), torch.linspace(-1, 1, h)
    else:  # pixel units, as upstream's normalize=False: linspace(0, W, W)
        xs, ys = torch.linspace(0, w, w), torch.linspace(0, h, h)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return gx[None, None].contiguous(), gy[None, None].contiguous()


class MaskCenter(nn.Module):
    """Centroid x̄ = Σ x·m / (Σ m + 1e-8) (likewise ȳ) and std = sqrt(Σ m / (H·W)) of a mask (N, C, H, W).

    ``combine=True`` returns (N, 3C) = (x̄, ȳ, std) concatenated on the last dim; otherwise
    ((N, 2C) centroid, (N, C) std). With C = 1 (every use) these are (N, 3) or ((N, 2), (N, 1)).
    Outputs take the mask's dtype; for fp16/bf16 masks the sums run in fp32.
    """

    def __init__(self, size, normalize: bool = True, combine: bool = False):
        super().__init__()
        self.size = tuple(int(s) for s in size)
        self.combine = combine
        gx, gy = _grids(self.size, normalize)
        self.register_buffer("x_coords", gx, persistent=False)
        self.register_buffer("y_coords", gy, persistent=False)

    def forward(self, mask: torch.Tensor):
        _check_mask(mask, self.size)
        m = upcast(mask)  # whole-image sums: fp32 for half-precision masks (1e-8 is 0 in fp16)
        total = m.sum((2, 3))
        cx = (self.x_coords.to(m) * m).sum((2, 3)) / (total + 1e-8)
        cy = (self.y_coords.to(m) * m).sum((2, 3)) / (total + 1e-8)
        std = (total / (m.shape[2] * m.shape[3])) ** 0.5
        if self.combine:
            return torch.cat((cx, cy, std), dim=-1).to(mask.dtype)
        return torch.cat((cx, cy), dim=-1).to(mask.dtype), std.to(mask.dtype)


class PositionInMask(nn.Module):
    """A random pixel well inside a mask, for initial positions in pretraining (no gradients).

    Binarise at 0.75, erode with a 5×5 window, and pick a pixel by softmax(ε·1000) over the eroded
    mask (ε ~ N(0, 1); pass ``generator`` for reproducible draws). Returns (random position, or the
    centroid where the eroded mask is (nearly) empty; centroid; std), shapes (N, 2), (N, 2), (N, 1)
    for a mask (N, 1, H, W). The centroid here uses +1e-6 in the denominator, as upstream.

    Outputs take the mask's dtype. For fp16/bf16 masks everything runs in fp32 (the ×1000 softmax
    is an argmax that bf16 rounding would turn into ties), so the draws and picks equal those of
    the fp32 model under the same seed.
    """

    def __init__(self, size):
        super().__init__()
        self.size = tuple(int(s) for s in size)
        gx, gy = _grids(self.size)
        self.register_buffer("x_coords", gx, persistent=False)
        self.register_buffer("y_coords", gy, persistent=False)

    @torch.no_grad()
    def forward(self, mask: torch.Tensor, generator: torch.Generator | None = None):
        _check_mask(mask, self.size)
        dtype, mask = mask.dtype, upcast(mask)
        n, c, h, w = mask.shape
        x_coords, y_coords = self.x_coords.to(mask), self.y_coords.to(mask)
        binary = (mask > 0.75).to(mask.dtype)
        eroded = 1 - F.max_pool2d(1 - binary, kernel_size=5, stride=1, padding=2)
        use_center = (eroded.sum((2, 3)) < 0.1).to(mask.dtype)

        eps = torch.randn(eroded.shape, generator=generator, device=mask.device, dtype=mask.dtype)
        # Softmax over every pixel (outside ones have logit 0), then restricted to the eroded mask.
        pick = torch.softmax((eps * eroded * 1000).view(n, c, -1), dim=-1).view(n, c, h, w) * eroded

        total = mask.sum((2, 3))
        center = torch.cat(((x_coords * mask).sum((2, 3)) / (total + 1e-6),
                            (y_coords * mask).sum((2, 3)) / (total + 1e-6)), dim=-1)
        std = (total / (h * w)) ** 0.5
        rand = torch.cat(((x_coords * pick).sum((2, 3)), (y_coords * pick).sum((2, 3))), dim=-1)
        return (use_center * center + (1 - use_center) * rand).to(dtype), center.to(dtype), std.to(dtype)
