"""The mask decoder (reference §8.1): a gestalt-weighted Gaussian map -> full-resolution mask logits."""
from __future__ import annotations

import torch
from torch import nn

from .patch_codecs import UpscaleMLP


class MaskDecoder(nn.Module):
    """(N, G, h, w) latent -> (N, 1, 16h, 16w) mask logits.

    3x3 convolutions halve the channels from G (SiLU between them) until the next halving would
    reach ``mask_channels`` or fewer; the last one maps to ``mask_channels``. An
    :class:`UpscaleMLP` (x16, hidden ``mask_channels * expand_ratio``) then paints 16x16 patches.
    With G = 256 and 32 mask channels: 256 -> 128 -> 64 -> 32.
    """

    def __init__(self, gestalt_size: int = 256, mask_channels: int = 32, expand_ratio: int = 4) -> None:
        super().__init__()
        if gestalt_size // 2 < mask_channels:
            raise ValueError(f"MaskDecoder: gestalt_size // 2 ({gestalt_size // 2}) must be at least "
                             f"mask_channels ({mask_channels})")
        self.gestalt_size = gestalt_size
        channels = gestalt_size // 2
        layers: list[nn.Module] = [nn.Conv2d(gestalt_size, channels, kernel_size=3, padding=1)]
        # Layer indices (conv at even positions) match upstream's nn.Sequential for checkpoints.
        while True:
            nxt = channels // 2
            layers.append(nn.SiLU())
            if nxt <= mask_channels:
                layers.append(nn.Conv2d(channels, mask_channels, kernel_size=3, padding=1))
                break
            layers.append(nn.Conv2d(channels, nxt, kernel_size=3, padding=1))
            channels = nxt
        self.decoder = nn.Sequential(*layers)
        self.mask_reconstruction = UpscaleMLP(mask_channels, 1, scale_factor=16, expand_ratio=expand_ratio)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        if latent.dim() != 4 or latent.shape[1] != self.gestalt_size:
            raise ValueError(f"MaskDecoder: expected a (N, {self.gestalt_size}, h, w) latent, "
                             f"received {tuple(latent.shape)}")
        return self.mask_reconstruction(self.decoder(latent))
