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

    def select(self, gt: slice = slice(None), pred: slice = slice(None)) -> "Counts":
        """Counts of a subset of the masks, e.g. objects without the background channel."""
        return Counts(self.joint[..., gt, pred], self.gt[..., gt], self.pred[..., pred], self.pixels)

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


def _with_ones_row(masks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(b, k, P) masks as (b, k + 1, P) in ``dtype`` with a last row of ones: its products are the
    other stack's per-mask pixel counts, so one matmul gives the joint counts and both marginals."""
    b, k, p = masks.shape
    out = torch.empty((b, k + 1, p), dtype=dtype, device=masks.device)
    out[:, :k].copy_(masks)
    out[:, k].fill_(1)
    return out


def _labels(on: torch.Tensor) -> torch.Tensor | None:
    """Per pixel 1 + the index of the one mask on, 0 where none is: bool (b, k, P) -> (b, P)
    integers; None when some pixel is in two masks."""
    b, k, p = on.shape
    # Same-dtype adds of the bool bytes: one cheap pass per mask (an argmax over masks is slow).
    ints = on.view(torch.uint8) if k < 255 else on.to(torch.int64)
    label = torch.zeros((b, p), dtype=ints.dtype, device=on.device)
    hits = torch.zeros_like(label)
    for i in range(k):
        hits.add_(ints[:, i])
        label.add_(ints[:, i], alpha=i + 1)
    if int(hits.amax()) > 1:
        return None
    return label


def _counts_from_labels(pred: torch.Tensor, gt: torch.Tensor, n: int, m: int) -> Counts:
    """Counts of exclusive masks from their label maps (b, P): one histogram of label pairs."""
    b, pixels = pred.shape
    offset = torch.arange(b, device=pred.device)[:, None] * ((m + 1) * (n + 1))
    key = gt.to(torch.int64) * (n + 1) + pred + offset
    table = torch.bincount(key.flatten(), minlength=b * (m + 1) * (n + 1))
    table = table.view(b, m + 1, n + 1).double()  # row / column 0: in no mask
    return Counts(table[:, 1:, 1:], table[:, 1:].sum(-1), table[:, :, 1:].sum(-2),
                  torch.full((b,), float(pixels), dtype=torch.float64, device=pred.device))


def counts(pred: torch.Tensor, gt: torch.Tensor) -> Counts:
    """Counts of pred (B, N, *pixels) against gt (B, M, *pixels), binary (0/1, bool or float) masks.

    Exact. Bool masks in which no pixel is in two masks (thresholded softmax masks, segmentations)
    are counted as a histogram of per-pixel label pairs; other masks by one batched matmul over the
    pixels (0/1 products summed in float32 below 2**24 pixels per sample, float64 beyond). Soft
    masks give the sums of products, as upstream's loop does.
    """
    _check(pred, gt, 1)
    b, n, m = pred.shape[0], pred.shape[1], gt.shape[1]
    p = pred.reshape(b, n, -1)
    g = gt.reshape(b, m, -1)
    if p.dtype == torch.bool and g.dtype == torch.bool and n and m:
        pl = _labels(p)
        gl = _labels(g) if pl is not None else None
        if gl is not None:
            return _counts_from_labels(pl, gl, n, m)
    dtype = torch.float32 if p.shape[-1] < _EXACT_F32 else torch.float64
    if pred.dtype == torch.float64 or gt.dtype == torch.float64:
        dtype = torch.float64
    table = torch.bmm(_with_ones_row(g, dtype), _with_ones_row(p, dtype).transpose(1, 2)).double()
    return Counts(table[:, :m, :n], table[:, :m, n], table[:, m, :n], table[:, m, n])


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
