"""Video windows for Loci (§19.2) and their truncated-BPTT chunk schedule (§17.5)."""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from .augment import crop, resize, scale_crop_box
from .common import depth_tensor, instance_masks_tensor, rgb_tensor, seg_tensor


class VideoChunksView:
    """Items are non-overlapping windows of ``sequence_len`` frames.

    Training: windows start at a random offset in [0, min(S, L - S)) (0 when L == S); evaluation:
    at 0. ``make`` returns ``rgb`` (S, 3, h, w) float32 [0, 1], ``depth`` (S, 1, h, w) float32 in
    [0, 1] or -1, ``segmentation`` (S, h, w) int64 ids, ``fg`` (S, 1, h, w) float32 {0, 1},
    ``time_steps`` (S,) int64, ``start`` (first frame of the window), ``use_depth``, and with ``with_masks`` ``instance_masks``
    (S, max_instances, h, w) float32 [0, 1] (channel m = id m + 1). With ``augment``: one ScaleCrop
    and one flip (p = 0.5) per window; otherwise a bilinear resize when ``size`` differs.
    """

    name = "video_chunks"

    def __init__(self, sequence_len: int, size: tuple[int, int] | None = None, augment: bool = True,
                 with_masks: bool = False, max_instances: int = 32):
        if sequence_len < 1:
            raise ValueError(f"sequence_len must be at least 1, got {sequence_len}")
        self.sequence_len, self.size, self.augment = sequence_len, size and tuple(size), augment
        self.with_masks, self.max_instances = with_masks, max_instances

    def plan(self, meta: dict[str, Any], rng: np.random.Generator | None, training: bool) -> list[Any]:
        L, S = meta["num_frames"], self.sequence_len
        if L < S:
            return []
        offset = int(rng.integers(0, min(S, L - S))) if training and L > S else 0
        return list(range(offset, L - S + 1, S))

    def make(self, video: dict[str, Any], item: Any, rng: np.random.Generator, training: bool) -> dict[str, Any]:
        S = self.sequence_len
        frames = np.arange(item, item + S)
        meta = video["meta"]
        src = (meta["height"], meta["width"])
        size = self.size or src
        parts = [rgb_tensor(video["rgb"][frames]), depth_tensor(video, frames)]
        if self.with_masks:
            parts.append(instance_masks_tensor(video, frames, self.max_instances))
        x, seg = torch.cat(parts, 1), seg_tensor(video, frames)
        if self.augment:
            box = scale_crop_box(rng, src, size)
            x, seg = crop(x, box), crop(seg, box)
        x, seg = resize(x, size), resize(seg, size, mode="nearest")
        if self.augment and rng.random() < 0.5:
            x, seg = x.flip(-1), seg.flip(-1)
        out = {"rgb": x[:, :3].contiguous(), "depth": x[:, 3:4].contiguous(), "segmentation": seg[:, 0].contiguous(),
               "fg": (seg > 0).float(), "time_steps": torch.arange(S), "start": torch.tensor(item),
               "use_depth": torch.tensor(video["depth"] is not None)}
        if self.with_masks:
            out["instance_masks"] = x[:, 4:].contiguous()
        return out

    def dummy(self, meta: dict[str, Any]) -> dict[str, Any]:
        S = self.sequence_len
        h, w = self.size or (meta["height"], meta["width"])
        out = {"rgb": torch.zeros(S, 3, h, w), "depth": torch.zeros(S, 1, h, w),
               "segmentation": torch.zeros(S, h, w, dtype=torch.int64), "fg": torch.zeros(S, 1, h, w),
               "time_steps": torch.arange(S), "start": torch.tensor(-1), "use_depth": torch.tensor(False)}
        if self.with_masks:
            out["instance_masks"] = torch.zeros(S, self.max_instances, h, w)
        return out


def teacher_forcing_length(teacher_forcing: int, backprop_steps: int) -> int:
    """T_f = floor(tf / K) * K + 1 (11 for tf = 10, K = 2)."""
    return teacher_forcing // backprop_steps * backprop_steps + 1


def tbptt_chunks(batch: dict[str, Any], backprop_steps: int = 2, teacher_forcing: int = 10) -> Iterator[dict[str, Any]]:
    """Split a window batch (B, S, ...) into upstream's TBPTT batch sequence (§17.5).

    First floor(T_f / K) teacher-forcing chunks that repeat frame 0 with time stamps -T_f .. -1
    (the first has K + 1 stamps: [-11, -10, -9], then [-8, -7], ...), then S / K chunks of K frames
    with stamps [0, 1], [2, 3], ... Every chunk dict has the per-frame tensors sliced on dim 1,
    ``time_steps`` (k,) and ``reset`` (True on the group's first chunk: reset the model state).
    """
    K = backprop_steps
    S = batch["rgb"].shape[1]
    if S % K:
        raise ValueError(f"sequence_len {S} must be a multiple of backprop_steps {K}")
    tf = teacher_forcing_length(teacher_forcing, K)
    per_frame = [k for k, v in batch.items() if isinstance(v, torch.Tensor) and v.dim() >= 2
                 and v.shape[1] == S and k != "time_steps"]
    stamps = list(range(-tf, 0))
    groups = [stamps[: K + 1]] + [stamps[i:i + K] for i in range(K + 1, tf, K)] if tf > 1 else []
    groups += [list(range(s, s + K)) for s in range(0, S, K)]
    for n, ts in enumerate(groups):
        idx = torch.tensor([max(t, 0) for t in ts])
        chunk = {k: (v.index_select(1, idx) if k in per_frame else v) for k, v in batch.items()}
        chunk["time_steps"] = torch.tensor(ts)
        chunk["reset"] = n == 0
        yield chunk
