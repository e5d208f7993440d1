"""Upstream's augmentations on (C, H, W) tensors: ScaleCrop, BBoxScaleCrop, horizontal flip, resize.

All channels of an item (rgb, depth, masks, ...) are stacked and cropped together so they stay
aligned; bilinear resampling as upstream (``align_corners=False``, no antialias), except integer
label maps, which go through ``nearest`` separately.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MAX_UPSCALE = 1.15


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize (C, H, W) or (N, C, H, W) to ``size``; a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    batched = x if x.dim() == 4 else x[None]
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    # Integer label maps go through float (exact below 2**24) since `nearest` has no int64 kernel.
    out = F.interpolate(batched.float(), size=size, mode=mode, **kwargs)
    if not x.is_floating_point():
        out = out.round().to(x.dtype)
    return out if x.dim() == 4 else out[0]


def _crop_box(rng: np.random.Generator, src: tuple[int, int], size: tuple[int, int],
              min_scale: float) -> tuple[int, int]:
    """Crop height and width: relative scale u ~ U(min_scale, 1) of the source, with the target aspect."""
    H, W = src
    u = rng.uniform(min(min_scale, 1.0), 1.0)
    ch = max(1, int(round(u * H)))
    cw = max(1, int(round(ch * size[1] / size[0])))
    if cw > W:
        cw, ch = W, max(1, int(round(W * size[0] / size[1])))
    return min(ch, H), cw


def scale_crop_box(rng: np.random.Generator, src: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """ScaleCrop (§19.2): top, left, height, width of a random crop of up to 1.15x zoom."""
    H, W = src
    ch, cw = _crop_box(rng, src, size, max(size[0] / H, size[1] / W) / MAX_UPSCALE)
    top = int(rng.integers(0, H - ch + 1))
    left = int(rng.integers(0, W - cw + 1))
    return top, left, ch, cw


def bbox_scale_crop_box(rng: np.random.Generator, src: tuple[int, int], size: tuple[int, int],
                        bbox: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """BBoxScaleCrop (§19.3): a crop at least the bbox plus 16 px (and >= size/1.15) that contains
    the bbox (x0, y0, x1, y1 inclusive) wherever it fits."""
    H, W = src
    x0, y0, x1, y1 = bbox
    extent = max(x1 - x0 + 1, y1 - y0 + 1)
    lo = max(size[0] / MAX_UPSCALE, min(extent + 16, H)) / H
    ch, cw = _crop_box(rng, src, size, lo)
    top = int(rng.integers(max(0, y1 + 1 - ch), max(0, min(y0, H - ch)) + 1)) if ch < H else 0
    left = int(rng.integers(max(0, x1 + 1 - cw), max(0, min(x0, W - cw)) + 1)) if cw < W else 0
    return top, left, ch, cw


def crop(x: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    top, left, h, w = box
    return x[..., top:top + h, left:left + w]


def bbox_of(mask: np.ndarray, threshold: float = 0.75) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of ``mask > threshold`` (mask in [0, 1]), or None when empty."""
    ys, xs = np.nonzero(mask > threshold)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
