"""Adjusted mutual information of predicted against GT masks (sklearn, from our batched counts)."""
from __future__ import annotations

import numpy as np
import torch

from .conventions import check_convention
from .counts import Counts, counts, exclusive

SKLEARN_PIN = "scikit-learn==1.9.1"


def label_contingency(c: Counts, convention: str) -> torch.Tensor:
    """The (..., rows, cols) contingency of the two pixel labelings the AMI compares.

    ``standard``: the pixels in some GT mask; rows = GT masks, cols = predicted masks plus one
    "unassigned" column. ``upstream``: the pixels in some *predicted* mask (upstream passes its
    arguments swapped); cols = predicted masks, rows = GT masks, where a pixel in no GT mask takes
    the first GT mask's label (the argmax of all zeros).
    """
    if convention == "standard":
        return torch.cat([c.joint, (c.gt - c.joint.sum(-1))[..., None]], -1)
    joint = c.joint.clone()
    if joint.shape[-2]:
        joint[..., 0, :] += c.pred - c.joint.sum(-2)
    return joint


def _ami_of(table: np.ndarray) -> float:
    from sklearn.metrics import adjusted_mutual_info_score

    # Two label arrays with exactly this contingency: the AMI depends on nothing else.
    rows, cols = np.nonzero(table)
    reps = table[rows, cols].astype(np.int64)
    return float(adjusted_mutual_info_score(np.repeat(rows, reps), np.repeat(cols, reps),
                                            average_method="arithmetic"))


def ami_from_counts(c: Counts, *, convention: str = "standard") -> torch.Tensor:
    """AMI (arithmetic normalisation) per sample of ``c`` (counts of exclusive masks), (...,) float64."""
    check_convention(convention)
    try:
        import sklearn  # noqa: F401
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"the AMI needs scikit-learn: pip install {SKLEARN_PIN}") from None
    table = label_contingency(c, convention)
    host = table.detach().cpu().numpy().reshape(-1, *table.shape[-2:])
    scores = [_ami_of(t) for t in host]
    return torch.tensor(scores, dtype=torch.float64, device=c.joint.device).reshape(table.shape[:-2])


def ami(pred_masks: torch.Tensor, gt_masks: torch.Tensor, *, convention: str = "standard") -> torch.Tensor:
    """AMI of binary pred_masks (B, N, H, W) against gt_masks (B, M, H, W), (B,) float64.

    Pixel labels are the argmax over the masks (first mask on, as upstream's argmax of binary
    masks); see :func:`label_contingency` for which pixels each convention scores.
    """
    return ami_from_counts(counts(exclusive(pred_masks), exclusive(gt_masks)), convention=convention)
