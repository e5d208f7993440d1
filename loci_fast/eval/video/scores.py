"""Per-video scores of Loci-s outputs, accumulated step by step from contingency counts (§18.1).

Every step with time stamp τ >= 0 reconstructs frame τ and predicts frame τ+1. Per video:

``upstream`` (the numbers of upstream's validation loop; the headline MOVi IoU and ARI):
  * ``iou_sum`` / ``f1_sum`` / ``num_objects``: the Hungarian matched IoU and F1 of the
    reconstruction's slot masks (> 0.8) against the instance masks (> 0.8) of frame τ, summed over
    the steps, and the non-empty GT masks counted per step (the pooled mIoU is Σ iou_sum / Σ
    num_objects); ``pred_*`` the same for the prediction, against frame τ (upstream's off-by-one);
  * ``seq_fg_ari``: the ARI of all steps' slot masks against the GT masks (frames concatenated),
    ``seq_ari`` with the background channel and 1 − fg, ``pred_seq_fg_ari`` for the prediction
    (against frame τ);
  * ``fg_iou`` / ``fg_f1`` (soft 1 − background mask against the fg mask) and ``oca`` (active
    slots == non-empty GT masks), means over the steps.
``standard`` (textbook definitions; a pixel belongs to the argmax of the O+1 composited masks):
  * ``fg_ari``: FG-ARI over the whole video (one partition of every GT-foreground pixel of every
    step, SAVi / VideoSAUR), ``fg_ari_frame`` its mean per frame, ``pred_fg_ari`` the prediction's
    against frame τ+1;
  * ``mbo``: mean best overlap of the video's GT object tracks with the slot tracks;
  * ``iou_sum`` / ``num_objects``: Hungarian mIoU of the thresholded slots, empty pairs 0;
    ``pred_iou_sum`` / ``pred_num_objects`` against frame τ+1; ``fg_iou``, ``fg_f1``.
"""
from __future__ import annotations

from typing import Any

import torch

from loci_fast.eval import metrics as M
from loci_fast.eval.counts import Counts

THRESHOLD = 0.8  # upstream binarises predictions, GT masks and the fg mask at > 0.8


def _add(a: Counts | None, b: Counts) -> Counts:
    if a is None:
        return b
    return Counts(a.joint + b.joint, a.gt + b.gt, a.pred + b.pred, a.pixels + b.pixels)


def _argmax_slots(mask: torch.Tensor) -> torch.Tensor:
    """(B, O+1, H, W) soft masks -> (B, O, H, W) bool: each pixel in its argmax slot, none if background wins."""
    o = mask.shape[1] - 1
    label = mask.argmax(1)
    return label[:, None] == torch.arange(o, device=mask.device).view(1, o, 1, 1)


class VideoScores:
    """Accumulates the per-step counts of a batch of videos; :meth:`records` gives one dict per video.

    ``gt`` (B, S, M, H, W) bool GT masks (> 0.8), ``instances`` (B, S, M, H, W) bool mIoU targets,
    ``fg`` (B, S, 1, H, W) bool foreground; frames of the window in order.
    """

    def __init__(self, gt: torch.Tensor, instances: torch.Tensor, fg: torch.Tensor):
        self.gt, self.instances, self.fg = gt, instances, fg
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, Counts | None] = {}
        self.steps = 0

    def _sum(self, name: str, value: torch.Tensor) -> None:
        value = value.to(torch.float64)
        self.sums[name] = self.sums[name] + value if name in self.sums else value

    def _count(self, name: str, c: Counts) -> None:
        self.counts[name] = _add(self.counts.get(name), c)

    def add(self, tau: int, reconstruction: torch.Tensor, prediction: torch.Tensor) -> None:
        """One step: the composited masks (B, O+1, H, W) of frame ``tau``'s reconstruction and of the
        prediction of frame ``tau + 1``."""
        if tau + 1 >= self.gt.shape[1]:
            raise ValueError(f"step τ = {tau} predicts frame {tau + 1}, beyond the window's {self.gt.shape[1]} frames")
        self.steps += 1
        gt_now, gt_next = self.gt[:, tau], self.gt[:, tau + 1]
        inst_now, inst_next = self.instances[:, tau], self.instances[:, tau + 1]
        fg_now = self.fg[:, tau]
        rec, pred = reconstruction > THRESHOLD, prediction > THRESHOLD
        # upstream convention
        for prefix, slots in (("", rec[:, :-1]), ("pred_", pred[:, :-1])):
            matched = M.hungarian_from_counts(M.counts(slots, inst_now), convention="upstream")
            self._sum(f"up.{prefix}iou_sum", matched.iou_sum)
            self._sum(f"up.{prefix}f1_sum", matched.f1_sum)
            self._sum(f"up.{prefix}num_objects", matched.num_objects)
            self._count(f"up.{prefix}seq_fg", M.counts(slots, gt_now))
        self._count("up.seq_all", M.counts(rec, torch.cat([gt_now, ~fg_now], 1)))
        fg_iou, fg_f1 = M.foreground_iou_f1(1 - reconstruction[:, -1:], fg_now.float(), convention="upstream")
        self._sum("up.fg_iou", fg_iou)
        self._sum("up.fg_f1", fg_f1)
        self._sum("up.oca", M.counting_accuracy_from_counts(M.counts(rec[:, :-1], gt_now)))
        # standard convention
        gt_x, gt_next_x = M.exclusive(gt_now), M.exclusive(gt_next)
        c = M.counts(_argmax_slots(reconstruction), gt_x)
        self._count("std.video", c)
        self._sum("std.fg_ari_frame", M.ari_standard_from_counts(c))
        self._count("std.pred_video", M.counts(_argmax_slots(prediction), gt_next_x))
        for prefix, slots, target in (("", rec[:, :-1], inst_now), ("pred_", pred[:, :-1], inst_next)):
            matched = M.hungarian_from_counts(M.counts(slots, target), convention="standard")
            self._sum(f"std.{prefix}iou_sum", matched.iou_sum)
            self._sum(f"std.{prefix}num_objects", matched.num_objects)
        fg_iou, fg_f1 = M.foreground_iou_f1(1 - reconstruction[:, -1:], fg_now.float(), convention="standard")
        self._sum("std.fg_iou", fg_iou)
        self._sum("std.fg_f1", fg_f1)

    def records(self) -> list[dict[str, Any]]:
        """One ``{"steps", "upstream": {...}, "standard": {...}}`` per video (plain floats)."""
        if not self.steps:
            raise ValueError("no step with time stamp >= 0 was scored")
        n = self.steps
        s, c = self.sums, self.counts
        up = {
            "iou_sum": s["up.iou_sum"], "f1_sum": s["up.f1_sum"], "num_objects": s["up.num_objects"],
            "pred_iou_sum": s["up.pred_iou_sum"], "pred_f1_sum": s["up.pred_f1_sum"],
            "pred_num_objects": s["up.pred_num_objects"],
            "seq_fg_ari": M.ari_upstream_from_counts(c["up.seq_fg"]),
            "seq_ari": M.ari_upstream_from_counts(c["up.seq_all"]),
            "pred_seq_fg_ari": M.ari_upstream_from_counts(c["up.pred_seq_fg"]),
            "fg_iou": s["up.fg_iou"] / n, "fg_f1": s["up.fg_f1"] / n, "oca": s["up.oca"] / n,
        }
        std = {
            "fg_ari": M.ari_standard_from_counts(c["std.video"]), "fg_ari_frame": s["std.fg_ari_frame"] / n,
            "pred_fg_ari": M.ari_standard_from_counts(c["std.pred_video"]),
            "mbo": M.mbo_from_counts(c["std.video"]).mbo(),
            "iou_sum": s["std.iou_sum"], "num_objects": s["std.num_objects"],
            "pred_iou_sum": s["std.pred_iou_sum"], "pred_num_objects": s["std.pred_num_objects"],
            "fg_iou": s["std.fg_iou"] / n, "fg_f1": s["std.fg_f1"] / n,
        }
        b = next(iter(s.values())).shape[0]

        def plain(v: torch.Tensor, i: int) -> float | None:
            x = float(v[i])
            return x if x == x else None  # NaN (e.g. mBO of a video without objects) -> null

        return [{"steps": n, "upstream": {k: plain(v, i) for k, v in up.items()},
                 "standard": {k: plain(v, i) for k, v in std.items()}} for i in range(b)]
