"""Evaluation metrics: pure batched torch functions on any device.

Layout. A frame's masks are (B, N, H, W): N predicted (slot) masks or M GT masks per sample,
binary (bool or 0/1 float) unless a function thresholds them itself. A batch of videos is
(B, T, N, H, W), time leading; video-level scores (:func:`fg_ari` with ``per="video"``) treat
all T·H·W pixels of a video as one sample, which is what upstream's frames concatenated along the
width give. Per-frame scores of videos: fold time into the batch, ``x.flatten(0, 1)``.

Every metric is a function of the contingency counts (:func:`counts`, one batched matmul), so
an evaluation counts once and derives all of them (``*_from_counts``). ``convention`` selects
upstream's numbers or the textbook definitions (:mod:`loci_fast.eval.conventions`); every
function defaults to ``"standard"``.
"""
from __future__ import annotations

import torch

from .ami import ami, ami_from_counts, label_contingency
from .ari import ari, ari_from_counts, ari_standard_from_counts, ari_upstream_from_counts, fg_ari
from .conventions import CONVENTIONS, check_convention
from .counts import Counts, counts, exclusive, video_counts
from .matching import (BestOverlap, MatchedIoU, assign, hungarian_from_counts, hungarian_miou, mbo,
                       mbo_from_counts, pair_scores)
from .objects import counting_accuracy, counting_accuracy_from_counts, foreground_iou_f1

__all__ = [
    "CONVENTIONS", "BestOverlap", "Counts", "MatchedIoU", "ami", "ami_from_counts", "ari", "ari_from_counts",
    "ari_standard_from_counts", "ari_upstream_from_counts", "assign", "check_convention", "counting_accuracy",
    "counting_accuracy_from_counts", "counts", "exclusive", "fg_ari", "foreground_iou_f1",
    "hungarian_from_counts", "hungarian_miou", "label_contingency", "mbo", "mbo_from_counts",
    "pair_scores", "prediction_targets", "video_counts",
]

# Metrics whose prediction variant upstream scores against the GT of the frame before (§24.16).
OFF_BY_ONE = ("miou", "seq_ari")


def prediction_targets(gt: torch.Tensor, *, metric: str, convention: str = "standard") -> torch.Tensor:
    """The GT frames a video's predictions are scored against.

    gt (B, T+1, M, H, W) holds frames 0..T; the prediction made at step t (t = 0..T−1) is the model's
    guess of frame t+1. Returns (B, T, M, H, W): frames 1..T, except under ``upstream`` for
    ``metric`` in ("miou", "seq_ari"), where upstream pairs prediction t with frame t.
    Other metric names ("ari", "ami", "oca", "fg_iou") always get frames 1..T.
    """
    if gt.dim() != 5 or gt.shape[1] < 2:
        raise ValueError(f"gt must be (B, T+1, M, H, W) with T >= 1, got {tuple(gt.shape)}")
    if check_convention(convention) == "upstream" and metric in OFF_BY_ONE:
        return gt[:, :-1]
    return gt[:, 1:]
