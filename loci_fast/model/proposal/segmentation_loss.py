"""The proposal's instance-segmentation loss: Hungarian-matched, class-weighted cross-entropy (§13.2).

A zero background logit is prepended to the N mask logits; the softmax of the N + 1 channels is
matched to the N GT masks by IoU (``scipy.optimize.linear_sum_assignment`` per sample, on the CPU:
the one host sync of the training step). Quirk §24.20 is reproduced: pixels outside every GT mask
get class 0, the class of the GT matched first.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def iou_matrix(gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """IoU[b, m, n] = Σ P_m G_n / (Σ G_n + Σ P_m - Σ P_m G_n + 1e-8): pred (B, M, H, W), gt (B, N, H, W)."""
    inter = torch.einsum("bmhw,bnhw->bmn", pred, gt)
    union = gt.sum((2, 3))[:, None, :] + pred.sum((2, 3))[:, :, None] - inter
    return inter / (union + 1e-8)


def match(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample minimum-cost assignment of a (B, M, N) cost (M >= N): (rows (B, N), cols (B, N)),
    rows ascending within each sample, on the cost's device."""
    pairs = [linear_sum_assignment(c) for c in cost.detach().float().cpu().numpy()]
    rows = torch.from_numpy(np.stack([r for r, _ in pairs])).to(cost.device)
    cols = torch.from_numpy(np.stack([c for _, c in pairs])).to(cost.device)
    return rows, cols


def instance_segmentation_loss(gt: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mean IoU) of mask logits (B, N, H, W) against binary GT masks (B, N, H, W).

    loss: mean over samples of the weighted cross-entropy Σ w_y·nll / Σ w_y with class weights
    1/(area + 1) for non-empty GT masks, 1/(H·W) for empty ones. mean IoU: the matched IoUs summed
    over the non-empty GT masks of each sample and averaged over samples (no gradient). Computed in
    float32 whatever the input dtype (whole-image sums and the matching need it).
    """
    gt, logits = gt.float(), logits.float()
    b, n, h, w = gt.shape
    full = torch.cat((torch.zeros_like(logits[:, :1]), logits), dim=1)
    with torch.no_grad():
        iou = iou_matrix(gt, torch.softmax(full, dim=1))
        rows, cols = match(1 - iou)
        valid = gt.amax((2, 3))
        weights = valid / (gt.sum((2, 3)) + 1) + (1 - valid) / (h * w)
        ordered_gt = gt.gather(1, cols[..., None, None].expand(b, n, h, w))
        classes = torch.arange(n, device=gt.device, dtype=gt.dtype).view(1, n, 1, 1)
        target = (ordered_gt * classes).sum(1).long()  # (B, H, W)
        if int(target.max()) >= n:
            raise ValueError("instance_segmentation_loss: GT masks overlap after binarisation at 0.8, so a pixel's "
                             "class index runs past the mask count; pass non-overlapping instance masks")
        class_weight = weights.gather(1, cols)  # weight of class c = weight of the GT matched at position c
        matched = iou[torch.arange(b, device=iou.device)[:, None], rows, cols]
        mean_iou = (matched.sum(1) / (valid.sum(1) + 1e-16)).sum() / b
    chosen = full.gather(1, rows[..., None, None].expand(b, n, h, w))
    nll = -torch.log_softmax(chosen, dim=1).gather(1, target[:, None]).squeeze(1)
    w_pix = class_weight.gather(1, target.flatten(1)).view(b, h, w)
    loss = (w_pix * nll).sum((1, 2)) / w_pix.sum((1, 2))
    return loss.mean(), mean_iou
