"""The position proposal of segmentation-mode slot initialisation (reference §13): network, targets,
losses, post-processing, and the slot initialisation the full model calls at a sequence start."""
from __future__ import annotations

from .module import LociProposal
from .network import PatchEmbeddingEncoder, PositionProposal
from .postprocess import postprocess_masks
from .segmentation_loss import instance_segmentation_loss
from .slots import ProposalSlots, proposal_slots

__all__ = ["LociProposal", "PatchEmbeddingEncoder", "PositionProposal", "ProposalSlots", "instance_segmentation_loss",
           "postprocess_masks", "proposal_slots"]
