"""Patch tokens of the background encoder, with fore-ground patches zeroed (reference §5)."""
from __future__ import annotations

import torch
from torch import nn

from loci_fast.blocks.vit import position_mlp, token_grid

from ..patch_codecs import PatchDownscaleMLP

PATCH = 16  # every background token covers a 16×16 patch


def patch_max(u: torch.Tensor, k: int = PATCH) -> torch.Tensor:
    """(B, 1, H, W) -> (B, H/k·W/k, 1): the maximum of each k×k patch, tokens in row-major order."""
    b, _, h, w = u.shape
    return u.reshape(b, h // k, k, w // k, k).amax(dim=(2, 4)).reshape(b, -1, 1)


class UncertaintyMaskedPatchEmbedding(nn.Module):
    """(B, in, H, W), u (B, 1, H, W) -> (B, H/16·W/16, C) tokens.

    tokens = (PatchMLP(x) + position code) · [max of u over the patch < threshold]: an uncertain
    (foreground) patch is exactly zero, its position code included. The position code is an
    MLP(2 -> 2C -> 2C -> 2C -> C) of the patch-grid coordinates, recomputed on every call.
    """

    def __init__(self, in_channels: int, latent_channels: int, expand_ratio: int = 4,
                 uncertainty_threshold: float = 0.1):
        super().__init__()
        self.in_channels, self.threshold = in_channels, uncertainty_threshold
        self.embedding = position_mlp(latent_channels, 2 * latent_channels)
        self.to_patches = PatchDownscaleMLP(in_channels, latent_channels, expand_ratio, PATCH)

    def forward(self, x: torch.Tensor, uncertainty: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        if uncertainty.shape != (b, 1, h, w):
            raise ValueError(f"uncertainty: expected shape {(b, 1, h, w)} for input {tuple(x.shape)}, "
                             f"received {tuple(uncertainty.shape)}")
        keep = (patch_max(uncertainty) < self.threshold).to(x.dtype)
        tokens = self.to_patches(x).flatten(2).transpose(1, 2)
        code = self.embedding(token_grid(h // PATCH, w // PATCH, device=x.device, dtype=x.dtype))
        return (tokens + code) * keep
