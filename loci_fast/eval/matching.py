"""Matched-object metrics from shared counts: upstream's Hungarian mIoU / mF1, and mBO."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .conventions import check_convention
from .counts import Counts, counts


class MatchedIoU(NamedTuple):
    """Per sample (...,) float64: sums of matched IoU and F1 over active slots, and the GT count.

    A dataset's mIoU is the pooled ratio ``iou_sum.sum() / num_objects.sum()`` (upstream's
    ``val_mean_reconstruction_IoU`` over ``..._IoU_sum``); :meth:`miou` gives the per-sample ratio.
    """

    iou_sum: torch.Tensor
    f1_sum: torch.Tensor
    num_objects: torch.Tensor

    def pooled(self) -> tuple[float, float]:
        """(mIoU, mF1) pooled over every sample, as upstream's tables report them."""
        n = float(self.num_objects.sum())
        return (float(self.iou_sum.sum()) / n, float(self.f1_sum.sum()) / n) if n else (float("nan"),) * 2

    def miou(self) -> torch.Tensor:
        """Per-sample mIoU (NaN for a sample without GT objects)."""
        return self.iou_sum / self.num_objects


def pair_scores(c: Counts, convention: str) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and F1 (Dice) of every (slot, GT mask) pair, each (..., N, M) float64.

    Union = |P| + |G| − |P ∩ G| (for binary masks upstream's Σ clamp(P + G, 0, 1)). ``upstream``
    adds 1e-6 to both denominators; ``standard`` scores an empty pair 0.
    """
    inter = c.joint.transpose(-1, -2)
    size = c.pred[..., :, None] + c.gt[..., None, :]
    if convention == "upstream":
        return inter / (size - inter + 1e-6), 2 * inter / (size + 1e-6)
    return inter / (size - inter).clamp_min(1), 2 * inter / size.clamp_min(1)


def assign(scores: torch.Tensor) -> torch.Tensor:
    """Hungarian assignment maximising ``scores`` (S, N, M) per sample (scipy, on the CPU).

    Returns (S, N, M) bool: the chosen pairs, min(N, M) per sample.
    """
    from scipy.optimize import linear_sum_assignment

    host = scores.detach().cpu().numpy()
    chosen = np.zeros(host.shape, dtype=bool)
    for s in range(host.shape[0]):
        rows, cols = linear_sum_assignment(-host[s])
        chosen[s, rows, cols] = True
    return torch.from_numpy(chosen).to(scores.device)


def hungarian_from_counts(c: Counts, *, convention: str = "standard") -> MatchedIoU:
    """:func:`hungarian_miou` from the counts of thresholded masks (leading dims any)."""
    check_convention(convention)
    iou, f1 = pair_scores(c, convention)
    lead = iou.shape[:-2]
    chosen = assign(iou.reshape(-1, *iou.shape[-2:])).reshape(iou.shape)
    # Only active slots score (an inactive slot's IoU is 0 anyway; kept for upstream's exact sum).
    keep = chosen & c.active_pred[..., :, None]
    iou_sum = (iou * keep).flatten(-2).sum(-1)
    f1_sum = (f1 * keep).flatten(-2).sum(-1)
    return MatchedIoU(iou_sum.reshape(lead), f1_sum.reshape(lead), c.active_gt.sum(-1).to(torch.float64))


def hungarian_miou(slot_masks: torch.Tensor, instance_masks: torch.Tensor, *, threshold: float = 0.8,
                   convention: str = "standard") -> MatchedIoU:
    """Upstream's matched mIoU / mF1 (§18.1) of slot_masks (B, N, H, W) against instance_masks (B, M, H, W).

    Both are binarised at > ``threshold``. Per sample: IoU of every (slot, GT) pair; the Hungarian
    assignment maximising the summed IoU (every slot gets a distinct GT mask, possibly an empty one,
    when N <= M); the matched IoU and F1 of active slots (any pixel on) summed; and the number of
    non-empty GT masks. Unmatched GT objects count 0, spurious slots are not penalised. A video's
    frames are separate samples: fold them into the batch, (B·T, N, H, W).
    """
    return hungarian_from_counts(counts(slot_masks > threshold, instance_masks > threshold),
                                 convention=convention)


class BestOverlap(NamedTuple):
    """Per sample (...,) float64: the sum over non-empty GT masks of their best IoU, and their count."""

    bo_sum: torch.Tensor
    num_objects: torch.Tensor

    def mbo(self) -> torch.Tensor:
        """Per-sample mBO (NaN without GT objects); a dataset's mBO is the mean over samples."""
        return self.bo_sum / self.num_objects


def mbo_from_counts(c: Counts) -> BestOverlap:
    """mBO (OCLF's mean best overlap) from counts: each GT mask's highest IoU with any predicted mask."""
    iou, _ = pair_scores(c, "standard")
    best = iou.amax(-2) if iou.shape[-2] else torch.zeros_like(c.gt)
    active = c.active_gt
    return BestOverlap((best * active).sum(-1), active.sum(-1).to(torch.float64))


def mbo(pred_masks: torch.Tensor, gt_masks: torch.Tensor) -> BestOverlap:
    """mBO of binary pred_masks (B, N, H, W) against gt_masks (B, M, H, W) (objects, no background)."""
    return mbo_from_counts(counts(pred_masks, gt_masks))
