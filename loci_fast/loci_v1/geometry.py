"""Gaussian position maps in the original Loci's (row, col, size) convention and occlusion by priority
(reference loci.md §1, §2.2, §2.3).

Row = x (top -1, bottom +1), col = y, both on an align-corners grid 2i/(n-1) - 1; the std in
normalised units is (1 + max(H, W)·s)/H along rows and (1 + max(H, W)·s)/W along columns.
(Loci-s puts x on the columns and scales σ differently, so ``kernels.gaussian_maps`` does not apply.)
"""
from __future__ import annotations

import torch


def axis_grid(n: int, like: torch.Tensor) -> torch.Tensor:
    """Align-corners pixel coordinates 2i/(n-1) - 1 of an n-pixel axis (n >= 2)."""
    if n < 2:
        raise ValueError(f"grid axis of {n} pixel(s): the original Loci needs at least 2 per axis "
                         "(the grid divides by n - 1); enlarge model.latent_size")
    return torch.arange(n, device=like.device).to(like.dtype) / (n - 1) * 2 - 1


def gaussian_maps(position: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 3) rows (row, col, s) -> (N, 1, H, W) unnormalised Gaussians (peak 1).

    row, col are clipped to [-1, 1] and s to [0, 1]; differentiable in ``position``.
    """
    if position.dim() != 2 or position.shape[1] < 3:
        raise ValueError(f"gaussian_maps: expected positions (N, 3), received {tuple(position.shape)}")
    h, w = int(size[0]), int(size[1])
    gr = axis_grid(h, position).view(1, 1, h, 1)
    gc = axis_grid(w, position).view(1, 1, 1, w)
    r = position[:, 0:1].clip(-1, 1).view(-1, 1, 1, 1)
    c = position[:, 1:2].clip(-1, 1).view(-1, 1, 1, 1)
    s = position[:, 2:3].clip(0, 1).view(-1, 1, 1, 1)
    m = max(h, w)
    std_r = (1 + m * s) / h
    std_c = (1 + m * s) / w
    return torch.exp(-1 * ((gr - r) ** 2 / (2 * std_r ** 2) + (gc - c) ** 2 / (2 * std_c ** 2)))


def prioritize(maps: torch.Tensor, priority: torch.Tensor | None) -> torch.Tensor:
    """(B, O, H, W) slot maps, (B, O) priorities -> relu(g_o - Σ_{i≠o} σ(p_i - p_o)·g_i).

    A slot's map is carved out where a higher-priority slot's map is; ``priority`` None returns the
    maps unchanged.
    """
    if priority is None:
        return maps
    b, o = maps.shape[:2]
    if priority.shape != (b, o):
        raise ValueError(f"prioritize: expected priorities ({b}, {o}), received {tuple(priority.shape)}")
    weights = torch.sigmoid(priority[:, None, :] - priority[:, :, None])  # [b, o, i] = σ(p_i - p_o)
    weights = weights * (1 - torch.eye(o, device=maps.device, dtype=weights.dtype))
    return torch.relu(maps - torch.einsum("boi,bihw->bohw", weights.to(maps.dtype), maps))


def others_sum(maps: torch.Tensor) -> torch.Tensor:
    """(B, O, H, W) -> for every slot the sum of the OTHER slots' maps."""
    return maps.sum(dim=1, keepdim=True) - maps
