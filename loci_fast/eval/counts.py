"""Contingency counts of two stacks of binary masks: the one reduction every metric shares.

A frame's masks are (B, N, H, W) (any trailing pixel dims work: (B, N, P) or a video as
(B, N, T, H, W)); a batch of videos is (B, T, N, H, W) with a leading time axis, counted per frame
by :func:`video_counts` and summed over time by :meth:`Counts.over_time` (upstream instead
concatenates the frames along the width, which gives the same counts).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# float32 sums of 0/1 values are exact below 2**24; past that the counts are taken in float64.
_EXACT_F32 = 2 ** 24


@dataclass(frozen=True)
class Counts:
    """Pixel counts of GT masks (M) against predicted masks (N), per sample, in float64.

    ``joint`` (..., M, N): pixels in GT mask m and predicted mask n; ``gt`` (..., M) and ``pred``
    (..., N): pixels in each mask; ``pixels`` (...,): pixels per sample (all of the image, on or off).
    The leading dims are (B,) for frames or (B, T) for :func:`video_counts`.
    """

    joint: torch.Tensor
    gt: torch.Tensor
    pred: torch.Tensor
    pixels: torch.Tensor

    def over_time(self) -> "Counts":
        """Counts of whole videos, (B, T, ...) -> (B, ...): a video is one sample of T·H·W pixels."""
        return Counts(self.joint.sum(1), self.gt.sum(1), self.pred.sum(1), self.pixels.sum(1))

    def flat(self) -> "Counts":
        """(B, T, ...) -> (B·T, ...), frames as samples."""
        return Counts(self.joint.flatten(0, 1), self.gt.flatten(0, 1), self.pred.flatten(0, 1),
                      self.pixels.flatten(0, 1))

    @property
    def active_pred(self) -> torch.Tensor:
        """(..., N) bool: predicted masks with any pixel on."""
        return self.pred > 0

    @property
    def active_gt(self) -> torch.Tensor:
        """(..., M) bool: non-empty GT masks."""
        return self.gt > 0


def _check(pred: torch.Tensor, gt: torch.Tensor, lead: int) -> None:
    if pred.dim() < lead + 2 or gt.dim() < lead + 2:
        raise ValueError(f"masks need shape {'(B, T, N, H, W)' if lead == 2 else '(B, N, H, W)'}; got "
                         f"pred {tuple(pred.shape)}, gt {tuple(gt.shape)}")
    if pred.shape[:lead] != gt.shape[:lead] or pred.shape[lead + 1:] != gt.shape[lead + 1:]:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must agree in every dim but "
                         f"the mask dim {lead}")
    if pred.device != gt.device:
        raise ValueError(f"pred is on {pred.device}, gt on {gt.device}: move both to one device")


def counts(pred: torch.Tensor, gt: torch.Tensor) -> Counts:
    """Counts of pred (B, N, *pixels) against gt (B, M, *pixels), binary (0/1, bool or float) masks.

    One batched matmul over the pixels (exact: 0/1 products summed in float32 below 2**24 pixels
    per sample, float64 beyond). Soft masks give the sums of products, as upstream's loop does.
    """
    _check(pred, gt, 1)
    b, n, m = pred.shape[0], pred.shape[1], gt.shape[1]
    p = pred.reshape(b, n, -1)
    g = gt.reshape(b, m, -1)
    dtype = torch.float32 if p.shape[-1] < _EXACT_F32 else torch.float64
    if not p.dtype.is_floating_point or p.dtype in (torch.float16, torch.bfloat16):
        p = p.to(dtype)
    if not g.dtype.is_floating_point or g.dtype in (torch.float16, torch.bfloat16):
        g = g.to(dtype)
    p, g = p.to(torch.promote_types(p.dtype, g.dtype)), g.to(torch.promote_types(p.dtype, g.dtype))
    joint = torch.bmm(g, p.transpose(1, 2)).double()
    pixels = torch.full((b,), float(p.shape[-1]), dtype=torch.float64, device=p.device)
    return Counts(joint, g.sum(-1, dtype=torch.float64), p.sum(-1, dtype=torch.float64), pixels)


def video_counts(pred: torch.Tensor, gt: torch.Tensor) -> Counts:
    """Per-frame counts of videos: pred (B, T, N, H, W), gt (B, T, M, H, W) -> leading dims (B, T)."""
    _check(pred, gt, 2)
    b, t = pred.shape[:2]
    c = counts(pred.flatten(0, 1), gt.flatten(0, 1))
    return Counts(c.joint.unflatten(0, (b, t)), c.gt.unflatten(0, (b, t)), c.pred.unflatten(0, (b, t)),
                  c.pixels.unflatten(0, (b, t)))


def exclusive(masks: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Binary masks with every pixel in at most one mask along ``dim``: the first one on, as argmax.

    Returned unchanged (no copy) when no two masks overlap, the usual case (softmax masks above 0.5,
    segmentation ids).
    """
    on = masks > 0.5
    if on.numel() == 0 or int(on.sum(dim).amax()) <= 1:
        return masks
    # Keep a pixel in mask n only if no earlier mask has it.
    earlier = on.cumsum(dim) - on.to(torch.int64)
    return (on & (earlier == 0)).to(masks.dtype)
