"""Adjusted Rand index of predicted against GT masks, per frame or per video, from shared counts."""
from __future__ import annotations

import torch

from .conventions import check_convention
from .counts import Counts, counts, exclusive, video_counts


def _pairs(x: torch.Tensor, dims: int) -> torch.Tensor:
    """Σ x(x−1) over the last ``dims`` dims (twice the pair count; the ½ cancels in the ARI)."""
    y = x * (x - 1)
    return y.flatten(-dims).sum(-1) if dims else y


def ari_upstream_from_counts(c: Counts) -> torch.Tensor:
    """Upstream's ARI (§18.1) from counts of (possibly overlapping) binary masks, (...,) float64.

    Row/column sums come from the contingency, the pixel total from the GT masks, so a GT pixel no
    prediction covers counts in the total only and predicted pixels outside every GT mask are ignored.
    Defined as 1 where the total has no pair or the denominator is 0.
    """
    pairs_joint = _pairs(c.joint, 2)
    pairs_gt = _pairs(c.joint.sum(-1), 1)
    pairs_pred = _pairs(c.joint.sum(-2), 1)
    pairs_all = _pairs(c.gt.sum(-1), 0)
    expected = pairs_gt * pairs_pred / pairs_all
    denom = 0.5 * (pairs_gt + pairs_pred) - expected
    score = (pairs_joint - expected) / denom
    return torch.where((pairs_all == 0) | (denom == 0), torch.ones_like(score), score)


def ari_standard_from_counts(c: Counts) -> torch.Tensor:
    """Textbook ARI over the pixels in some GT mask, from counts of *exclusive* masks, (...,) float64.

    The partitions: each evaluated pixel's GT mask, and its predicted mask or, for pixels no
    predicted mask covers, one extra "unassigned" cluster. Equals sklearn's ``adjusted_rand_score``
    (pair-confusion form), 1 where neither partition separates any pair differently.
    """
    none = c.gt - c.joint.sum(-1)  # GT pixels of each mask left unassigned
    n = c.gt.sum(-1)
    sq_joint = (c.joint ** 2).flatten(-2).sum(-1) + (none ** 2).sum(-1)
    sq_gt = (c.gt ** 2).sum(-1)
    sq_pred = (c.joint.sum(-2) ** 2).sum(-1) + none.sum(-1) ** 2
    # Ordered pairs (sklearn's pair confusion): together in both; together only in the prediction;
    # together only in the GT; apart in both.
    tp = sq_joint - n
    fp = sq_pred - sq_joint
    fn = sq_gt - sq_joint
    tn = n ** 2 - fp - fn - sq_joint
    denom = (tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)
    score = 2 * (tp * tn - fn * fp) / denom
    return torch.where((fn == 0) & (fp == 0), torch.ones_like(score), score)


def ari_from_counts(c: Counts, *, convention: str = "standard") -> torch.Tensor:
    """ARI per sample of ``c`` (from :func:`counts` on exclusive masks for ``standard``)."""
    check_convention(convention)
    return ari_upstream_from_counts(c) if convention == "upstream" else ari_standard_from_counts(c)


def ari(pred_masks: torch.Tensor, gt_masks: torch.Tensor, *, convention: str = "standard") -> torch.Tensor:
    """ARI of pred_masks (B, N, H, W) against gt_masks (B, M, H, W), binary; returns (B,) float64.

    A video is one sample: pass (B, N, T, H, W) (or frames folded into the width, (B, N, H, T·W), as
    upstream does); :func:`fg_ari` takes the (B, T, N, H, W) layout. FG-ARI: pass the object masks
    only as gt_masks. ``standard`` first makes overlapping masks exclusive (first mask on wins).
    """
    if check_convention(convention) == "standard":
        pred_masks, gt_masks = exclusive(pred_masks), exclusive(gt_masks)
    return ari_from_counts(counts(pred_masks, gt_masks), convention=convention)


def fg_ari(pred_masks: torch.Tensor, gt_masks: torch.Tensor, *, per: str = "video",
           convention: str = "standard") -> torch.Tensor:
    """FG-ARI of videos: pred_masks (B, T, N, H, W) slots, gt_masks (B, T, M, H, W) objects (no background).

    ``per="video"`` (B,): one partition over all T·H·W pixels, so slot identities must persist (the
    SAVi / VideoSAUR FG-ARI, and upstream's sequence FG-ARI); ``per="frame"`` (B, T).
    """
    if per not in ("video", "frame"):
        raise ValueError(f"per must be 'video' or 'frame', not {per!r}")
    if check_convention(convention) == "standard":
        pred_masks, gt_masks = exclusive(pred_masks, 2), exclusive(gt_masks, 2)
    c = video_counts(pred_masks, gt_masks)
    return ari_from_counts(c.over_time() if per == "video" else c, convention=convention)
