"""``LociProposal``: the proposal network with its targets, losses and (on request) post-processing.

Reference §13.2. Upstream decides by the module's train/eval mode whether the post-processed slot
masks and positions are computed (and returns unusable zeros in train mode, quirk §24.12); here an
explicit ``postprocess`` argument chooses, so segmentation initialisation works in both modes.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..mask_center import MaskCenter
from .network import PositionProposal
from .postprocess import postprocess_masks
from .segmentation_loss import instance_segmentation_loss
from .targets import GT_THRESHOLD, depth_channel_mask, mask_positions, network_input, position_target

MASK_LOSS_FACTOR = 0.01


class LociProposal(nn.Module):
    """forward(gt_masks (B, N, H, W), gt_depth (B, 1, H, W), gt_rgb=None, fg_mask=None, *,
    postprocess=False) -> dict.

    The network sees [rgb·fg, grid·fg] (or [depth·fg, grid·fg] with ``depth_input``); ``fg_mask``
    defaults to the union of the binarised GT masks. Returned:

    * ``regularizer_loss``: mean squared error of the position map against the per-pixel target
      (z and std_z left out for samples without depth in the RGB variant);
    * ``mask_loss``: 0.01 × the instance-segmentation loss; ``iou``: 100 × matched mean IoU;
    * ``position_map`` (B, 5, H, W), ``mask_logits`` (B, N, H, W), ``softmask`` = clip(map[:, :3], 0, 1);
    * (without ``losses=False``, which skips them and the Hungarian matching);
    * with ``postprocess``: ``mask`` (B, N, H, W) binary slot masks and ``position`` (B, N, 4) =
      (x̄, ȳ, mean ``gt_depth`` inside the mask, sqrt(area fraction)), zero for empty masks.
    """

    def __init__(self, size: Sequence[int], num_slots: int, encoder_blocks: Sequence[int],
                 decoder_blocks: Sequence[int], base_channels: int, depth_input: bool = False):
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.num_slots, self.depth_input = int(num_slots), bool(depth_input)
        self.position_estimator = PositionProposal(num_slots, encoder_blocks, decoder_blocks, base_channels,
                                                   depth_input)
        self.mask_center = MaskCenter(self.size)

    @classmethod
    def from_config(cls, model_cfg) -> "LociProposal":
        """Built from a config's ``model`` section (``position_proposal``, ``input_size``, ``input_depth``)."""
        p = model_cfg["position_proposal"]
        return cls(model_cfg["input_size"], p["num_slots"], p["encoder_blocks"], p["decoder_blocks"],
                   p["base_channels"], depth_input=bool(model_cfg["input_depth"]))

    def _check(self, gt_masks: torch.Tensor, gt_depth: torch.Tensor, gt_rgb: torch.Tensor | None,
               fg_mask: torch.Tensor | None) -> None:
        if gt_depth.dim() != 4 or gt_depth.shape[1] != 1:
            raise ValueError(f"gt_depth: expected shape (B, 1, H, W), received {tuple(gt_depth.shape)}")
        b, _, h, w = gt_depth.shape
        if (h, w) != self.size:
            raise ValueError(f"gt_depth: the proposal was built for input_size {list(self.size)}, received {h}x{w}")
        if tuple(gt_masks.shape) != (b, self.num_slots, h, w):
            raise ValueError(f"gt_masks: expected shape {(b, self.num_slots, h, w)} (position_proposal.num_slots "
                             f"masks; pad with zeros), received {tuple(gt_masks.shape)}")
        if not self.depth_input and (gt_rgb is None or tuple(gt_rgb.shape) != (b, 3, h, w)):
            shape = None if gt_rgb is None else tuple(gt_rgb.shape)
            raise ValueError(f"gt_rgb: the RGB-input proposal needs a (B, 3, H, W) image {(b, 3, h, w)}, received "
                             f"{shape}")
        if fg_mask is not None and tuple(fg_mask.shape) != (b, 1, h, w):
            raise ValueError(f"fg_mask: expected shape {(b, 1, h, w)}, received {tuple(fg_mask.shape)}")

    def forward(self, gt_masks: torch.Tensor, gt_depth: torch.Tensor, gt_rgb: torch.Tensor | None = None,
                fg_mask: torch.Tensor | None = None, *, postprocess: bool = False,
                losses: bool = True) -> dict[str, torch.Tensor]:
        self._check(gt_masks, gt_depth, gt_rgb, fg_mask)
        with torch.no_grad():
            gt = (gt_masks > GT_THRESHOLD).to(gt_depth.dtype)
            if losses:
                target = position_target(gt, mask_positions(gt, gt_depth, self.mask_center, with_std_z=True))
            fg = gt.amax(1, keepdim=True) if fg_mask is None else fg_mask
            x = network_input(gt_depth if self.depth_input else gt_rgb, fg)
        position_map, logits = self.position_estimator(x)
        out = {"position_map": position_map, "mask_logits": logits, "softmask": position_map[:, :3].clamp(0, 1)}
        if losses:
            mask_loss, mean_iou = instance_segmentation_loss(gt, logits)
            err = (position_map - target) ** 2
            if not self.depth_input:
                err = err * depth_channel_mask(gt_depth)
            out.update(regularizer_loss=err.mean(), mask_loss=mask_loss * MASK_LOSS_FACTOR, iou=mean_iou.detach() * 100)
        if postprocess:
            masks = postprocess_masks(logits)
            out["mask"] = masks
            out["position"] = mask_positions(masks, gt_depth, self.mask_center, with_std_z=False)
        return out
