"""Single-object crops for decoder and encoder pretraining (§19.3): one (frame, instance) per item."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .augment import bbox_of, bbox_scale_crop_box, crop, resize
from .common import depth_tensor, rgb_tensor


class ObjectCropsView:
    """Items are every (frame t, instance id) with at least one visible pixel.

    ``make`` returns ``rgb`` (3, h, w) float32 in [0, 1], ``depth`` (1, h, w) float32 in [0, 1]
    (-1 everywhere without depth), ``mask`` (1, h, w) float32 in [0, 1] (the stored soft/amodal
    mask when the source has one, else the binary segmentation of the instance), ``use_depth``.
    With ``augment``: BBoxScaleCrop around the mask's bbox (mask > 0.75), then a flip with p = 0.5.
    """

    name = "object_crops"

    def __init__(self, size: tuple[int, int], augment: bool = True):
        self.size, self.augment = tuple(size), augment

    def plan(self, meta: dict[str, Any], rng: np.random.Generator | None, training: bool) -> list[Any]:
        return [(t, i) for t, ids in enumerate(meta["frame_instances"]) for i in ids]

    def make(self, video: dict[str, Any], item: Any, rng: np.random.Generator, training: bool) -> dict[str, Any]:
        t, iid = item
        frames = np.array([t])
        rgb = rgb_tensor(video["rgb"][t:t + 1])[0]
        depth = depth_tensor(video, frames)[0]
        visible = video["segmentation"][t] == iid
        masks = video["instance_masks"]
        if masks is not None and iid <= masks.shape[1]:
            mask = masks[t, iid - 1].astype(np.float32) / np.float32(255.0)
        else:
            mask = visible.astype(np.float32)
        x = torch.cat([rgb, depth, torch.from_numpy(mask)[None]])
        if self.augment:
            bbox = bbox_of(mask) or bbox_of(visible.astype(np.float32), 0.5)
            x = crop(x, bbox_scale_crop_box(rng, x.shape[-2:], self.size, bbox))
            x = resize(x, self.size)
            if rng.random() < 0.5:
                x = x.flip(-1)
        else:
            x = resize(x, self.size)
        return {"rgb": x[:3].contiguous(), "depth": x[3:4].contiguous(), "mask": x[4:5].contiguous(),
                "use_depth": torch.tensor(video["depth"] is not None), "frame": torch.tensor(t),
                "instance": torch.tensor(iid)}

    def dummy(self, meta: dict[str, Any]) -> dict[str, Any]:
        h, w = self.size
        return {"rgb": torch.zeros(3, h, w), "depth": torch.zeros(1, h, w), "mask": torch.zeros(1, h, w),
                "use_depth": torch.tensor(False), "frame": torch.tensor(-1), "instance": torch.tensor(0)}
