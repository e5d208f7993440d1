"""Frames with all their instance masks, for the position proposal (§19.4, §17.6)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .augment import crop, resize, scale_crop_box
from .common import depth_tensor, instance_masks_tensor, rgb_tensor


def sort_by_area(masks: torch.Tensor) -> torch.Tensor:
    """(K, H, W) masks in [0, 1] (uint8/255), largest pixel sum first; equal sums in reverse index order,
    as upstream's reversed ascending argsort. Sums are taken over the uint8 values, exactly."""
    sums = (masks * 255).round().to(torch.int64).sum((1, 2)).numpy()
    order = np.argsort(sums, kind="stable")[::-1].copy()
    return masks[torch.from_numpy(order)]


class ProposalFramesView:
    """Items are the frames of a video. ``make`` returns ``rgb`` (3, h, w) in [0, 1], ``depth`` (1, h, w)
    in [0, 1] (-1 without depth), ``masks`` (num_masks, h, w) in [0, 1]: every instance's mask (the
    stored soft mask, else the binary segmentation) sorted by area, largest first, before augmentation;
    after ScaleCrop and flip cut to the first ``num_masks`` or padded with zeros; plus ``use_depth``,
    ``frame``, and ``num_instances`` (visible instances of the frame, before the cut).
    """

    name = "proposal_frames"

    def __init__(self, num_masks: int, size: tuple[int, int] | None = None, augment: bool = True):
        self.num_masks, self.size, self.augment = int(num_masks), size and tuple(size), augment

    def plan(self, meta: dict[str, Any], rng: np.random.Generator | None, training: bool) -> list[Any]:
        return list(range(meta["num_frames"]))

    def make(self, video: dict[str, Any], item: Any, rng: np.random.Generator, training: bool) -> dict[str, Any]:
        meta = video["meta"]
        frames = np.array([item])
        hw = (meta["height"], meta["width"])
        size = self.size or hw
        count = max(meta["num_instances"], meta.get("num_instance_masks", 0))
        masks = sort_by_area(instance_masks_tensor(video, frames, count)[0])
        x = torch.cat([rgb_tensor(video["rgb"][frames])[0], depth_tensor(video, frames)[0], masks])
        if self.augment:
            x = crop(x, scale_crop_box(rng, hw, size))
        x = resize(x, size)
        if self.augment and rng.random() < 0.5:
            x = x.flip(-1)
        out = torch.zeros((self.num_masks, *size))
        kept = min(count, self.num_masks)
        out[:kept] = x[4:4 + kept]
        return {"rgb": x[:3].contiguous(), "depth": x[3:4].contiguous(), "masks": out,
                "use_depth": torch.tensor(video["depth"] is not None), "frame": torch.tensor(item),
                "num_instances": torch.tensor(len(meta["frame_instances"][item]))}

    def dummy(self, meta: dict[str, Any]) -> dict[str, Any]:
        h, w = self.size or (meta["height"], meta["width"])
        return {"rgb": torch.zeros(3, h, w), "depth": torch.zeros(1, h, w), "masks": torch.zeros(self.num_masks, h, w),
                "use_depth": torch.tensor(False), "frame": torch.tensor(-1), "num_instances": torch.tensor(0)}
