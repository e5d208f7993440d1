"""Picture-making helpers shared by the Loci-s and CATER views: colours, overlays, Gaussians, canvases.

Every image here is a float tensor in [0, 1], channels in RGB order (the CATER loader's BGR frames
are flipped before they get here), so what is written to disk has correct colours — upstream writes
RGB arrays through OpenCV, which reads them as BGR (reference loci-segmented.md §18.5).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from loci_fast import kernels as K

from .grid import palette

#: luminance weights of (R, G, B)
LUMA = (0.299, 0.587, 0.114)
CANVAS_GREY = 0.2  # upstream's canvas colour


def as_rgb(x: torch.Tensor) -> torch.Tensor:
    """(B, 1 or 3, H, W) -> (B, 3, H, W) float, a single channel repeated as grey."""
    x = x.detach().float()
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """(B, C, h, w) -> (B, C, H, W) in [0, 1]: bicubic with aligned corners (upstream's ``preprocess``),
    or ``bilinear`` / ``nearest``; clipped, as OpenCV saturates on writing."""
    x = x.detach().float()
    if tuple(x.shape[-2:]) != tuple(size):
        kwargs = {} if mode == "nearest" else {"align_corners": True}
        x = F.interpolate(x, size=tuple(size), mode=mode, **kwargs)
    return x.clamp(0, 1)


def colour_masks(masks: torch.Tensor) -> torch.Tensor:
    """Soft masks (B, N, H, W) -> (B, 3, H, W): each mask times its slot colour, summed."""
    colours = palette(masks.shape[1]).to(masks.device, torch.float32)
    return torch.einsum("bnhw,nc->bchw", masks.detach().float(), colours)


def tint(mask: torch.Tensor, slot: int, num_colours: int) -> torch.Tensor:
    """One slot's mask (B, 1, H, W) shown in that slot's colour: (B, 3, H, W)."""
    colour = palette(num_colours)[slot].to(mask.device).view(1, 3, 1, 1)
    return mask.detach().float() * colour


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) grey."""
    w = torch.tensor(LUMA, device=rgb.device, dtype=torch.float32).view(1, 3, 1, 1)
    return (rgb.detach().float() * w).sum(1, keepdim=True)


def highlight(rgb: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The frame in grey, darkened to a third under the slot masks (B, N, H, W) and overlaid with
    two thirds of their colours: grey·(1 − Σm) + grey·Σm/3 + ⅔·colour(m)."""
    grey = luminance(rgb) if rgb.shape[1] == 3 else rgb.detach().float()
    cover = masks.detach().float().sum(1, keepdim=True)
    return (grey * (1 - cover) + grey * cover / 3 + colour_masks(masks) * (2 / 3)).clamp(0, 1)


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Scaled to [0, 1] over each sample's whole image (upstream's ``normalize=True``)."""
    x = x.detach().float()
    flat = x.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    return (x - lo) / (hi - lo).clamp_min(1e-8)


def slot_gaussians(position: torch.Tensor, num_slots: int, size: tuple[int, int],
                   latent_size: tuple[int, int]) -> torch.Tensor:
    """Loci-s positions (B, O·4) (x, y, z, std) -> (B, O+1, H, W) Gaussians at ``size``, the last for
    the background at (0, 0, 0, 1); the std is clamped to [1/min(latent_size), 1] first and then by
    the Gaussian's own range (≤ 0.5), the position to ±3.5 (reference §18.5)."""
    b = position.shape[0]
    pos = position.detach().float().reshape(b, num_slots, 4)
    bg = pos.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(b, 1, 4)
    pos = torch.cat([pos, bg], 1).reshape(-1, 4)
    pos = torch.cat([pos[:, :3], pos[:, 3:].clamp(1 / min(latent_size), 1)], 1)
    maps = K.gaussian_maps(pos, tuple(size), position_limit=3.5)
    return maps.reshape(b, num_slots + 1, *size)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (1, 3, H, W) float [0, 1] -> (H, W, 3) uint8."""
    img = img.detach().float()
    if img.dim() == 4:
        img = img[0]
    return (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


class Canvas:
    """A grey (3, H, W) picture that panels are pasted into at pixel offsets."""

    def __init__(self, height: int, width: int, fill: float = CANVAS_GREY) -> None:
        self.image = torch.full((3, height, width), float(fill))

    def paste(self, panel: torch.Tensor, top: int, left: int) -> None:
        """``panel`` (3, h, w) or (1, 3, h, w) with its top-left corner at (top, left)."""
        p = panel.detach().float().cpu()
        if p.dim() == 4:
            p = p[0]
        h, w = p.shape[-2:]
        self.image[:, top:top + h, left:left + w] = p.clamp(0, 1)

    def uint8(self) -> np.ndarray:
        return to_uint8(self.image)


def ceil_div(a: int, b: int) -> int:
    return int(math.ceil(a / b))
