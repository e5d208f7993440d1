"""Object counting accuracy and foreground IoU / F1."""
from __future__ import annotations

import torch

from .conventions import check_convention
from .counts import Counts


def counting_accuracy_from_counts(c: Counts) -> torch.Tensor:
    """1.0 where the number of active predicted masks equals the number of non-empty GT masks, (...,)."""
    return (c.active_pred.sum(-1) == c.active_gt.sum(-1)).to(torch.float64)


def counting_accuracy(slot_masks: torch.Tensor, gt_masks: torch.Tensor, *, threshold: float = 0.8) -> torch.Tensor:
    """Upstream's OCA of slot_masks (B, N, H, W) against gt_masks (B, M, H, W), both binarised at > threshold."""
    slots = (slot_masks > threshold).flatten(2).any(-1).sum(-1)
    objects = (gt_masks > threshold).flatten(2).any(-1).sum(-1)
    return (slots == objects).to(torch.float64)


def foreground_iou_f1(fg_pred: torch.Tensor, fg_gt: torch.Tensor, *,
                      convention: str = "standard") -> tuple[torch.Tensor, torch.Tensor]:
    """Soft foreground IoU and F1 per sample of fg_pred (B, 1, H, W) in [0, 1] (1 − background mask)
    against the binary fg_gt (B, 1, H, W); each (B,) float64.

    IoU = Σ p·g / Σ max(p, g), F1 = 2 Σ p·g / Σ (p + g); ``upstream`` adds 1e-6 to both
    denominators, ``standard`` scores 1 where both are empty.
    """
    check_convention(convention)
    p, g = fg_pred.flatten(1).double(), fg_gt.flatten(1).double()
    inter = (p * g).sum(-1)
    union = torch.maximum(p, g).sum(-1)
    total = (p + g).sum(-1)
    if convention == "upstream":
        return inter / (union + 1e-6), 2 * inter / (total + 1e-6)
    empty = union == 0
    one = torch.ones_like(inter)
    return (torch.where(empty, one, inter / union.clamp_min(1e-300)),
            torch.where(empty, one, 2 * inter / total.clamp_min(1e-300)))
