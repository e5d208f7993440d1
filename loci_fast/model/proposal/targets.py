"""Inputs and regression targets of the proposal network (reference §13.2), all without gradients."""
from __future__ import annotations

import torch

from ..mask_center import MaskCenter

GT_THRESHOLD = 0.8  # GT masks are binarised at > 0.8


def coordinate_grid(h: int, w: int, *, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 1, h, w) maps gx[j] = 2j/(w-1) - 1 and gy[i] = 2i/(h-1) - 1."""
    gx = torch.arange(w, device=device).div(w - 1).mul(2).sub(1).to(dtype)
    gy = torch.arange(h, device=device).div(h - 1).mul(2).sub(1).to(dtype)
    return gx.view(1, 1, 1, w).expand(1, 1, h, w), gy.view(1, 1, h, 1).expand(1, 1, h, w)


def network_input(image: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    """[image·fg, gx·fg, gy·fg]: (B, 3 + 2, H, W) for rgb, (B, 1 + 2, H, W) for depth."""
    gx, gy = coordinate_grid(*image.shape[-2:], device=image.device, dtype=image.dtype)
    return torch.cat((image * fg, gx * fg, gy * fg), dim=1)


@torch.no_grad()
def mask_positions(masks: torch.Tensor, depth: torch.Tensor, center: MaskCenter, *,
                   with_std_z: bool) -> torch.Tensor:
    """Per-mask (x̄, ȳ, z, std[, std_z]) of binary masks (B, N, H, W); zero rows for empty masks.

    z = Σ D·m / (Σ m + 1e-8) with depth (B, 1, H, W); std = sqrt(area fraction) (MaskCenter);
    std_z = sqrt(Σ (D - z)²·m / (Σ m + 1e-8)). Returns (B, N, 5) or, without std_z, (B, N, 4).
    """
    b, n, h, w = masks.shape
    area = masks.sum((2, 3))
    z = (depth * masks).sum((2, 3)) / (area + 1e-8)
    xy, std = center(masks.reshape(b * n, 1, h, w))
    cols = [xy.view(b, n, 2), z[..., None], std.view(b, n, 1)]
    if with_std_z:
        cols.append((((depth - z[..., None, None]) ** 2 * masks).sum((2, 3)) / (area + 1e-8)).sqrt()[..., None])
    valid = (masks.amax((2, 3)) > 0).to(masks.dtype)
    return torch.cat(cols, dim=-1) * valid[..., None]


@torch.no_grad()
def position_target(masks: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, 5, H, W): per pixel the maximum over the N masks of mask_n · position_n.

    Masks not covering a pixel contribute 0 to the maximum, so negative coordinates become 0
    wherever another mask channel is empty (quirk §24.20, reproduced). A running maximum over the
    masks keeps the memory at one (B, 5, H, W) map instead of N.
    """
    target = masks[:, 0, None] * positions[:, 0, :, None, None]
    for n in range(1, masks.shape[1]):
        target = torch.maximum(target, masks[:, n, None] * positions[:, n, :, None, None])
    return target


@torch.no_grad()
def depth_channel_mask(depth: torch.Tensor) -> torch.Tensor:
    """(B, 5, 1, 1) = (1, 1, d, 1, d) with d = [the sample has any depth > 0]: the RGB variant's loss
    leaves z and std_z out for samples without depth."""
    d = (depth > 0).flatten(1).any(1).to(depth.dtype).view(-1, 1, 1, 1)
    one = torch.ones_like(d)
    return torch.cat((one, one, d, one, d), dim=1)
