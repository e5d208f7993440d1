"""Losses and loss schedules of the object pretraining (reference §16)."""
from .reconstruction import SSIM, MaskedL1SSIMLoss, MaskedYCbCrL2SSIMLoss, ssim_dissimilarity
from .schedules import CallCounter, DecayingFactor, DecayingMSELoss, GestaltLoss, decay_factor

__all__ = ["SSIM", "ssim_dissimilarity", "MaskedL1SSIMLoss", "MaskedYCbCrL2SSIMLoss", "CallCounter",
           "DecayingFactor", "DecayingMSELoss", "GestaltLoss", "decay_factor"]
