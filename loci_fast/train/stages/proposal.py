"""The proposal stage (reference §17.6): ``LociProposal`` on frames with their instance masks.

Loss = regularizer_loss + mask_loss (the latter already carries upstream's 0.01 factor); logged:
regularizer_loss, mask_loss and iou (100 × matched mean IoU). The data view pads or cuts the masks
to ``position_proposal.num_slots``, the count the network asserts (upstream pads to
``model.num_slots`` and so needs both equal). The image rows show the frame, the GT masks and the
post-processed proposal over it, and the regressed (x, y, z) map.
"""
from __future__ import annotations

from typing import Any

import torch

from loci_fast.viz.grid import palette

from .base import Stage, StepOutput

LOGGED = ("regularizer_loss", "mask_loss", "iou")
SHOWN = 4  # samples post-processed for the image rows (the CPU labelling is the costly part)


def overlay(rgb: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The frame (B, 3, H, W) with binary masks (B, N, H, W) painted in half-transparent colours."""
    colours = palette(masks.shape[1]).to(rgb)
    painted = torch.einsum("bnhw,nc->bchw", masks, colours)
    cover = masks.amax(1, keepdim=True)
    return rgb * (1 - 0.6 * cover) + 0.6 * painted


class ProposalStage(Stage):
    name = "proposal"
    metric_keys = LOGGED

    def build_model(self, cfg) -> torch.nn.Module:
        from loci_fast.model.proposal import LociProposal

        return LociProposal.from_config(cfg["model"])

    def batches(self, cfg, shards: list[str], *, rank: int, world_size: int, seed: int, num_workers: int):
        from loci_fast.data.loaders import proposal_frames

        model = cfg["model"]
        return proposal_frames(shards, batch_size=int(model["batch_size"]),
                               num_masks=int(model["position_proposal"]["num_slots"]),
                               size=tuple(int(s) for s in model["input_size"]), seed=seed, rank=rank,
                               world_size=world_size, num_workers=num_workers, training=True,
                               prefetch_factor=cfg["prefetch_factor"] if num_workers else None)

    def forward(self, model, batch: dict[str, Any], state: Any = None) -> StepOutput:
        proposal = getattr(model, "module", model)  # a DeepSpeed engine wraps the LociProposal
        rgb = None if proposal.depth_input else batch["rgb"]
        out = model(batch["masks"], batch["depth"], rgb)
        loss = out["regularizer_loss"] + out["mask_loss"]
        metrics = {k: out[k].detach() for k in LOGGED}
        return StepOutput(loss, metrics, self.images(proposal, batch, out))

    @torch.no_grad()
    def images(self, proposal, batch: dict[str, Any], out: dict[str, Any]) -> dict[str, torch.Tensor]:
        from loci_fast.model.proposal.postprocess import postprocess_masks

        rgb = batch["rgb"][:SHOWN].detach().float()
        gt = (batch["masks"][:SHOWN] > 0.8).float()
        proposed = postprocess_masks(out["mask_logits"][:SHOWN].detach().float())
        return {"frame": rgb, "target masks": overlay(rgb, gt), "proposed masks": overlay(rgb, proposed),
                "position map (x, y, z)": out["softmask"][:SHOWN].detach().float()}


PROPOSAL = ProposalStage()
