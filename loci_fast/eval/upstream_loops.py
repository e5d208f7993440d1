"""Plain-Python re-implementations of upstream's metric loops (reference §18.1), the oracle for the
``upstream`` convention and the baseline of ``loci-fast bench --eval``.

Written from reading upstream's validation step: the same loops, orders and dtypes (whatever the
inputs carry), one sample or video at a time where upstream runs batch 1. Slow by design; never
used by evaluation itself.
"""
from __future__ import annotations

import numpy as np
import torch


def _pair_sum(x: torch.Tensor) -> torch.Tensor:
    """Σ x(x−1) over every dim but the first (none for a 1-d tensor)."""
    y = x * (x - 1)
    return y.reshape(y.shape[0], -1).sum(1) if y.dim() > 1 else y


def ari_loops(gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Upstream's ARI: gt (B, M, H, W), pred (B, N, H, W) -> (B,), contingency by a triple loop."""
    b_, m_, n_ = gt.shape[0], gt.shape[1], pred.shape[1]
    table = torch.zeros((b_, m_, n_), dtype=gt.dtype, device=gt.device)
    for b in range(b_):
        for m in range(m_):
            for n in range(n_):
                table[b, m, n] = (gt[b, m] * pred[b, n]).sum()
    total = gt.reshape(b_, -1).sum(1)
    pairs_joint = _pair_sum(table)
    pairs_a = _pair_sum(table.sum(1))
    pairs_b = _pair_sum(table.sum(2))
    pairs_total = _pair_sum(total)
    expected = pairs_a * pairs_b / pairs_total
    denom = 0.5 * (pairs_a + pairs_b) - expected
    score = (pairs_joint - expected) / denom
    bad = (pairs_total == 0) | (denom == 0)
    return torch.where(bad, torch.ones_like(score), score)


def seq_ari_loops(gt_frames: list[torch.Tensor], pred_frames: list[torch.Tensor]) -> torch.Tensor:
    """Upstream's sequence ARI: frames (B, ·, H, W) concatenated along the width, then :func:`ari_loops`."""
    return ari_loops(torch.cat(gt_frames, dim=-1), torch.cat(pred_frames, dim=-1))


def miou_loops(slots: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Upstream's matched IoU / F1 of binary slots (B, N, H, W) against binary targets (B, M, H, W).

    Returns per sample (matched IoU sum over active slots, matched F1 sum, non-empty GT count), each (B,).
    """
    from scipy.optimize import linear_sum_assignment

    active = slots.amax(dim=(-1, -2))
    present = targets.amax(dim=(-1, -2))
    inter = (slots.unsqueeze(2) * targets.unsqueeze(1)).sum(dim=(-1, -2))
    union = (slots.unsqueeze(2) + targets.unsqueeze(1)).clamp_(0, 1).sum(dim=(-1, -2))
    iou = inter / (union + 1e-6)
    f1 = 2 * inter / ((slots.unsqueeze(2) + targets.unsqueeze(1)).sum(dim=(-1, -2)) + 1e-6)
    iou_sum, f1_sum, objects = [], [], []
    for b in range(slots.shape[0]):
        rows, cols = linear_sum_assignment(-iou[b].cpu().numpy())
        iou_sum.append(torch.sum(iou[b][rows, cols] * active[b, rows]))
        f1_sum.append(torch.sum(f1[b][rows, cols] * active[b, rows]))
        objects.append(torch.sum(present[b]))
    return torch.stack(iou_sum), torch.stack(f1_sum), torch.stack(objects)


def ami_loops(gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Upstream's AMI as its validation step calls it: gt (B, M, H, W) first, pred (B, N, H, W)
    second, into a function whose parameters are (pred, gt), so the scored pixels are those where
    some *predicted* mask is 1. Returns (B,) float64."""
    from sklearn.metrics import adjusted_mutual_info_score

    first, second = gt, pred  # upstream's names for them: "pred", "gt"
    scores = np.zeros(first.shape[0])
    for b in range(first.shape[0]):
        a = first[b].detach().cpu().numpy()
        s = second[b].detach().cpu().numpy()
        valid = s.reshape(s.shape[0], -1).max(0) == 1
        a_labels = np.argmax(a.reshape(a.shape[0], -1), axis=0)
        s_labels = np.argmax(s.reshape(s.shape[0], -1), axis=0)
        scores[b] = adjusted_mutual_info_score(s_labels[valid], a_labels[valid], average_method="arithmetic")
    return torch.from_numpy(scores)


def oca_loops(slots: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Upstream's object counting: [#slots with a pixel > 0.8 == #GT masks with a pixel > 0.8], (B,)."""
    n_slots = (slots > 0.8).float().amax(dim=(-1, -2)).sum(1)
    n_gt = (gt > 0.8).float().amax(dim=(-1, -2)).sum(1)
    return (n_slots == n_gt).float()


def fg_iou_loops(fg_pred: torch.Tensor, fg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's soft foreground IoU and F1 per sample of fg_pred, fg (B, 1, H, W)."""
    inter = torch.sum(fg_pred * fg, dim=[1, 2, 3])
    union = torch.sum(torch.maximum(fg_pred, fg), dim=[1, 2, 3])
    return inter / (union + 1e-6), 2 * inter / (torch.sum(fg_pred + fg, dim=[1, 2, 3]) + 1e-6)
