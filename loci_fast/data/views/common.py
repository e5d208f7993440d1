"""Shared conversions from decoded numpy videos to float tensors."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def rgb_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float().div_(255.0)


def depth_tensor(video: dict[str, Any], frames: np.ndarray) -> torch.Tensor:
    """(T, 1, H, W) float32 depth in [0, 1] as the model consumes it, or -1 everywhere without depth.

    Metric depth (``depth_unit`` "m") is divided by ``depth_max`` (the far plane the generator
    quantised over, 32 m for ``synth``); upstream-converted depth is already depth*255/255 in [0, 1].
    """
    meta = video["meta"]
    t, h, w = len(frames), meta["height"], meta["width"]
    if video["depth"] is None:
        return torch.full((t, 1, h, w), -1.0)
    d = torch.from_numpy(np.ascontiguousarray(video["depth"][frames]))[:, None]
    if meta["depth_unit"] == "m":
        d = d / float(meta["depth_max"])
    return d.clamp_(0.0, 1.0)


def instance_masks_tensor(video: dict[str, Any], frames: np.ndarray, num: int) -> torch.Tensor:
    """(T, num, H, W) float32 soft masks in [0, 1]: channel m is instance id m + 1.

    From the stored soft/amodal masks when present, else one-hot from the segmentation; ids above
    ``num`` are dropped, missing channels are zero.
    """
    meta = video["meta"]
    t, h, w = len(frames), meta["height"], meta["width"]
    out = torch.zeros((t, num, h, w))
    if video["instance_masks"] is not None:
        m = video["instance_masks"][frames][:, :num]
        out[:, : m.shape[1]] = torch.from_numpy(np.ascontiguousarray(m)).float().div_(255.0)
    else:
        seg = torch.from_numpy(video["segmentation"][frames].astype(np.int64))
        ids = torch.arange(1, num + 1).view(1, num, 1, 1)
        out = (seg[:, None] == ids).float()
    return out


def seg_tensor(video: dict[str, Any], frames: np.ndarray) -> torch.Tensor:
    """(T, 1, H, W) int64 ids."""
    return torch.from_numpy(video["segmentation"][frames].astype(np.int64))[:, None]
