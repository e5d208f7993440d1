"""Segmentation-mode slot initialisation at a sequence start (reference §13.4), for the full model.

The full Loci-s model calls, at the first step of a sequence (inference_mode "segmentation"):

    u0 = segmentation_uncertainty(background.uncertainty_estimation, rgb0, depth0, input_depth, noise=eps)
    init = proposal_slots(proposal, rgb0, depth0, num_slots, u0)

and starts from ``init.position`` (B, O·4) and ``init.mask`` (B, O+1, H, W) as the "last"
reconstruction (gestalt and priority stay unset). Unlike upstream (quirk §24.12) this does not
depend on the train/eval mode of any module: the proposal is always post-processed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

FG_THRESHOLD = 0.8  # fg = [u0 > 0.8]


@dataclass
class ProposalSlots:
    """``position`` (B, O·4): (x, y, z, std) per slot, largest proposed mask first; ``mask`` (B, O+1, H, W):
    the O largest masks and 1 - their union over all N proposals (the background, last); ``fg`` (B, 1, H, W)
    the foreground the proposal saw; ``proposal_mask`` (B, N, H, W) and ``proposal_position`` (B, N, 4) unsorted."""

    position: torch.Tensor
    mask: torch.Tensor
    fg: torch.Tensor
    proposal_mask: torch.Tensor
    proposal_position: torch.Tensor


def segmentation_uncertainty(estimate: Callable[..., tuple[torch.Tensor, torch.Tensor]], rgb: torch.Tensor,
                             depth: torch.Tensor, input_depth: bool,
                             noise: torch.Tensor | None = None) -> torch.Tensor:
    """The clean uncertainty u0 (B, 1, H, W) of the first frame: ``estimate`` is the background's
    uncertainty estimator ((B, 3|4, H, W), noise) -> (u, noisy u); its ε draw is the extra draw of
    segmentation mode (§14.1), replaced by ``noise`` when given."""
    x = torch.cat((rgb, depth), dim=1) if input_depth else rgb
    return estimate(x, noise)[0]


@torch.no_grad()
def proposal_slots(proposal: torch.nn.Module, rgb: torch.Tensor, depth: torch.Tensor, num_slots: int,
                   uncertainty: torch.Tensor, fg_threshold: float = FG_THRESHOLD) -> ProposalSlots:
    """Slots from the proposal on frame 0: rgb (B, 3, H, W), depth (B, 1, H, W) (the dataset depth, -1
    without depth, even when depth is no model input), uncertainty u0 (B, 1, H, W); ``num_slots`` O <= N.

    Proposed masks are sorted by area, descending (``torch.sort``, as upstream, so equal areas come in
    torch's order), and the first O kept with their positions.
    """
    n = proposal.num_slots
    if num_slots > n:
        raise ValueError(f"proposal_slots: num_slots ({num_slots}) exceeds the proposal's position_proposal."
                         f"num_slots ({n}); use a proposal with at least as many slots")
    b, _, h, w = rgb.shape
    fg = (uncertainty > fg_threshold).to(rgb.dtype)
    out = proposal(torch.zeros((b, n, h, w), device=rgb.device, dtype=rgb.dtype), depth, rgb, fg,
                   postprocess=True, losses=False)
    masks, positions = out["mask"], out["position"]
    order = torch.sort(masks.sum((2, 3)), dim=1, descending=True).indices[:, :num_slots]
    rows = torch.arange(b, device=rgb.device)[:, None]
    sorted_masks, sorted_positions = masks[rows, order], positions[rows, order]
    background = 1 - masks.amax(1, keepdim=True)
    return ProposalSlots(sorted_positions.reshape(b, num_slots * 4), torch.cat((sorted_masks, background), dim=1),
                         fg, masks, positions)
