"""Source/target frame pairs of one video for the background module (§19.4)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .augment import crop, resize, scale_crop_box
from .common import depth_tensor, rgb_tensor, seg_tensor


class FramePairsView:
    """Items are the source frames of a video (every frame once per visit); the target is the same
    frame (``time_std_dev`` = 0), uniform over the video (< 0, every upstream config) or Gaussian
    around the source (> 0). Both frames get the same ScaleCrop and flip.

    ``make`` returns ``{source,target}_{rgb,depth,fg}`` ((3|1, h, w) float32; depth in [0, 1] or -1;
    fg = segmentation > 0), ``dt`` (target - source, 0 for a static camera, as upstream),
    ``use_depth`` and ``use_fg`` (the video has instances).
    """

    name = "frame_pairs"

    def __init__(self, size: tuple[int, int] | None = None, augment: bool = True, time_std_dev: float = -1.0):
        self.size, self.augment, self.time_std_dev = size and tuple(size), augment, time_std_dev

    def plan(self, meta: dict[str, Any], rng: np.random.Generator | None, training: bool) -> list[Any]:
        return list(range(meta["num_frames"]))

    def target(self, src: int, n: int, rng: np.random.Generator) -> int:
        if self.time_std_dev == 0:
            return src
        if self.time_std_dev < 0:
            return int(rng.integers(n))
        return int(np.clip(round(src + rng.normal(0.0, self.time_std_dev)), 0, n - 1))

    def make(self, video: dict[str, Any], item: Any, rng: np.random.Generator, training: bool) -> dict[str, Any]:
        meta = video["meta"]
        src, tgt = item, self.target(item, meta["num_frames"], rng)
        frames = np.array([src, tgt])
        hw = (meta["height"], meta["width"])
        size = self.size or hw
        x = torch.cat([rgb_tensor(video["rgb"][frames]), depth_tensor(video, frames),
                       (seg_tensor(video, frames) > 0).float()], 1)
        if self.augment:
            x = crop(x, scale_crop_box(rng, hw, size))
        x = resize(x, size)
        if self.augment and rng.random() < 0.5:
            x = x.flip(-1)
        out = {}
        for i, name in enumerate(("source", "target")):
            out[f"{name}_rgb"], out[f"{name}_depth"], out[f"{name}_fg"] = (
                x[i, :3].contiguous(), x[i, 3:4].contiguous(), x[i, 4:5].contiguous())
        out["dt"] = torch.tensor(0.0 if meta["static_camera"] else float(tgt - src))
        out["use_depth"] = torch.tensor(video["depth"] is not None)
        out["use_fg"] = torch.tensor(meta["num_instances"] > 0)
        out["frames"] = torch.tensor([src, tgt])
        return out

    def dummy(self, meta: dict[str, Any]) -> dict[str, Any]:
        h, w = self.size or (meta["height"], meta["width"])
        out = {f"{n}_{k}": torch.zeros(c, h, w) for n in ("source", "target") for k, c in
               (("rgb", 3), ("depth", 1), ("fg", 1))}
        out.update(dt=torch.tensor(0.0), use_depth=torch.tensor(False), use_fg=torch.tensor(False),
                   frames=torch.tensor([-1, -1]))
        return out
